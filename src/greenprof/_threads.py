"""Real OS-thread primitives, even after ``gevent.monkey.patch_all()``.

gevent replaces ``_thread.get_ident`` and locks with greenlet-based versions;
greenprof's bookkeeping needs the originals and never imports gevent itself.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

import greenlet

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


def block_signals() -> None:
    """Block every signal in the calling thread (a greenprof thread's).

    A signal sent to the process goes to one of its threads that does not
    block it. Python runs its handlers in the main thread only, and a
    gevent program's main thread learns of one by its wait being
    interrupted (libev's poll returning early): taken by a greenprof
    thread, the signal would wake nothing, and the program's handler would
    wait for the hub's next wakeup, minutes perhaps. So greenprof's threads
    take none. (A fault in the thread itself, such as SIGSEGV, is still
    delivered to it: the kernel does not let those be blocked.)"""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # a platform without it
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())


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


class RealEvent:
    """Set once, from any OS thread; waited for without holding up the
    waiter's other greenlets.

    A real lock would freeze every greenlet of a thread that runs a gevent
    hub (patched or not) for as long as it waits; a gevent event cannot be
    set from another OS thread. So a waiter in such a thread parks on an
    ``async`` watcher of its hub (which :meth:`set` may fire from any
    thread, as gevent's own thread pool does) and the hub runs the other
    greenlets meanwhile; any other waiter blocks on a real lock.
    """

    def __init__(self) -> None:
        self._lock = allocate_real_lock()
        # Held until set: a waiter without a hub blocks trying to take it.
        self._unset = allocate_real_lock()
        self._unset.acquire()
        self._is_set = False
        # The watchers of waiters parked in a hub; fired (under the lock,
        # never while one is being closed) when set.
        self._watchers: list[Any] = []

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        with self._lock:
            if self._is_set:
                return
            self._is_set = True
            self._unset.release()
            for watcher in self._watchers:
                watcher.send()

    def wait(self, timeout: float | None) -> bool:
        """True once set; False if ``timeout`` seconds (None: no limit)
        passed first."""
        if self._is_set:
            return True
        if timeout is not None and timeout <= 0:
            return self._is_set  # no wait at all: no other greenlet runs meanwhile
        hub = _hub_to_wait_in()
        if hub is None:
            if self._unset.acquire(True, _lock_timeout(timeout)):
                self._unset.release()  # for the other waiters
            return self._is_set
        return self._wait_in_hub(hub, timeout)

    def _wait_in_hub(self, hub: Any, timeout: float | None) -> bool:
        gevent = sys.modules["gevent"]
        waiter = sys.modules["gevent.hub"].Waiter(hub)
        watcher = hub.loop.async_()
        # Started before the flag is read: a send to a watcher not started
        # yet would be lost.
        watcher.start(waiter.switch, None)
        try:
            with self._lock:
                if self._is_set:
                    return True
                self._watchers.append(watcher)
            with gevent.Timeout(timeout, False):  # False: the timeout ends the block quietly
                waiter.get()
        finally:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)
            watcher.stop()
            watcher.close()
        return self._is_set


def _hub_to_wait_in() -> Any:
    """The calling thread's gevent hub, if it has one the caller can yield
    to (not when the caller is the hub itself)."""
    hub_local = sys.modules.get("gevent._hub_local")
    hub = hub_local.get_hub_if_exists() if hub_local is not None else None
    if hub is None or hub.dead or greenlet.getcurrent() is hub:
        return None
    return hub


def _lock_timeout(timeout: float | None) -> float:
    """``timeout`` as ``lock.acquire`` takes it: -1 for no limit, and never
    past ``TIMEOUT_MAX`` (which would raise OverflowError)."""
    if timeout is None:
        return -1
    return min(max(timeout, 0.0), _thread.TIMEOUT_MAX)
