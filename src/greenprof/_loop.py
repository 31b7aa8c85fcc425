"""One kind of background thread for everything greenprof runs in the
background: the sampler, the SkyWalking sender, the task poller.

A :class:`BackgroundLoop` is a real OS thread even after
``gevent.monkey.patch_all()``: it calls its ``step`` again and again, sleeps
as long as ``step`` says or until woken, stops when asked, and comes back in
a child after ``os.fork()`` (the thread does not survive the fork, but the
work it was doing does: a forked gunicorn worker keeps sampling and sending).
"""

from __future__ import annotations

import _thread
import logging
import os
import time
import weakref
from collections.abc import Callable

from ._threads import Waker, allocate_real_lock, block_signals, original, thread_ident

__all__ = ["BackgroundLoop"]

_logger = logging.getLogger("greenprof")


class BackgroundLoop:
    """Calls ``step()`` in a real OS thread until :meth:`stop`.

    ``step`` returns how many seconds to sleep before it is called again
    (woken earlier by :meth:`wake`), or None to sleep until woken. An
    exception from it is logged once per loop and the loop goes on.
    """

    def __init__(
        self,
        step: Callable[[], float | None],
        *,
        name: str,
        after_fork: Callable[[], None] | None = None,
    ) -> None:
        self.step = step
        self.name = name
        #: Called in a forked child before the loop runs again there: to drop
        #: what the parent goes on doing (its queue, its calls in flight).
        self.after_fork = after_fork
        self._lock = allocate_real_lock()
        self._wake = Waker()
        # Held while a thread runs; released by the thread as it ends.
        self._exited = allocate_real_lock()
        self._alive = False
        self._stopping = False
        self._logged = False
        #: OS thread id of the loop's thread while it runs, else None.
        self.thread_id: int | None = None
        #: Threads started (a new one after each stop and after a fork).
        self.starts = 0
        _loops.add(self)

    @property
    def running(self) -> bool:
        return self._alive and not self._stopping

    def start(self) -> None:
        """Run the loop (wake it, if it runs already). A new thread is
        running when this returns: a thread left to start later could come
        up as the interpreter is still starting (a ``sitecustomize``), which
        CPython 3.11 in development mode does not always survive."""
        if not _restart_registered:
            _register_restart()
        with self._lock:
            self._stopping = False  # a thread still winding down keeps going
            if self._alive:
                start = False
            else:
                self._alive = start = True
                self._exited.acquire()
        if start:
            self.starts += 1
            running = allocate_real_lock()
            running.acquire()
            try:
                original("start_new_thread")(self._run, (running,))
            except BaseException:
                # No thread (Python 3.12+ starts none once the interpreter
                # is exiting): the loop is not running, and may start later.
                with self._lock:
                    self._alive = False
                self._exited.release()
                raise
            running.acquire(True, 5.0)
        else:
            self._wake.wake()

    def wake(self) -> None:
        """Call ``step`` now rather than when its sleep ends."""
        self._wake.wake()

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Ask the loop to end and wait up to ``timeout`` seconds for its
        thread to (not from the loop's own thread). Returns False if it
        did not end in time, or was started again meanwhile."""
        with self._lock:
            if not self._alive:
                return True
            self._stopping = True
        self._wake.wake()
        if self.thread_id == thread_ident():
            return True  # step() stopping its own loop: it ends when step returns
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            if self._exited.acquire(True, 0.005):
                self._exited.release()
                return True
            with self._lock:
                if not self._stopping:  # started again: it goes on
                    return False
        return False

    def _run(self, running: _thread.LockType) -> None:
        self.thread_id = thread_ident()
        block_signals()
        running.release()
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        self._alive = False
                        return
                try:
                    wait = self.step()
                except Exception:
                    wait = 1.0
                    if not self._logged:
                        self._logged = True
                        _logger.exception("greenprof: %s failed; it goes on", self.name)
                if wait is None:
                    self._wake.wait(3600.0)
                elif wait > 0:
                    self._wake.wait(wait)
        finally:
            self.thread_id = None
            with self._lock:
                self._alive = False
            self._exited.release()

    def _after_fork_in_child(self) -> bool:
        # The thread did not survive the fork, and its locks may be held by
        # it. Whether it ran: restarted once every module is ready for it.
        was_running = self._alive and not self._stopping
        self._lock = allocate_real_lock()
        self._wake = Waker()
        self._exited = allocate_real_lock()
        self._alive = False
        self._stopping = False
        self.thread_id = None
        if self.after_fork is not None:
            try:
                self.after_fork()
            except Exception:
                _logger.exception("greenprof: %s could not reset after fork", self.name)
        return was_running


_loops: weakref.WeakSet[BackgroundLoop] = weakref.WeakSet()
#: Loops whose thread ran at the fork, to start again in the child.
_to_restart: list[BackgroundLoop] = []


def _after_fork_in_child() -> None:
    _to_restart[:] = [loop for loop in list(_loops) if loop._after_fork_in_child()]


def restart_after_fork() -> None:
    """Start again, in a forked child, the loops that ran in the parent,
    after the modules that a loop's step uses reset their state for the
    child (their locks, above all): registered when the first loop starts,
    so after every module that made a loop. A loop started earlier would
    run its first step on locks a thread of the parent held at the fork,
    and wait for them for ever."""
    loops, _to_restart[:] = list(_to_restart), []
    for loop in loops:
        try:
            loop.start()
        except Exception:
            _logger.exception("greenprof: %s could not start again after fork", loop.name)


os.register_at_fork(after_in_child=_after_fork_in_child)
_restart_registered = False


def _register_restart() -> None:
    global _restart_registered
    _restart_registered = True
    os.register_at_fork(after_in_child=restart_after_fork)
