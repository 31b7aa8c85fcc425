"""One OS thread per sink that may block, calling it for every pipeline
that has it: a sink stuck in a call holds up only itself, never the
program's threads nor the other sinks.

The thread is a :class:`~greenprof._loop.BackgroundLoop` (a real OS thread
even after ``gevent.monkey.patch_all()``); it ends after a while without
work and is started again by the next job.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from ._loop import BackgroundLoop
from ._threads import allocate_real_lock

__all__ = ["IDLE_SECONDS", "run_in_sink_thread"]

_logger = logging.getLogger("greenprof")

#: Seconds a sink's thread waits for another job before it ends.
IDLE_SECONDS: Final = 10.0


def run_in_sink_thread(sink: object, job: Callable[[], None], *, name: str) -> bool:
    """Run ``job`` in ``sink``'s thread, after the jobs given before it;
    False if no thread could be started for it (Python 3.12+ starts none
    while the interpreter exits): the caller then runs it itself."""
    with _lock:
        thread = _threads.get(id(sink))
        if thread is None:
            # Keyed by identity (two equal sinks are two sinks); the thread
            # holds its sink, so the id is not reused while it is here.
            thread = _threads[id(sink)] = SinkThread(sink, name=name)
        return thread.add(job)


class SinkThread:
    """Runs the jobs given for one sink, in order, in its own OS thread."""

    def __init__(self, sink: object, *, name: str) -> None:
        #: Held while the thread has work or waits for more, then let go.
        self.sink = sink
        self._lock = allocate_real_lock()
        self._jobs: deque[Callable[[], None]] = deque()
        self._idle_since: float | None = None
        # False once it left the registry: when it ended for want of work, or
        # in a forked child, where the registry starts empty.
        self._registered = True
        self._logged = False
        self._loop = BackgroundLoop(self._step, name=name, after_fork=self._after_fork_in_child)

    def add(self, job: Callable[[], None]) -> bool:
        """Queue ``job`` and make sure the thread runs (under ``_lock``)."""
        with self._lock:
            self._jobs.append(job)
        try:
            self._loop.start()
        except RuntimeError:
            with self._lock:
                self._jobs.remove(job)
            return False
        return True

    def _step(self) -> float | None:
        while True:
            with self._lock:
                job = self._jobs.popleft() if self._jobs else None
            if job is None:
                return self._idle()
            self._idle_since = None
            try:
                job()
            except BaseException:  # jobs catch what sinks raise; this is greenprof's bug
                if not self._logged:
                    self._logged = True
                    _logger.exception("greenprof: %s failed; it goes on", self._loop.name)

    def _idle(self) -> float | None:
        """How long to wait for a job; None once the thread was told to end."""
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        waited = now - self._idle_since
        if waited < IDLE_SECONDS:
            return IDLE_SECONDS - waited
        if self._registered:
            with _lock:  # no job can be added meanwhile: they are added under it
                return self._end()
        return self._end()

    def _end(self) -> float | None:
        with self._lock:
            if self._jobs:
                return 0.0
        if self._registered and _threads.get(id(self.sink)) is self:
            del _threads[id(self.sink)]
        self._registered = False
        self._loop.stop()  # from its own thread: it ends as this step returns
        return None

    def _after_fork_in_child(self) -> None:
        # Its jobs were the parent's (their callers wait in the parent) and
        # its lock may have been held by a thread that did not survive.
        self._lock = allocate_real_lock()
        self._jobs.clear()
        self._registered = False


_lock = allocate_real_lock()
_threads: dict[int, SinkThread] = {}


def _after_fork_in_child() -> None:
    # A child starts with no sink thread of its own; any it inherited end
    # on their own, without touching this registry.
    global _lock, _threads
    _lock = allocate_real_lock()
    _threads = {}


os.register_at_fork(after_in_child=_after_fork_in_child)
