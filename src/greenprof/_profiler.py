"""The object users hold: a profiling session over one or more greenlets.

A :class:`Profiler` attaches buffers to the per-thread dispatchers, turns raw
records into :class:`~greenprof.Snapshot` objects and feeds its sinks.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import operator
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType
from typing import Final, TypeGuard

import attrs
import greenlet

from ._buffer import START, STOP, GreenletBuffer, Record
from ._dispatcher import (
    GreenletWatch,
    SwitchDispatcher,
    dispatcher_for_current_thread,
    installed_dispatcher,
    redeliver,
)
from ._naming import greenlet_name
from ._report import Report
from ._sampler import SAMPLER, HybridTaker, ThreadTaker
from ._stack import FrameFormatter, capture
from ._threads import allocate_real_lock, thread_ident
from ._validate import Tags, check_positive_int, is_number
from .exceptions import (
    AlreadyProfilingError,
    ConfigurationError,
    DeadGreenletError,
    InvalidSinkError,
    NotAGreenletError,
    NotRunningError,
    UnknownSinkError,
    WrongThreadError,
)
from .sinks._base import Sink
from .snapshot import EVENTS, MODES, SNAPSHOT_SETTERS, Frame, Session, Snapshot

__all__ = [
    "DEFAULT_FLUSH_TIMEOUT",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_SNAPSHOTS",
    "Profiler",
    "ProfilerStats",
]

#: Snapshots a session keeps per greenlet; later ones are dropped and counted.
DEFAULT_MAX_SNAPSHOTS: Final = 10_000
#: Frames kept per snapshot, innermost first (SkyWalking's agent keeps 500).
DEFAULT_MAX_DEPTH: Final = 128
#: Seconds ``stop()`` and ``flush()`` give each sink's ``flush``.
DEFAULT_FLUSH_TIMEOUT: Final = 5.0
#: Seconds between two samples in ``hybrid`` and ``thread`` modes.
DEFAULT_DUMP_PERIOD: Final = 0.010
#: The shortest dump period greenprof accepts.
MIN_DUMP_PERIOD: Final = 0.001

_logger = logging.getLogger("greenprof")
_formatter = FrameFormatter()


class _SessionIds:
    """Session ids: 32 hex digits, a random per-process half and a counter.

    Unique across processes like ``uuid4().hex``, without reading the OS's
    random source for each session (a request-scoped profiler makes one per
    request, and that read alone cost several microseconds here).
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        # Also in a forked child, which must not repeat its parent's ids.
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_new_session_id = _SessionIds()
os.register_at_fork(after_in_child=_new_session_id.reseed)


@attrs.frozen
class ProfilerStats:
    """Counters that tell whether a profile is complete."""

    #: Snapshots recorded and kept.
    snapshots: int
    #: Snapshots not kept because a greenlet reached ``max_snapshots``.
    dropped: int
    #: ``greenlet_id`` to dropped count, for the greenlets that dropped any.
    dropped_by_greenlet: dict[int, int]
    #: Exceptions greenprof swallowed inside its tracer (should stay 0).
    tracer_errors: int
    #: Times greenprof found its tracer removed by other code and put it back.
    tracer_reinstalls: int
    #: Sink ``export``/``flush`` calls that raised or reported failure.
    sink_failures: int


@attrs.define
class _Target:
    key: int
    buffer: GreenletBuffer
    ref: Callable[[], object]
    dispatcher: SwitchDispatcher | None = None
    watch: GreenletWatch | None = None
    taker: HybridTaker | ThreadTaker | None = None
    tracking: bool = False


@attrs.define
class _SinkState:
    sink: Sink
    delivered: int = 0
    #: Ranges of ``Profiler._snapshots`` whose export failed, to try again.
    retry: list[tuple[int, int]] = attrs.Factory(list)
    #: Sessions (of ``Profiler._sessions``) handed over so far.
    sessions: int = 0


class Profiler:
    """Records every switch of the greenlets it is started on.

    Usable on its own (``start``/``stop``) or as a context manager. A session
    keeps what it recorded in :attr:`snapshots` and hands it to every sink
    on :meth:`flush` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        sinks: Iterable[Sink] = (),
        max_snapshots: int = DEFAULT_MAX_SNAPSHOTS,
        max_depth: int = DEFAULT_MAX_DEPTH,
        flush_timeout: float | None = DEFAULT_FLUSH_TIMEOUT,
        mode: str = "greenlet",
        dump_period: float = DEFAULT_DUMP_PERIOD,
        min_duration: float = 0.0,
        follow_spawned: bool = False,
        only: Callable[[greenlet.greenlet], bool] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if mode not in MODES:
            msg = f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}."
            raise ConfigurationError(msg)
        if not is_number(dump_period) or not dump_period >= MIN_DUMP_PERIOD:
            msg = (
                f"dump_period is in seconds and must be at least {MIN_DUMP_PERIOD} "
                f"(1 ms), not {dump_period!r}."
            )
            raise ConfigurationError(msg)
        if not is_number(min_duration) or not min_duration >= 0:
            msg = f"min_duration is in seconds and must be >= 0, not {min_duration!r}."
            raise ConfigurationError(msg)
        check_positive_int("max_snapshots", max_snapshots)
        check_positive_int("max_depth", max_depth)
        if flush_timeout is not None and (not is_number(flush_timeout) or flush_timeout < 0):
            msg = f"flush_timeout must be a number of seconds >= 0 or None, not {flush_timeout!r}."
            raise ConfigurationError(msg)
        self.max_snapshots = max_snapshots
        self.max_depth = max_depth
        self.flush_timeout = flush_timeout
        if follow_spawned and mode == "thread":
            msg = (
                "follow_spawned needs switch snapshots: use mode='greenlet' or "
                "'hybrid' with it (thread mode samples every greenlet anyway)."
            )
            raise ConfigurationError(msg)
        if only is not None and not callable(only):
            msg = (
                "only must be a function that takes a greenlet and returns whether "
                f"to record it, not {type(only).__name__} {only!r}."
            )
            raise ConfigurationError(msg)
        if only is not None and mode == "thread":
            msg = (
                "only picks greenlets by their switches: use mode='greenlet' or "
                "'hybrid' with it (thread mode samples whichever greenlet runs)."
            )
            raise ConfigurationError(msg)
        self.mode = mode
        #: What the session is about (``{"path": "/checkout"}``): kept in
        #: its :class:`~greenprof.Session`. May be changed until ``stop()``.
        self.tags: dict[str, str] = Tags(tags)
        self.follow_spawned = bool(follow_spawned)
        #: Greenlets for which this returns False are followed (with
        #: ``follow_spawned``) but not recorded.
        self.only = only
        #: Greenlets adopted by the switch path (``follow_spawned``):
        #: ``(greenlet ref, buffer, dispatcher)``; a deque, for the tracer
        #: appends without a lock.
        self._adopted: deque[
            tuple[weakref.ref[greenlet.greenlet], GreenletBuffer, SwitchDispatcher]
        ] = deque()
        self._children: list[
            tuple[weakref.ref[greenlet.greenlet], GreenletBuffer, SwitchDispatcher]
        ] = []
        self.dump_period = dump_period
        self.min_duration = min_duration
        #: True when the last session was shorter than ``min_duration`` and
        #: its snapshots were discarded instead of exported.
        self.discarded = False
        self._stopping = False
        # When the current start..stop run began, and where its snapshots
        # begin in ``_snapshots`` (a run that is discarded drops only its own).
        self._run_started_ns = 0
        self._run_first = 0
        self._runs = 0
        # Targets that were the running greenlet when they were started.
        self._began_running: set[int] = set()
        #: ``greenlet_id`` -> (start, stop) wall-clock ns of its session part;
        #: stop is 0 while it runs.
        self.bounds: dict[int, tuple[int, int]] = {}
        #: Identifies this session in every snapshot it records (a new one
        #: for each start..stop after the first).
        self.session_id = _new_session_id()
        self._sessions: list[Session] = []
        # Called with the session's duration in ns as it stops, before its
        # Session is made (the WSGI middleware's ``duration_ms`` tag).
        self._on_stop: Callable[[Profiler, int], None] | None = None
        self._lock = allocate_real_lock()
        self._running: dict[int, _Target] = {}
        self._buffers: list[GreenletBuffer] = []
        self._dropped_done: dict[int, int] = {}
        self._dispatchers: list[SwitchDispatcher] = []
        self._snapshots: list[Snapshot] = []
        self._sinks: list[_SinkState] = []
        self._sink_failures = 0
        #: Runs discarded so far: a failed export re-queues its range only if
        #: no run was discarded while it ran (the range may be gone).
        self._discards = 0
        self._wall_anchor = 0
        self._mono_anchor = 0
        for sink in sinks:
            self.add_sink(sink)

    # -- sinks ----------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        """Send this session's snapshots to ``sink`` from now on (those already
        recorded included, at the next flush)."""
        missing = [
            name for name in ("export", "flush", "close") if not callable(getattr(sink, name, None))
        ]
        if missing:
            msg = (
                f"{sink!r} is not a sink: it has no callable {', '.join(missing)}. "
                "A sink needs export(batch), flush(timeout) and close(); "
                "see greenprof.sinks.Sink."
            )
            raise InvalidSinkError(msg)
        with self._lock:
            if any(state.sink is sink for state in self._sinks):
                return
            self._sinks.append(_SinkState(sink))

    def remove_sink(self, sink: Sink) -> None:
        """Stop sending to ``sink``; it is not flushed or closed."""
        with self._lock:
            for index, state in enumerate(self._sinks):
                if state.sink is sink:
                    del self._sinks[index]
                    return
        msg = f"{sink!r} was never added to this profiler; nothing to remove."
        raise UnknownSinkError(msg)

    @property
    def sinks(self) -> list[Sink]:
        return [state.sink for state in self._sinks]

    # -- sessions ---------------------------------------------------------------

    def start(self, target: greenlet.greenlet | threading.Thread | None = None) -> None:
        """Profile ``target`` (default: the calling greenlet) until :meth:`stop`.

        Call it from the OS thread that runs ``target``: greenlet tracing is
        per thread. Several targets may be started on one profiler. In
        ``thread`` mode ``target`` may also be a ``threading.Thread``.
        """
        if isinstance(target, threading.Thread) and self.mode == "thread":
            self._start_thread(target)
            return
        current = greenlet.getcurrent()
        glet = current if target is None else target
        if not _check_target(glet, current):  # it raises instead
            return
        key = id(glet)
        with self._lock:
            self._check_not_running(key, glet)
            self._anchor()
            dispatcher = dispatcher_for_current_thread()
            buffer = self._new_buffer(glet, dispatcher.thread_id)
            record = _Target(key, buffer, weakref.ref(glet), dispatcher)
            started = time.perf_counter_ns()
            if glet is current and self.mode != "thread" and buffer.limit:
                # Where the session starts: a request that never yields still
                # shows where its time went.
                buffer.add((START, started, capture(_caller(), buffer.depth)))
            if self.mode == "thread":
                dispatcher.start_tracking()
                record.tracking = True
                record.taker = ThreadTaker(
                    thread_id=dispatcher.thread_id,
                    thread_name=_thread_name(dispatcher.thread_id),
                    dispatcher=dispatcher,
                    buffer=buffer,
                    period_ns=self._period_ns(),
                )
            else:
                if self.follow_spawned:
                    buffer.follow = self._adopt
                    dispatcher.start_following()
                if self.mode == "hybrid":
                    record.taker = HybridTaker(dispatcher=dispatcher, period_ns=self._period_ns())
                    buffer.sampler = record.taker
                record.watch = dispatcher.watch(glet, buffer)
            self._register(record, started, running=glet is current)
            if dispatcher not in self._dispatchers:
                self._dispatchers.append(dispatcher)
        if record.taker is not None:
            SAMPLER.subscribe(record.taker)

    def _start_thread(self, thread: threading.Thread) -> None:
        ident = thread.ident
        if ident is None or not thread.is_alive():
            msg = f"{thread!r} is not running; start the thread before profiling it."
            raise DeadGreenletError(msg)
        with self._lock:
            self._check_not_running(ident, thread)
            self._anchor()
            dispatcher = installed_dispatcher(ident)
            buffer = GreenletBuffer(
                limit=self.max_snapshots,
                depth=self.max_depth,
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
                period_ns=self._period_ns(),
            )
            self._register(record, time.perf_counter_ns())
        SAMPLER.subscribe(record.taker)

    def _adopt(self, child: greenlet.greenlet, parent: GreenletBuffer) -> GreenletBuffer | None:
        # Runs inside the tracer: no lock, nothing that could switch.
        if self._stopping:
            return None
        buffer = self._new_buffer(child, parent.thread_id)
        buffer.parent_id = parent.greenlet_id
        buffer.follow = self._adopt
        buffer.sampler = parent.sampler
        dispatcher = installed_dispatcher(parent.thread_id)
        if dispatcher is not None:
            self._adopted.append((weakref.ref(child), buffer, dispatcher))
        return buffer

    def _new_buffer(self, glet: greenlet.greenlet, thread_id: int) -> GreenletBuffer:
        # May run inside the tracer (``_adopt``): nothing here may switch.
        limit, depth = self.max_snapshots, self.max_depth
        if self.only is not None:
            try:
                keep = bool(self.only(glet))
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

    def _take_adopted(self) -> None:
        # Under self._lock.
        while self._adopted:
            child = self._adopted.popleft()
            self._children.append(child)
            self._buffers.append(child[1])

    def _check_not_running(self, key: int, thing: object) -> None:
        existing = self._running.get(key)
        if existing is not None and existing.ref() is thing:
            what = _describe(thing) if isinstance(thing, greenlet.greenlet) else repr(thing)
            msg = (
                f"This profiler is already profiling {what}. "
                "Stop it first, or use a second Profiler to nest sessions."
            )
            raise AlreadyProfilingError(msg)

    def _anchor(self) -> None:
        if not self._mono_anchor:
            self._wall_anchor = time.time_ns()
            self._mono_anchor = time.perf_counter_ns()

    def _period_ns(self) -> int:
        return round(self.dump_period * 1e9)

    def _wall_ns(self, perf_ns: int) -> int:
        """Wall-clock ns, on the snapshots' clock, of a ``perf_counter_ns()``."""
        return self._wall_anchor + perf_ns - self._mono_anchor

    def _register(self, record: _Target, started: int, *, running: bool = False) -> None:
        # Under self._lock. ``started``: perf_counter_ns() of this start.
        if not self._running:
            self._runs += 1
            if self._runs > 1:
                # A new start..stop: a new session. (The first keeps the id
                # made with the profiler, which sinks may have been told.)
                self.session_id = _new_session_id()
                self.bounds = {}
                self._began_running = set()
            self._run_started_ns = self._wall_ns(started)
            self._run_first = len(self._snapshots) + sum(len(b.records) for b in self._buffers)
            self.discarded = False
            self._stopping = False
        self._running[record.key] = record
        self._buffers.append(record.buffer)
        if self.mode != "thread":
            # Thread mode samples whatever runs: bounds and who was running
            # at the start say nothing about what its samples show.
            if running:
                self._began_running.add(record.key)
            self.bounds[record.buffer.greenlet_id] = (self._wall_ns(started), 0)

    def stop(self) -> None:
        """Stop every target, then hand what was recorded to every sink.

        A session shorter than ``min_duration`` hands nothing to its sinks and
        keeps nothing (``discarded`` tells).
        """
        with self._lock:
            if not self._running:
                msg = (
                    "This profiler is not running: call start() before stop(), "
                    "and stop() only once per start()."
                )
                raise NotRunningError(msg)
            targets = list(self._running.values())
            self._running.clear()
        for target in targets:
            if target.taker is not None:
                SAMPLER.unsubscribe(target.taker)
        self._recheck_tracer(targets)  # counts a tracer other code removed
        stopped_perf = time.perf_counter_ns()
        stopped = self._wall_ns(stopped_perf)
        self._stopping = True  # no more adoptions (the tracer may be in another thread)
        current = greenlet.getcurrent()
        for target in targets:
            if (
                target.dispatcher is not None
                and self.mode != "thread"
                and target.buffer.limit
                and target.ref() is current
            ):
                # Where the session stops, in the greenlet it ran in.
                stack = capture(_caller(), target.buffer.depth)
                target.buffer.add((STOP, stopped_perf, stack))
        for target in targets:
            if target.dispatcher is not None:
                if self.follow_spawned and target.watch is not None:
                    target.dispatcher.stop_following()
                if target.watch is not None:
                    target.dispatcher.unwatch(target.watch, target.buffer)
                if target.tracking:
                    target.dispatcher.stop_tracking()
            bound_key = target.buffer.greenlet_id
            if bound_key in self.bounds:
                self.bounds[bound_key] = (self.bounds[bound_key][0], stopped)
        with self._lock:
            self._take_adopted()
            children, self._children = self._children, []
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
        if self.min_duration and stopped - self._run_started_ns < self.min_duration * 1e9:
            self._discard()
            return
        buffers = [t.buffer for t in targets] + [child[1] for child in children]
        if self._on_stop is not None:
            self._on_stop(self, stopped - self._run_started_ns)
        with self._lock:
            self._sessions.append(
                self._session(stopped, dropped=sum(b.dropped for b in buffers if b.limit))
            )
        self.flush()
        self._report_drops(targets)

    def _session(self, stopped: int, *, dropped: int) -> Session:
        """The current run as a :class:`Session` (``stopped`` 0: still running)."""
        return Session(
            session_id=self.session_id,
            start_ns=self._run_started_ns,
            stop_ns=stopped,
            mode=self.mode,
            dump_period_ns=self._period_ns(),
            max_depth=self.max_depth,
            max_snapshots=self.max_snapshots,
            dropped=dropped,
            running_at_start=self._began_running,
            bounds=self.bounds,
            tags=self.tags,
        )

    def _discard(self) -> None:
        # Drop this run's snapshots only: earlier runs' were delivered. Its
        # records not built yet are dropped as they are, unformatted.
        with self._lock:
            self._take_records()
            del self._snapshots[self._run_first :]
            kept = len(self._snapshots)
            for state in self._sinks:
                state.delivered = min(state.delivered, kept)
                state.retry = [(a, min(b, kept)) for a, b in state.retry if a < min(b, kept)]
            self._discards += 1
            self.discarded = True

    @property
    def is_running(self) -> bool:
        return bool(self._running)

    def __enter__(self) -> Profiler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._running:
            self.stop()

    # -- results ------------------------------------------------------------------

    @property
    def snapshots(self) -> list[Snapshot]:
        """Everything recorded so far, in order."""
        self._drain()
        return list(self._snapshots)

    @property
    def stats(self) -> ProfilerStats:
        self._drain()
        with self._lock:
            dropped = dict(self._dropped_done)
            for buffer in self._buffers:
                if buffer.dropped and buffer.limit:
                    dropped[buffer.greenlet_id] = (
                        dropped.get(buffer.greenlet_id, 0) + buffer.dropped
                    )
            return ProfilerStats(
                snapshots=len(self._snapshots),
                dropped=sum(dropped.values()),
                dropped_by_greenlet=dropped,
                tracer_errors=sum(d.errors for d in self._dispatchers),
                tracer_reinstalls=sum(d.reinstalls for d in self._dispatchers),
                sink_failures=self._sink_failures,
            )

    def _progress(self) -> tuple[int, int]:
        """``(greenlets followed, snapshots recorded)`` so far, from any thread,
        without draining: cheap enough to call every second."""
        with self._lock:
            greenlets = len(self._running) + len(self._children) + len(self._adopted)
            pending = sum(len(buffer.records) for buffer in self._buffers)
            pending += sum(len(child[1].records) for child in list(self._adopted))
            return greenlets, len(self._snapshots) + pending

    @property
    def sessions(self) -> list[Session]:
        """One :class:`~greenprof.Session` per start..stop kept so far, and
        one for the current one while it runs (``stop_ns`` 0)."""
        with self._lock:
            sessions = list(self._sessions)
            if self._running:
                dropped = sum(b.dropped for b in self._buffers if b.limit)
                sessions.append(self._session(0, dropped=dropped))
        return sessions

    def report(self) -> Report:
        """Where the time went: on/off-CPU per stack and per greenlet, and the
        longest stretches without a yield (see :class:`greenprof.Report`)."""
        return Report(self.snapshots, sessions=self.sessions)

    def flush(self, timeout: float | None = None) -> bool:
        """Hand everything recorded so far to every sink and flush them.

        Also re-installs greenprof's tracer in the calling thread if other code
        removed it. Returns False if a sink failed or did not finish in time.
        """
        self._recheck_tracer(list(self._running.values()))
        self._drain()
        return self._deliver(self.flush_timeout if timeout is None else timeout)

    # -- internals ----------------------------------------------------------------

    @staticmethod
    def _recheck_tracer(targets: Sequence[_Target]) -> None:
        """Re-install the calling thread's tracer if other code removed it."""
        ident = thread_ident()
        for dispatcher in {id(t.dispatcher): t.dispatcher for t in targets}.values():
            if (
                dispatcher is not None
                and dispatcher.thread_id == ident
                and (dispatcher.watches or dispatcher.tracking)
            ):
                dispatcher.ensure_installed()

    def _drain(self) -> None:
        with self._lock:
            drained = self._take_records()
            if not drained:
                return
            pending: Iterable[tuple[Record, GreenletBuffer]]
            if len(drained) == 1:
                records, buffer = drained[0]
                if buffer.sampler is not None:
                    # Two writers (the tracer, the hybrid sampler): a sample
                    # may land a little late. One writer appends in order.
                    records.sort(key=_by_time)
                pending = zip(records, itertools.repeat(buffer))
            else:
                merged = [(r, b) for records, b in drained for r in records]
                merged.sort(key=_by_record_time)
                pending = merged
            self._build(pending)

    def _take_records(self) -> list[tuple[list[Record], GreenletBuffer]]:
        """Every buffer's records not taken yet (under self._lock); buffers of
        greenlets no longer profiled are let go."""
        self._take_adopted()
        if not self._buffers:
            return []
        running = {id(t.buffer) for t in self._running.values()}
        running.update(id(child[1]) for child in self._children)
        drained: list[tuple[list[Record], GreenletBuffer]] = []
        keep: list[GreenletBuffer] = []
        for buffer in self._buffers:
            records = buffer.drain()
            if records:
                drained.append((records, buffer))
            if id(buffer) in running:
                keep.append(buffer)
            elif buffer.dropped and buffer.limit:
                self._dropped_done[buffer.greenlet_id] = (
                    self._dropped_done.get(buffer.greenlet_id, 0) + buffer.dropped
                )
        self._buffers = keep
        return drained

    def _build(self, pending: Iterable[tuple[Record, GreenletBuffer]]) -> None:
        # Under self._lock. The hot loop of stop(): a Snapshot is built with
        # its slot setters (see snapshot.SNAPSHOT_SETTERS), and each raw
        # stack is formatted once.
        set_gid, set_name, set_thread, set_event, set_seq, set_time, set_stack, set_session, set_parent = SNAPSHOT_SETTERS  # fmt: skip  # noqa: E501
        new = object.__new__
        stack_of = _formatter.stack
        stacks: dict[tuple[int, int], tuple[Frame, ...]] = {}
        sequence = len(self._snapshots) - self._run_first
        offset = self._wall_anchor - self._mono_anchor
        session_id = self.session_id
        append = self._snapshots.append
        current: GreenletBuffer | None = None
        depth = gid = thread = 0
        name = ""
        parent: int | None = None
        for record, buffer in pending:
            if buffer is not current:  # hoisted: usually one buffer throughout
                current = buffer
                depth, gid, name = buffer.depth, buffer.greenlet_id, buffer.greenlet_name
                thread, parent = buffer.thread_id, buffer.parent_id
            raw = record[2]
            done = raw.frames if raw is not None and raw.height <= depth else None
            if done is not None:
                stack = done  # formatted already, and not too deep
            else:
                key = (id(raw), depth)
                cached = stacks.get(key)
                if cached is None:
                    cached = stacks[key] = stack_of(raw, depth)
                stack = cached
            snapshot = new(Snapshot)
            if len(record) == 5:  # a thread-mode sample, labelled
                set_gid(snapshot, record[3])
                set_name(snapshot, record[4])
            else:
                set_gid(snapshot, gid)
                set_name(snapshot, name)
            set_thread(snapshot, thread)
            set_event(snapshot, EVENTS[record[0]])
            set_seq(snapshot, sequence)
            set_time(snapshot, offset + record[1])
            set_stack(snapshot, stack)
            set_session(snapshot, session_id)
            set_parent(snapshot, parent)
            append(snapshot)
            sequence += 1

    def _deliver(self, timeout: float | None) -> bool:
        # Ranges are claimed under the lock and exported outside it: a sink may
        # do I/O that switches greenlets, and a real lock held across a switch
        # would deadlock the thread.
        if not self._sinks:
            return True
        with self._lock:
            end = len(self._snapshots)
            discards = self._discards
            jobs: list[tuple[_SinkState, list[tuple[int, int]], int, list[Session]]] = []
            for state in self._sinks:
                ranges = state.retry
                if state.delivered < end:
                    ranges.append((state.delivered, end))
                state.retry = []
                state.delivered = end
                first = state.sessions
                state.sessions = len(self._sessions)
                jobs.append((state, _merge(ranges), first, self._sessions[first:]))
            snapshots = self._snapshots
        ok = True
        for state, ranges, first, sessions in jobs:
            exported = True
            for start, stop in ranges:
                try:
                    state.sink.export(snapshots[start:stop])
                except Exception as exc:
                    ok = exported = False
                    with self._lock:
                        # Unless a discarded run took these snapshots away
                        # meanwhile (stop() in another thread).
                        if self._discards == discards:
                            state.retry.append((start, stop))
                        self._sink_failures += 1
                    _report_sink_failure(state.sink, "export", exc)
            export_sessions = getattr(state.sink, "export_sessions", None)
            if not exported:
                # A session goes after its snapshots: a file with the session
                # but not its snapshots would read back as other numbers.
                with self._lock:
                    state.sessions = min(state.sessions, first)
            elif sessions and export_sessions is not None:
                try:
                    export_sessions(sessions)
                except Exception as exc:
                    ok = False
                    with self._lock:
                        # Offered again at the next flush: sessions are never discarded.
                        state.sessions = min(state.sessions, first)
                        self._sink_failures += 1
                    _report_sink_failure(state.sink, "export_sessions", exc)
            if timeout == 0:
                continue  # hand over only: the sink sends in its own time
            try:
                flushed = state.sink.flush(timeout)
            except Exception as exc:
                flushed = False
                _report_sink_failure(state.sink, "flush", exc)
            else:
                if flushed is False:
                    _report_sink_failure(state.sink, "flush", "it returned False")
            if flushed is False:
                ok = False
                with self._lock:
                    self._sink_failures += 1
        return ok

    def _report_drops(self, targets: Sequence[_Target]) -> None:
        for target in targets:
            if target.buffer.dropped and target.buffer.limit:
                _logger.warning(
                    "greenprof: kept the first %d snapshots of %s and dropped %d "
                    "more; raise max_snapshots to keep them.",
                    target.buffer.limit,
                    target.buffer.greenlet_name,
                    target.buffer.dropped,
                )


#: Sort keys of ``_drain``: a record's time, and that of a (record, buffer) pair.
_by_time: Final = operator.itemgetter(1)


def _by_record_time(pair: tuple[Record, GreenletBuffer]) -> int:
    return pair[0][1]


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


# id(sink) -> a weak (or, for sinks that refuse weak references, strong)
# reference to the sink whose first failure was logged. Identity, not
# equality: two equal sinks are two sinks.
_reported_sinks: dict[int, Callable[[], object]] = {}


def _report_sink_failure(sink: object, action: str, problem: Exception | str) -> None:
    """Log a sink's first failure only; later ones are just counted."""
    key = id(sink)
    seen = _reported_sinks.get(key)
    if seen is not None and seen() is sink:
        return
    if len(_reported_sinks) > 256:
        for stale in [k for k, ref in _reported_sinks.items() if ref() is None]:
            del _reported_sinks[stale]
    try:
        _reported_sinks[key] = weakref.ref(sink)
    except TypeError:
        _reported_sinks[key] = functools.partial(_same, sink)
    detail = problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}"
    _logger.error(
        "greenprof: sink %r failed in %s() (%s). Other sinks still receive "
        "every snapshot, the profiler keeps them, and this sink's batch is "
        "retried at the next flush; further failures are only counted in "
        "Profiler.stats.sink_failures.",
        sink,
        action,
        detail,
        exc_info=problem if isinstance(problem, Exception) else None,
    )


def _same(value: object) -> object:
    return value


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
