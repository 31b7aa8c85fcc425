"""Real OS-thread primitives, even after ``gevent.monkey.patch_all()``.

gevent replaces ``_thread.get_ident`` and locks with greenlet-based versions;
greenprof's bookkeeping needs the originals and never imports gevent itself.
"""

from __future__ import annotations

import _thread
import contextlib
import sys
from collections.abc import Callable
from typing import Any

_originals: dict[str, Any] = {}


def original(name: str) -> Any:
    """``_thread.<name>`` as it was before gevent patched it.

    Cached: before patching, the module holds the original; after, gevent
    keeps it for ``get_original``; it is the same object either way.
    """
    found = _originals.get(name)
    if found is None:
        found = getattr(_thread, name)
        monkey = sys.modules.get("gevent.monkey")
        if monkey is not None:
            # On gevent API drift, keep the module's.
            with contextlib.suppress(Exception):
                found = monkey.get_original("_thread", name)
        _originals[name] = found
    return found


#: The calling OS thread's identifier, as ``sys._current_frames()`` keys it.
#: Bound once: the original is the same object before and after patching.
thread_ident: Callable[[], int] = original("get_ident")

#: A lock that blocks the OS thread; never held across a greenlet switch.
allocate_real_lock: Callable[[], _thread.LockType] = original("allocate_lock")


def real_sleep(seconds: float) -> None:
    """Block the OS thread for ``seconds``, even where ``time.sleep`` is gevent's."""
    lock = allocate_real_lock()
    lock.acquire()
    lock.acquire(True, max(seconds, 0.0))


class Waker:
    """An interruptible sleep for a real OS thread: ``wait`` blocks until
    ``wake`` is called (from any thread) or the timeout passes."""

    def __init__(self) -> None:
        self._lock = allocate_real_lock()
        self._lock.acquire()  # held: waiting is trying to take it

    def wait(self, timeout: float) -> bool:
        """True if woken, False on timeout."""
        return self._lock.acquire(True, max(timeout, 0.0))

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # already released: a wake-up is pending
            self._lock.release()
