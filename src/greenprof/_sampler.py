"""One sampling thread per process, shared by every sampling session.

It is a real OS thread even after ``gevent.monkey.patch_all()`` (a
:class:`~greenprof._loop.BackgroundLoop`), runs only while some session
samples, and comes back in a child after ``os.fork()``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
from types import FrameType
from typing import Any, Protocol

from ._buffer import SAMPLE, GreenletBuffer
from ._dispatcher import GreenletWatch, SwitchDispatcher
from ._entries import PROGRAM_ENTRIES
from ._launch import MACHINERY_FILES
from ._loop import BackgroundLoop
from ._naming import greenlet_name
from ._stack import capture
from ._threads import allocate_real_lock


class SampleTaker(Protocol):
    """A sampling session as the sampler sees it."""

    period_ns: int
    next_due_ns: int
    errors: int

    def take(self, now_ns: int) -> None: ...


class Sampler:
    """The process-wide sampling thread and its subscribers."""

    def __init__(self) -> None:
        self._lock = allocate_real_lock()
        self._takers: list[SampleTaker] = []
        self._loop = BackgroundLoop(self._step, name="greenprof's sampler")
        self._saved_interval: float | None = None
        self._set_interval: float | None = None

    @property
    def thread_id(self) -> int | None:
        """OS thread id of the sampling thread while it runs, else None."""
        return self._loop.thread_id

    @property
    def starts(self) -> int:
        """How many sampling threads this process started (tests and stats)."""
        return self._loop.starts

    def subscribe(self, taker: SampleTaker) -> None:
        taker.next_due_ns = time.perf_counter_ns() + taker.period_ns
        with self._lock:
            self._takers.append(taker)
            self._adjust_switch_interval()
        self._loop.start()

    def unsubscribe(self, taker: SampleTaker) -> None:
        """Remove ``taker``; the last one out waits for the thread to end
        (unless a new session subscribed meanwhile: it keeps the thread)."""
        with self._lock:
            if taker in self._takers:
                self._takers.remove(taker)
            self._adjust_switch_interval()
            last = not self._takers
        if last:
            self._loop.stop()

    def _adjust_switch_interval(self) -> None:
        # A busy thread hands the GIL over only every switch interval (5 ms by
        # default), so a shorter dump period needs a shorter interval. The
        # program's own value comes back when the last sampling session ends;
        # if the program changed it meanwhile, its new value is the one kept.
        current = sys.getswitchinterval()
        if self._takers:
            if self._saved_interval is None or current != self._set_interval:
                self._saved_interval = current
            period = min(taker.period_ns for taker in self._takers) / 1e9
            wanted = min(self._saved_interval, period)
            if current != wanted:
                sys.setswitchinterval(wanted)
            self._set_interval = sys.getswitchinterval()  # as Python rounded it
        elif self._saved_interval is not None:
            if current == self._set_interval:
                sys.setswitchinterval(self._saved_interval)
            self._saved_interval = None
            self._set_interval = None

    def _step(self) -> float | None:
        """Take the samples that are due; the seconds until the next one."""
        with self._lock:
            takers = list(self._takers)
        if not takers:
            return None
        now = time.perf_counter_ns()
        for taker in takers:
            if taker.next_due_ns <= now:
                try:
                    taker.take(now)
                except Exception:
                    taker.errors += 1
                # Never try to catch up on missed periods: skip them.
                taker.next_due_ns = max(taker.next_due_ns + taker.period_ns, now + 1)
        return (min(taker.next_due_ns for taker in takers) - time.perf_counter_ns()) / 1e9

    def _after_fork_in_child(self) -> None:
        # The lock may be held by a thread that did not survive the fork;
        # the loop comes back by itself if there are takers.
        self._lock = allocate_real_lock()


SAMPLER = Sampler()
os.register_at_fork(after_in_child=SAMPLER._after_fork_in_child)


# -- the two kinds of sampling sessions -------------------------------------------

#: greenprof's folder, and the one module in it that is a program
#: (``greenprof demo``'s service).
_PACKAGE_DIR = os.path.dirname(__file__) + os.sep
_DEMO_FILE = os.path.join(_PACKAGE_DIR, "_demo.py")
#: Code that runs above a function handing control to the program without
#: being the program: ``threading``'s locks and events, ``contextlib``'s
#: context managers, what attrs generates, and what ``greenprof run``
#: starts a program with (runpy, pkgutil, importlib, frozen or not). Any
#: other code is the program's, the standard library's included
#: (``greenprof run -m json.tool`` profiles ``json``).
_PASSED_FILES = MACHINERY_FILES | {threading.__file__, contextlib.__file__}
_PASSED_PREFIXES = (
    "<frozen ",
    "<attrs generated ",
    os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep,
)


def _runs(glet: Any) -> bool:
    """Whether ``glet`` is the greenlet running in its thread right now.

    Our tracer learns of a switch only after the tracers ahead of it in the
    chain ran, with the new greenlet's frames already in place; a greenlet
    that has a suspended frame cannot be the one those frames belong to.
    """
    return glet is not None and bool(glet) and glet.gr_frame is None


def _greenprofs_own(frame: FrameType) -> bool:
    """Whether a sample of the thread at ``frame`` would show greenprof at
    work rather than the program: whether the innermost of greenprof's
    frames on its stack is greenprof at work (its tracer, a ``start()``
    waiting for the sampling thread to run, a ``stop()``, snapshots being
    read), whatever runs above it: the standard library greenprof calls, or
    what the interpreter runs in the middle of greenprof's code (a weak
    container's callback, a signal handler). The program's code under one
    of the functions that hand control to the program (``_entries``: a
    decorated handler, a middleware's application, a module ``greenprof
    run`` runs) is the program's, once code other than ``_PASSED_FILES``
    runs above it; and so is ``greenprof demo``'s service."""
    program_above = False
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        if filename.startswith(_PACKAGE_DIR):
            if filename == _DEMO_FILE:
                return False
            # An entry's own lines, or only locks or the launching
            # machinery (runpy, importlib) above it, are greenprof's work.
            return not (program_above and id(code) in PROGRAM_ENTRIES)
        if not program_above and not _passed(filename):
            program_above = True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _passed(filename: str) -> bool:
    return filename in _PASSED_FILES or filename.startswith(_PASSED_PREFIXES)


class HybridTaker:
    """Samples the greenlets of one hybrid session, only while one of them runs.

    The dispatcher knows exactly which watched greenlet runs; the buffers
    that carry this taker (the target's, and those of the greenlets it
    spawned, with ``follow_spawned``) are the ones sampled. The buffer's
    record count (every switch adds one) proves no switch happened while the
    sample was taken.
    """

    def __init__(self, *, dispatcher: SwitchDispatcher, period_ns: int) -> None:
        self.dispatcher = dispatcher
        self.period_ns = period_ns
        self.next_due_ns = 0
        self.errors = 0
        #: Samples not taken because none of the session's greenlets ran.
        self.idle = 0

    def _buffer_of(self, watch: GreenletWatch | None) -> GreenletBuffer | None:
        if watch is not None:
            for buffer in watch.buffers:
                if buffer.sampler is self:
                    return buffer
        return None

    def take(self, now_ns: int) -> None:
        watch = self.dispatcher.get_running()
        buffer = self._buffer_of(watch)
        if buffer is None:
            self.idle += 1
            return
        glet = watch() if watch is not None else None
        before = buffer.count + buffer.dropped
        if not _runs(glet):
            return
        frame = sys._current_frames().get(self.dispatcher.thread_id)
        if (
            frame is None
            or _greenprofs_own(frame)
            or self.dispatcher.get_running() is not watch
            or buffer.count + buffer.dropped != before
            or not _runs(glet)
        ):
            return
        buffer.add((SAMPLE, time.perf_counter_ns(), capture(frame, buffer.depth, mark=False)))


class ThreadTaker:
    """Samples an OS thread, whatever runs in it, like a classic sampler.

    Each sample is labelled with the greenlet that was running, from the
    thread's dispatcher when greenprof tracks that thread, else with the
    thread's name.
    """

    def __init__(
        self,
        *,
        thread_id: int,
        thread_name: str,
        dispatcher: SwitchDispatcher | None,
        buffer: GreenletBuffer,
        period_ns: int,
    ) -> None:
        self.thread_id = thread_id
        self.thread_name = thread_name
        self.dispatcher = dispatcher
        self.buffer = buffer
        self.period_ns = period_ns
        self.next_due_ns = 0
        self.errors = 0

    def take(self, now_ns: int) -> None:
        dispatcher = self.dispatcher
        before = dispatcher.switches if dispatcher is not None else 0
        running = dispatcher.current if dispatcher is not None else None
        if running is not None and not _runs(running):
            return
        frame = sys._current_frames().get(self.thread_id)
        if frame is None or _greenprofs_own(frame):
            return
        if dispatcher is not None and dispatcher.switches != before:
            return
        if running is not None and not _runs(running):
            return
        if running is None:
            label_id, label_name = 0, f"thread {self.thread_name}"
        else:
            label_id, label_name = id(running), greenlet_name(running)
        stack = capture(frame, self.buffer.depth, mark=False)
        self.buffer.add((SAMPLE, time.perf_counter_ns(), stack, label_id, label_name))
