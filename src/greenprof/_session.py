"""One session, from ``start()`` to ``stop()``: its targets, the greenlets it
picked up, their raw records, and what is built of them when read.

Cheap to make: everything checked or shared lives in the pipeline
(``_pipeline``); a session only registers its watches and, at ``stop()``,
takes them down and keeps its raw records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Final, TypeGuard

import greenlet

from ._buffer import START, STOP, GreenletBuffer, Record
from ._build import build, in_time_order
from ._delivery import Batch
from ._dispatcher import (
    GreenletWatch,
    SwitchDispatcher,
    dispatcher_for_current_thread,
    installed_dispatcher,
    redeliver,
)
from ._naming import greenlet_name
from ._sampler import SAMPLER, HybridTaker, ThreadTaker
from ._stack import capture
from ._threads import allocate_real_lock, thread_ident
from .exceptions import (
    AlreadyProfilingError,
    DeadGreenletError,
    NotAGreenletError,
    WrongThreadError,
)
from .snapshot import SESSION_SETTERS, Session, Snapshot

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["Run"]

_logger = logging.getLogger("greenprof")

#: ``(greenlet ref, buffer, dispatcher)`` of a greenlet a session picked up.
Child = tuple["weakref.ref[greenlet.greenlet]", GreenletBuffer, SwitchDispatcher]


class _Target:
    """A greenlet (or thread) the program asked to profile."""

    __slots__ = ("buffer", "dispatcher", "key", "ref", "taker", "tracking", "watch")

    def __init__(
        self,
        key: int,
        buffer: GreenletBuffer,
        ref: Callable[[], object],
        dispatcher: SwitchDispatcher | None = None,
    ) -> None:
        self.key = key
        self.buffer = buffer
        self.ref = ref
        self.dispatcher = dispatcher
        self.watch: GreenletWatch | None = None
        self.taker: HybridTaker | ThreadTaker | None = None
        self.tracking = False


class Run:
    """One session of a profiler.

    Who writes what: ``start()``, ``stop()`` and the reading methods run in
    the program's threads, under ``lock`` when they touch the buffers list;
    the switch path only appends to ``adopted`` (``follow_spawned``) and to
    the buffers' records; the sampler thread appends samples to buffers.
    """

    __slots__ = (
        "adopted",
        "batches",
        "bounds",
        "buffers",
        "built",
        "children",
        "discarded",
        "dispatchers",
        "dropped_done",
        "handed",
        "lock",
        "pipeline",
        "running_at_start",
        "session",
        "session_handed",
        "session_id",
        "start_ns",
        "stop_ns",
        "stopping",
        "tags",
        "targets",
    )

    def __init__(self, pipeline: Pipeline, session_id: str, tags: dict[str, str]) -> None:
        self.pipeline = pipeline
        self.session_id = session_id
        #: Copied into the session's record when it stops.
        self.tags = tags
        self.lock = allocate_real_lock()
        self.targets: dict[int, _Target] = {}
        #: Buffers whose records are not all taken yet.
        self.buffers: list[GreenletBuffer] = []
        #: Greenlets the switch path picked up (``follow_spawned``): a deque,
        #: which the tracer appends to without a lock.
        self.adopted: deque[Child] = deque()
        self.children: list[Child] = []
        #: ``greenlet_id`` -> (start, stop) wall-clock ns of its part of the
        #: session; stop is 0 while it runs.
        self.bounds: dict[int, tuple[int, int]] = {}
        self.running_at_start: set[int] = set()
        self.dispatchers: list[SwitchDispatcher] = []
        self.dropped_done: dict[int, int] = {}
        self.start_ns = 0
        self.stop_ns = 0
        self.stopping = False
        self.discarded = False
        #: Snapshots built so far, in order; ``handed`` of them went to the sinks.
        self.built: list[Snapshot] = []
        self.handed = 0
        #: What was handed to the sinks, to call back if the session is discarded.
        self.batches: list[Batch] = []
        self.session: Session | None = None
        self.session_handed = False

    @property
    def running(self) -> bool:
        return bool(self.targets)

    # -- starting ------------------------------------------------------------------

    def start(self, target: greenlet.greenlet | threading.Thread | None) -> None:
        """Profile ``target`` (default: the calling greenlet) from now on."""
        mode = self.pipeline.options.mode
        if isinstance(target, threading.Thread) and mode == "thread":
            self._start_thread(target)
            return
        current = greenlet.getcurrent()
        glet = current if target is None else target
        if not _check_target(glet, current):  # it raises instead
            return
        key = id(glet)
        with self.lock:
            self._check_not_running(key, glet)
            dispatcher = dispatcher_for_current_thread()
            buffer = self._new_buffer(glet, dispatcher.thread_id)
            record = _Target(key, buffer, weakref.ref(glet), dispatcher)
            started = time.perf_counter_ns()
            if glet is current and mode != "thread" and buffer.limit:
                # Where the session starts: a request that never yields still
                # shows where its time went.
                buffer.add((START, started, capture(_caller(), buffer.depth)))
            if mode == "thread":
                dispatcher.start_tracking()
                record.tracking = True
                record.taker = ThreadTaker(
                    thread_id=dispatcher.thread_id,
                    thread_name=_thread_name(dispatcher.thread_id),
                    dispatcher=dispatcher,
                    buffer=buffer,
                    period_ns=self.pipeline.options.period_ns,
                )
            else:
                if self.pipeline.options.follow_spawned:
                    buffer.follow = self._adopt
                    dispatcher.start_following()
                if mode == "hybrid":
                    record.taker = HybridTaker(
                        dispatcher=dispatcher, period_ns=self.pipeline.options.period_ns
                    )
                    buffer.sampler = record.taker
                record.watch = dispatcher.watch(glet, buffer)
            self._register(record, started, running=glet is current)
            if dispatcher not in self.dispatchers:
                self.dispatchers.append(dispatcher)
        if record.taker is not None:
            SAMPLER.subscribe(record.taker)

    def _start_thread(self, thread: threading.Thread) -> None:
        ident = thread.ident
        if ident is None or not thread.is_alive():
            msg = f"{thread!r} is not running; start the thread before profiling it."
            raise DeadGreenletError(msg)
        options = self.pipeline.options
        with self.lock:
            self._check_not_running(ident, thread)
            dispatcher = installed_dispatcher(ident)
            buffer = GreenletBuffer(
                limit=options.max_snapshots,
                depth=options.max_depth,
                greenlet_id=0,
                greenlet_name=f"thread {thread.name}",
                thread_id=ident,
            )
            record = _Target(ident, buffer, weakref.ref(thread))
            record.taker = ThreadTaker(
                thread_id=ident,
                thread_name=thread.name,
                dispatcher=dispatcher if dispatcher is not None and dispatcher.tracking else None,
                buffer=buffer,
                period_ns=options.period_ns,
            )
            self._register(record, time.perf_counter_ns())
        SAMPLER.subscribe(record.taker)

    def _register(self, record: _Target, started: int, *, running: bool = False) -> None:
        # Under self.lock.
        if not self.start_ns:
            self.start_ns = self.pipeline.wall_ns(started)
        self.targets[record.key] = record
        self.buffers.append(record.buffer)
        if self.pipeline.options.mode != "thread":
            # Thread mode samples whatever runs: bounds and who was running
            # at the start say nothing about what its samples show.
            if running:
                self.running_at_start.add(record.key)
            self.bounds[record.buffer.greenlet_id] = (self.pipeline.wall_ns(started), 0)

    def _check_not_running(self, key: int, thing: object) -> None:
        existing = self.targets.get(key)
        if existing is not None and existing.ref() is thing:
            what = _describe(thing) if isinstance(thing, greenlet.greenlet) else repr(thing)
            msg = (
                f"This profiler is already profiling {what}. "
                "Stop it first, or use a second Profiler to nest sessions."
            )
            raise AlreadyProfilingError(msg)

    def _new_buffer(self, glet: greenlet.greenlet, thread_id: int) -> GreenletBuffer:
        # May run inside the tracer (``_adopt``): nothing here may switch.
        options = self.pipeline.options
        limit, depth = options.max_snapshots, options.max_depth
        if options.only is not None:
            try:
                keep = bool(options.only(glet))
            except BaseException as exc:
                keep = True  # a broken filter must not hide a greenlet
                redeliver(exc)  # nor swallow a Ctrl-C
            if not keep:
                # Muted: followed, not recorded (max_snapshots is >= 1), and
                # with depth 0 no stack is walked for it.
                limit = depth = 0
        return GreenletBuffer(
            limit=limit,
            depth=depth,
            greenlet_id=id(glet),
            greenlet_name=greenlet_name(glet),
            thread_id=thread_id,
        )

    def _adopt(self, child: greenlet.greenlet, parent: GreenletBuffer) -> GreenletBuffer | None:
        # Runs inside the tracer: no lock, nothing that could switch.
        if self.stopping:
            return None
        buffer = self._new_buffer(child, parent.thread_id)
        buffer.parent_id = parent.greenlet_id
        buffer.follow = self._adopt
        buffer.sampler = parent.sampler
        dispatcher = installed_dispatcher(parent.thread_id)
        if dispatcher is not None:
            self.adopted.append((weakref.ref(child), buffer, dispatcher))
        return buffer

    def _take_adopted(self) -> None:
        # Under self.lock.
        while self.adopted:
            child = self.adopted.popleft()
            self.children.append(child)
            self.buffers.append(child[1])

    # -- stopping --------------------------------------------------------------------

    def stop(self) -> None:
        """Take every watch down; the records stay, to be built when read."""
        with self.lock:
            targets = list(self.targets.values())
            self.targets.clear()
        for target in targets:
            if target.taker is not None:
                SAMPLER.unsubscribe(target.taker)
        recheck_tracer(targets)  # counts a tracer other code removed
        stopped_perf = time.perf_counter_ns()
        stopped = self.stop_ns = self.pipeline.wall_ns(stopped_perf)
        self.stopping = True  # no more adoptions (the tracer may be in another thread)
        options = self.pipeline.options
        current = greenlet.getcurrent()
        for target in targets:
            if (
                target.dispatcher is not None
                and options.mode != "thread"
                and target.buffer.limit
                and target.ref() is current
            ):
                # Where the session stops, in the greenlet it ran in.
                stack = capture(_caller(), target.buffer.depth)
                target.buffer.add((STOP, stopped_perf, stack))
        for target in targets:
            if target.dispatcher is not None:
                if options.follow_spawned and target.watch is not None:
                    target.dispatcher.stop_following()
                if target.watch is not None:
                    target.dispatcher.unwatch(target.watch, target.buffer)
                if target.tracking:
                    target.dispatcher.stop_tracking()
            bound_key = target.buffer.greenlet_id
            if bound_key in self.bounds:
                self.bounds[bound_key] = (self.bounds[bound_key][0], stopped)
        with self.lock:
            self._take_adopted()
            children = self.children
        for child_ref, child_buffer, child_dispatcher in children:
            child = child_ref()
            watch = child_dispatcher.watches.get(child) if child is not None else None
            if watch is not None:
                child_dispatcher.unwatch(watch, child_buffer)
            self.bounds[child_buffer.greenlet_id] = (0, stopped)
        for dispatcher in {id(t.dispatcher): t.dispatcher for t in targets}.values():
            if dispatcher is not None:
                dispatcher.release()
        for _, _, child_dispatcher in children:
            child_dispatcher.release()
        if stopped - self.start_ns < options.min_duration_ns:
            self.discard()
        else:
            self._report_drops([t.buffer for t in targets])

    def discard(self) -> None:
        """Drop everything recorded, unformatted; call back what went to the sinks."""
        with self.lock:
            for buffer in self.buffers:
                buffer.drain()
            self.buffers = []
            self.built = []
            self.handed = 0
            self.discarded = True
            for batch in self.batches:
                batch.cancelled = True

    def _report_drops(self, buffers: list[GreenletBuffer]) -> None:
        for buffer in buffers:
            if buffer.dropped and buffer.limit:
                _logger.warning(
                    "greenprof: kept the first %d snapshots of %s and dropped %d "
                    "more; raise max_snapshots to keep them.",
                    buffer.limit,
                    buffer.greenlet_name,
                    buffer.dropped,
                )

    # -- reading -----------------------------------------------------------------------

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot so far, built now if need be (from any thread)."""
        with self.lock:
            self._build_pending()
            return self.built

    def _build_pending(self) -> None:
        # Under self.lock.
        drained = self._take_records()
        if drained:
            build(
                in_time_order(drained),
                self.built,
                session_id=self.session_id,
                first_sequence=len(self.built),
                offset_ns=self.pipeline.offset_ns,
            )

    def _take_records(self) -> list[tuple[list[Record], GreenletBuffer]]:
        """Every buffer's records not taken yet (under self.lock); buffers of
        greenlets no longer profiled are let go."""
        self._take_adopted()
        if not self.buffers:
            return []
        live = {id(t.buffer) for t in self.targets.values()}
        if not self.stop_ns:
            live.update(id(child[1]) for child in self.children)
        drained: list[tuple[list[Record], GreenletBuffer]] = []
        keep: list[GreenletBuffer] = []
        for buffer in self.buffers:
            records = buffer.drain()
            if records:
                drained.append((records, buffer))
            if id(buffer) in live:
                keep.append(buffer)
            elif buffer.dropped and buffer.limit:
                self.dropped_done[buffer.greenlet_id] = (
                    self.dropped_done.get(buffer.greenlet_id, 0) + buffer.dropped
                )
        self.buffers = keep
        return drained

    def to_hand_over(self) -> Batch | None:
        """What the sinks have not received yet, as a batch (and, once the
        session stopped, its Session), or None."""
        with self.lock:
            if self.discarded:
                return None
            self._build_pending()
            snapshots = self.built[self.handed :]
            sessions = [self._record()] if self.stop_ns and not self.session_handed else []
            if not snapshots and not sessions:
                return None
            self.handed = len(self.built)
            self.session_handed = bool(sessions) or self.session_handed
            batch = Batch(snapshots, sessions)
            self.batches.append(batch)
            return batch

    def handed_over(self) -> list[Batch]:
        """What went to the sinks so far (for a sink added later)."""
        with self.lock:
            return [b for b in self.batches if not b.cancelled]

    def dropped(self) -> dict[int, int]:
        """``greenlet_id`` -> snapshots dropped, for the greenlets that dropped any."""
        with self.lock:
            return self._dropped()

    def _dropped(self) -> dict[int, int]:
        # Under self.lock.
        dropped = dict(self.dropped_done)
        for buffer in [*self.buffers, *(child[1] for child in list(self.adopted))]:
            if buffer.dropped and buffer.limit:
                dropped[buffer.greenlet_id] = dropped.get(buffer.greenlet_id, 0) + buffer.dropped
        return dropped

    def record(self) -> Session:
        """This session as a :class:`~greenprof.Session` (``stop_ns`` 0
        while it runs); built once it stopped."""
        with self.lock:
            return self._record()

    def _record(self) -> Session:
        # Under self.lock.
        if self.session is not None:
            return self.session
        options = self.pipeline.options
        session = _new_session(
            self.session_id,
            self.start_ns,
            self.stop_ns,
            options.mode,
            options.period_ns,
            options.max_depth,
            options.max_snapshots,
            sum(self._dropped().values()),
            frozenset(self.running_at_start),
            dict(self.bounds),
            dict(self.tags),
        )
        if self.stop_ns:
            self.session = session
        return session

    def progress(self) -> tuple[int, int]:
        """``(greenlets followed, records so far)``, cheaply, from any thread."""
        with self.lock:
            greenlets = len(self.targets) + len(self.children) + len(self.adopted)
            pending = sum(len(buffer.records) for buffer in self.buffers)
            pending += sum(len(child[1].records) for child in list(self.adopted))
            return greenlets, len(self.built) + pending


def _new_session(*values: object) -> Session:
    """A Session from values right by construction, without ``__init__``'s
    converters and checks (a request-scoped profiler makes one per request)."""
    session = object.__new__(Session)
    for setter, value in zip(SESSION_SETTERS, values, strict=True):
        setter(session, value)
    return session


def recheck_tracer(targets: list[_Target]) -> None:
    """Re-install the calling thread's tracer if other code removed it."""
    ident = thread_ident()
    for dispatcher in {id(t.dispatcher): t.dispatcher for t in targets}.values():
        if (
            dispatcher is not None
            and dispatcher.thread_id == ident
            and (dispatcher.watches or dispatcher.tracking)
        ):
            dispatcher.ensure_installed()


#: greenprof's own source files start with this.
_PACKAGE_DIR: Final = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Frames of ``contextlib`` right above greenprof's own run greenprof's
#: context managers (``@contextmanager`` ones).
_CONTEXTLIB: Final = contextlib.__file__


def _is_ours(filename: str) -> bool:
    return filename.startswith(_PACKAGE_DIR) or filename == _CONTEXTLIB


def _caller() -> FrameType | None:
    """The innermost frame that is not greenprof's: where the program
    called into greenprof (``start()``, the decorator, the middleware)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and _is_ours(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def _root(glet: greenlet.greenlet) -> greenlet.greenlet:
    while glet.parent is not None:
        glet = glet.parent
    return glet


def _thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return str(ident)


def _describe(glet: greenlet.greenlet) -> str:
    return f"greenlet {greenlet_name(glet)!r}"


def _check_target(glet: object, current: greenlet.greenlet) -> TypeGuard[greenlet.greenlet]:
    if not isinstance(glet, greenlet.greenlet):
        msg = (
            f"greenprof profiles greenlets, not {type(glet).__name__} objects "
            f"({glet!r}). Pass a greenlet.greenlet or gevent.Greenlet, or "
            "nothing to profile the calling greenlet."
        )
        raise NotAGreenletError(msg)
    if glet.dead:
        msg = (
            f"{_describe(glet)} has already finished, so it will never switch "
            "again. Start profiling before it ends, e.g. before start()/spawn()."
        )
        raise DeadGreenletError(msg)
    if _root(glet) is not _root(current):
        msg = (
            f"{_describe(glet)} belongs to another OS thread. greenlet.settrace "
            "works per thread, so start() must be called from the thread that "
            "runs the greenlet (for example from inside it)."
        )
        raise WrongThreadError(msg)
    return True
