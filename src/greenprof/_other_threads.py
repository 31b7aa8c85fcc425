"""``greenprof run``'s greenlets in the program's other threads: each
``threading.Thread`` the program starts is followed from its first greenlet
switch on, as the main thread is, and a thread that never switches costs
one call at its start and records nothing.

How: greenlet tracing is per OS thread, so something must run inside each
new thread. ``threading.setprofile`` gives every ``threading.Thread`` a
profile function as it starts; greenprof's is one-shot: at the thread's
first event it removes itself (no per-call cost is left) and installs the
thread's greenlet tracer with a stand-in follower (``_Armed``), which
costs nothing until a greenlet switches there. At the first switch into a
greenlet other than the hub, the stand-in starts the profiler on the
thread's main greenlet, with ``follow_all``, and hands that greenlet over
to it: from then on the thread is recorded like the main thread.

Not covered: threads started with ``_thread.start_new_thread`` (greenprof's
own threads start that way, and so are never recorded; gevent's thread pool
too), threads started before the run, and threads started after the
program replaced the hook with ``threading.setprofile()`` or, on 3.12+,
``threading.setprofile_all_threads()`` (its own function is left alone).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

import attrs
import greenlet

from ._buffer import GreenletBuffer
from ._dispatcher import SwitchDispatcher, dispatcher_for_current_thread
from ._profiler import Profiler
from ._threads import allocate_real_lock, original, thread_ident
from .snapshot import Session

__all__ = ["ThreadFollower"]


class _Armed:
    """A thread whose greenlet tracer waits for its first greenlet."""

    __slots__ = ("dispatcher", "main", "stand_in", "thread")

    def __init__(
        self,
        dispatcher: SwitchDispatcher,
        stand_in: GreenletBuffer,
        main: greenlet.greenlet,
        thread: threading.Thread,
    ) -> None:
        self.dispatcher = dispatcher
        #: What the dispatcher's follow-all list holds until then: a buffer
        #: that records nothing, whose ``follow`` starts the real thing.
        self.stand_in = stand_in
        #: The thread's main greenlet: lives as long as the thread.
        self.main = main
        self.thread: weakref.ref[threading.Thread] = weakref.ref(thread)


class _ThreadEnd:
    """Kept in a real thread-local: freed as its thread ends (in that
    thread, as python clears the thread's state), when it notes the time."""

    __slots__ = ("ended", "greenlet_id", "now")

    def __init__(self, ended: dict[int, int], greenlet_id: int, now: Callable[[], int]) -> None:
        self.ended = ended
        self.greenlet_id = greenlet_id
        self.now = now

    def __del__(self) -> None:
        self.ended[self.greenlet_id] = self.now()


class ThreadFollower:
    """Starts ``profiler`` (``follow_all``) in every ``threading.Thread``
    started between :meth:`start` and :meth:`stop`, at the thread's first
    greenlet switch; :meth:`stop` before the profiler's ``stop()``.

    Who writes what: :meth:`start` and :meth:`stop` run in the program's
    main thread; the hook and the stand-in run in the new threads, the
    stand-in inside their greenlet tracer (once per thread). All of it
    under ``_lock``, a real lock, so that no thread starts the profiler
    once :meth:`stop` has begun.
    """

    def __init__(self, profiler: Profiler, wall_ns: Callable[[int], int]) -> None:
        self._profiler = profiler
        self._lock = allocate_real_lock()
        self._armed: dict[int, _Armed] = {}
        #: The main greenlet of each followed thread that ended -> when (the
        #: snapshots' clock): its session's part of it ends there.
        self.ended: dict[int, int] = {}
        self._now = lambda: wall_ns(time.perf_counter_ns())
        self._thread_ends: Any = original("_local")()
        #: The hook, bound once: each read of a method makes a new object.
        self._hook = self._on_thread_start
        self._running = False
        #: The program's threading profile hook when greenprof's went in
        #: (None, normally: ``run`` starts before the program).
        self._previous: Any = None
        #: Threads whose greenlets this follower started recording.
        self.followed = 0
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def start(self) -> None:
        self._running = True
        self._previous = threading.getprofile()
        threading.setprofile(self._hook)

    def stop(self) -> None:
        """No thread is followed from now on; the armed ones are disarmed
        (their tracers go at their next switch)."""
        with self._lock:
            self._running = False
            armed, self._armed = list(self._armed.values()), {}
        if threading.getprofile() is self._hook:  # not replaced by the program
            threading.setprofile(self._previous)
        for entry in armed:
            self._disarm(entry)

    # -- in each new thread ------------------------------------------------------------

    def _on_thread_start(self, frame: FrameType, event: str, arg: Any) -> None:
        """The profile function of a new thread, at its first event: put
        back none (or the hook that was there before greenprof's) and arm."""
        previous = self._previous
        if sys.getprofile() is self._hook:
            sys.setprofile(previous)
        # Never the program's problem: at worst, that thread is not followed.
        with contextlib.suppress(Exception):
            self._arm()
        if previous is not None:
            previous(frame, event, arg)

    def _arm(self) -> None:
        current = greenlet.getcurrent()
        if current.parent is not None:
            # A greenlet, not a thread's main greenlet: threading.Thread under
            # gevent's monkey-patching, in a thread greenprof already follows.
            return
        ident = thread_ident()
        thread = threading.current_thread()
        with self._lock:
            if not self._running:
                return
            self._forget_ended()
            dispatcher = dispatcher_for_current_thread()
            stand_in = GreenletBuffer(
                limit=0, depth=0, greenlet_id=0, greenlet_name=None, thread_id=ident
            )
            stand_in.follow = self._first_greenlet
            dispatcher.follow_all(stand_in)
            dispatcher.start_following()
            self._armed[ident] = _Armed(dispatcher, stand_in, current, thread)

    def _first_greenlet(
        self, glet: greenlet.greenlet, stand_in: GreenletBuffer
    ) -> GreenletBuffer | None:
        """The first switch into a greenlet of an armed thread (not its
        hub), inside its greenlet tracer: start the profiler on the thread's
        main greenlet, and give ``glet`` to it. A lock and a session start
        on the switch path, once per thread; nothing here switches."""
        with self._lock:
            entry = self._armed.pop(stand_in.thread_id, None)
            if entry is None or entry.stand_in is not stand_in:
                return None
            dispatcher = entry.dispatcher
            dispatcher.unfollow_all(stand_in)
            dispatcher.stop_following()
            if not self._running:
                return None
            before = dispatcher.everything
            # The caller's frames are greenprof's tracer's: start() looks
            # past them, to where the greenlet running now resumes.
            self._profiler.start(entry.main)
            self.followed += 1
            main_id = id(entry.main)
            self.ended.pop(main_id, None)  # an ended thread's greenlet had this id
            self._thread_ends.end = _ThreadEnd(self.ended, main_id, self._now)
        if glet is entry.main:
            return None  # watched now, as the session's target
        for buffer in dispatcher.everything:
            if buffer not in before and buffer.follow is not None:
                return buffer.follow(glet, buffer)
        return None

    def clipped(self, session: Session) -> Session:
        """``session`` with the part of each followed thread's main greenlet
        ending with its thread, not at the session's stop: nothing of it
        ran or waited after that."""
        ended = dict(self.ended)
        bounds = {
            greenlet_id: (start, min(stop, ended[greenlet_id]) if stop else stop)
            if greenlet_id in ended
            else (start, stop)
            for greenlet_id, (start, stop) in session.bounds.items()
        }
        return attrs.evolve(session, bounds=bounds)

    # -- housekeeping --------------------------------------------------------------------

    def _forget_ended(self) -> None:
        # Under self._lock. Threads that ended without a greenlet switch.
        for ident, entry in list(self._armed.items()):
            thread = entry.thread()
            if thread is None or not thread.is_alive():
                del self._armed[ident]
                self._disarm(entry)

    @staticmethod
    def _disarm(entry: _Armed) -> None:
        dispatcher = entry.dispatcher
        if entry.stand_in in dispatcher.everything:
            dispatcher.unfollow_all(entry.stand_in)
            dispatcher.stop_following()
            dispatcher.release()

    def _after_fork_in_child(self) -> None:
        # Only the forking thread goes on; the lock may have been held.
        self._lock = allocate_real_lock()
        self._armed = {}
