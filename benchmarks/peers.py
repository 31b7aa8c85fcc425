"""The profilers greenprof is measured against, each behind one small interface.

Only ``benchmarks/`` imports these peers; they are never greenprof
dependencies. Each adapter profiles "a request" the way a user of that tool
would, and labels what it recorded with the greenlet that really ran:

- greenprof (``greenlet``, ``hybrid``, ``thread`` modes): a
  :class:`greenprof.Profiler` started in the request's greenlet and stopped
  at its end (``stop()`` also turns the raw records into ``Snapshot``
  objects, so that cost is counted).
- SkyWalking's ``GreenletProfiler`` and ``ThreadProfiler``
  (``apache-skywalking`` 1.2.0), driven through their own
  ``ProfileTaskExecutionContext`` without an OAP: ``attempt_profiling`` at
  the start of a request, ``stop_tracing_profile`` at its end. (SkyWalking
  Python itself never calls the latter when a segment ends, so a profiled
  thread or greenlet stays profiled until the task ends; the Java agent
  does call it, and so do we: each request gets its own profile.)
  ``agent.add_profiling_snapshot`` is redirected to a local ``queue.Queue``,
  the same kind of queue the agent puts snapshots into.
- yappi with its greenlet backend, wall or CPU clock, and cProfile: one
  profiler for the whole process, started once per run, since neither can
  profile one greenlet among many; yappi's per-greenlet stats
  (``get_func_stats(ctx_id=...)``) give the request's share.
- pyinstrument with async mode off: one ``Profiler`` per request, started
  and stopped in the request, as its documentation shows for web apps.
- A no-op greenlet tracer: the floor for anything that watches switches.
"""

from __future__ import annotations

import cProfile
import functools
import itertools
import pstats
import queue
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import greenlet

import greenprof

#: Seconds between samples for every periodic sampler but pyinstrument (whose
#: own default, 1 ms, is kept). 10 ms is greenprof's default and the shortest
#: period a SkyWalking profile task accepts.
DUMP_PERIOD = 0.010
#: The endpoint name SkyWalking's profile task watches.
OPERATION = "/bench"


@dataclass
class Outcome:
    """What one profiled request left behind."""

    #: Records in the request's profile: snapshots or samples (0 for the
    #: profilers that keep call statistics instead).
    records: int = 0
    #: Of those, the ones taken while another greenlet was running.
    foreign: int = 0


@dataclass
class Session:
    """One request being profiled; ``data`` is the peer's own."""

    glet: greenlet.greenlet
    data: Any = None
    records: int = 0
    foreign: int = 0
    #: Frames in the deepest stack it recorded.
    deepest: int = 0
    kept: list[Any] = field(default_factory=list)


def _root(frame: types.FrameType | None) -> types.FrameType | None:
    """The outermost frame of the greenlet ``frame`` belongs to (each
    greenlet's frames end at its own first frame)."""
    while frame is not None and frame.f_back is not None:
        frame = frame.f_back
    return frame


class Peer:
    """A profiler as the benchmarks drive it.

    ``start_run()`` and ``stop_run()`` bracket a whole workload run;
    ``begin()`` and ``end()`` bracket one request, in the request's greenlet
    (or with the greenlet to profile as ``target``). After ``stop_run()``,
    ``estimate()`` says how much time the profile shows for a function.
    """

    name = ""
    #: False: the profiler sees the whole process (``begin`` only notes the
    #: greenlet); estimates are then the whole process's.
    per_request = True
    #: False: it keeps no profile at all (the baselines).
    profiles = True
    #: False: its estimates are for the whole process, not one greenlet.
    separates_greenlets = True
    #: Records that arrived after their request ended (a tracer left behind).
    orphans = 0

    def start_run(self, concurrency: int = 1) -> None:
        """Before a run; ``concurrency``: requests profiled at once."""

    def stop_run(self) -> None:
        """After a run."""

    def begin(self, target: greenlet.greenlet | None = None, keep: bool = False) -> Session:
        """Profile ``target`` (default: the calling greenlet); ``keep``: hold
        on to what ``estimate()`` needs."""
        return Session(target or greenlet.getcurrent())

    def end(self, session: Session) -> Outcome:
        return Outcome(session.records, session.foreign)

    def estimate(self, session: Session, function: str, on_cpu: bool) -> float:
        """Seconds the profile shows ``function`` on the stack (on- or
        off-CPU where the profiler tells them apart)."""
        return 0.0


class Unprofiled(Peer):
    name = "unprofiled"
    profiles = False


class NoopTracer(Peer):
    """A greenlet tracer that does nothing: what watching switches costs at least."""

    name = "no-op tracer"
    per_request = False
    profiles = False

    def start_run(self, concurrency: int = 1) -> None:
        self._previous = greenlet.settrace(_noop)

    def stop_run(self) -> None:
        greenlet.settrace(self._previous)


def _noop(event: str, args: Any) -> None:
    return None


class StrippedRecorder(Peer):
    """Not a profiler: the least a pure-Python recorder can do and still keep
    a request's whole stack at each switch-out and read it back, as a
    reference for how much of greenprof's cost is its own work.

    It records into a list per watched greenlet, with no limit on records
    and nothing counted; holds the frame under the one that began the
    request, where its walks stop (greenprof may hold no frame: it finds
    that frame by a node in its ``f_trace``); formats a stack through one
    dict keyed by its top frame and length; and reads back objects of four
    slots (greenprof's have nine, and a session record). Its tracer replaces
    any other. ``begin()`` must be called from the request's own frame.
    """

    name = "stripped recorder, kept, read"

    def start_run(self, concurrency: int = 1) -> None:
        watched: dict[greenlet.greenlet, tuple[list[Any], types.FrameType | None, Any]] = {}
        self._watched = watched
        get = watched.get
        now = time.perf_counter_ns

        def trace(event: str, args: Any) -> None:
            if event == "switch" or event == "throw":
                origin, target = args
                entry = get(origin)
                if entry is not None:
                    frame = origin.gr_frame
                    root = entry[1]
                    pairs: list[Any] = []
                    append = pairs.append
                    while frame is not None and frame is not root:
                        append(frame.f_code)
                        append(frame.f_lasti)
                        frame = frame.f_back
                    entry[0].append((1, now(), tuple(pairs)))
                entry = get(target)
                if entry is not None:
                    entry[0].append((2, now(), None))

        self._previous = greenlet.settrace(trace)

    def stop_run(self) -> None:
        greenlet.settrace(self._previous)

    def begin(self, target: greenlet.greenlet | None = None, keep: bool = False) -> Session:
        glet = greenlet.getcurrent()
        caller = sys._getframe(1)
        root = caller.f_back
        below: list[Any] = []
        frame = root
        while frame is not None:
            below.append(frame.f_code)
            below.append(frame.f_lasti)
            frame = frame.f_back
        records = [(0, time.perf_counter_ns(), (caller.f_code, caller.f_lasti))]
        self._watched[glet] = (records, root, tuple(below))
        return Session(glet)

    def end(self, session: Session) -> Outcome:
        glet = session.glet
        records, _, below = self._watched.pop(glet)
        caller = sys._getframe(1)
        records.append((3, time.perf_counter_ns(), (caller.f_code, caller.f_lasti)))
        under = _stripped_format(below)
        mine = id(glet)
        snapshots = []
        stack: tuple[Any, ...] = ()
        for event, when, pairs in records:
            snapshot = _StrippedSnapshot()
            snapshot.event = event
            snapshot.time_ns = when
            snapshot.greenlet_id = mine
            if pairs is not None:  # a switch-in shares its switch-out's stack
                stack = _stripped_format(pairs) + under
            snapshot.stack = stack
            snapshots.append(snapshot)
        _read(session, snapshots)  # as Greenprof.end reads greenprof's
        return super().end(session)


class StrippedDropper(StrippedRecorder):
    """``StrippedRecorder`` for a session that is dropped unread (a
    ``min_duration`` session of a quick request): it records the same, but
    for the record where the request ends, and lets the records go at
    ``end()``."""

    name = "stripped recorder, dropped"

    def end(self, session: Session) -> Outcome:
        del self._watched[session.glet]
        return Outcome()


def _read(session: Session, snapshots: list[Any]) -> None:
    """Read a request's snapshots (greenprof's, or the stripped recorder's)
    into ``session``: how many, how many of another greenlet, the deepest."""
    mine = id(session.glet)
    session.records = len(snapshots)
    session.foreign = sum(s.greenlet_id != mine for s in snapshots)
    session.deepest = max((len(s.stack) for s in snapshots), default=0)


class _StrippedSnapshot:
    __slots__ = ("event", "greenlet_id", "stack", "time_ns")


#: StrippedRecorder's formatted stacks: (id(top code), top offset, length)
#: -> (raw pairs, formatted), compared on a hit (no code object is hashed).
_stripped_stacks: dict[tuple[int, ...], tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
_stripped_lines: dict[tuple[int, int], int] = {}


def _stripped_format(pairs: tuple[Any, ...]) -> tuple[Any, ...]:
    key = (id(pairs[0]), pairs[1], len(pairs)) if pairs else ()
    hit = _stripped_stacks.get(key)
    if hit is not None and hit[0] == pairs:
        return hit[1]
    formatted = tuple(
        (code.co_filename, getattr(code, "co_qualname", code.co_name), _stripped_line(code, offset))
        for code, offset in zip(pairs[0::2], pairs[1::2], strict=True)
    )
    _stripped_stacks[key] = (pairs, formatted)
    return formatted


def _stripped_line(code: types.CodeType, offset: int) -> int:
    key = (id(code), offset)
    line = _stripped_lines.get(key)
    if line is None:
        line = next((ln or 0 for start, end, ln in code.co_lines() if start <= offset < end), 0)
        _stripped_lines[key] = line
    return line


class Greenprof(Peer):
    def __init__(
        self, mode: str, dump_period: float = DUMP_PERIOD, name: str = "", **options: Any
    ) -> None:
        self.mode = mode
        self.name = name or f"greenprof {mode}"
        self.dump_period = dump_period
        self.options = options
        self._scope: greenprof.ProfileScope | None = None

    def begin(self, target: greenlet.greenlet | None = None, keep: bool = False) -> Session:
        # One scope (options, sinks, clock made once) for all requests, as
        # profile() and ProfilerMiddleware do.
        if self._scope is None:
            self._scope = greenprof.profile(
                mode=self.mode, dump_period=self.dump_period, **self.options
            )
        profiler = self._scope.start(target)
        return Session(target or greenlet.getcurrent(), profiler)

    def end(self, session: Session) -> Outcome:
        profiler: greenprof.Profiler = session.data
        profiler.stop()
        _read(session, profiler.snapshots)
        return super().end(session)

    def estimate(self, session: Session, function: str, on_cpu: bool) -> float:
        report = session.kept[0] if session.kept else None
        if report is None:
            report = session.data.report()
            session.kept.append(report)
        return report.total_ns(id(session.glet), function, on_cpu=on_cpu) / 1e9


class _TraceContext:
    """What SkyWalking's profilers read of a ``SpanContext``.

    A real ``SpanContext()`` needs no running agent, but it costs about 12 us
    to build (uuid-based segment ids): that is tracing, which a SkyWalking
    user pays anyway, not profiling, so it is left out of the profiler's bill.
    """

    def __init__(self, create_time: int) -> None:
        self.create_time = create_time
        self.profile_status: Any = None


class _NoTaskService:
    """Stands in for the agent's ProfileTaskExecutionService (no OAP to notify)."""

    def stop_current_profile_task(self, context: Any) -> None:
        return None


class _FramesSpy:
    """``sys`` as ThreadProfiler sees it, remembering the frames it sampled so
    that each sample can be labelled with the greenlet that was running."""

    def __init__(self) -> None:
        self.last: dict[int, types.FrameType] = {}

    def _current_frames(self) -> dict[int, types.FrameType]:
        self.last = sys._current_frames()
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)


class _SkyWalking(Peer):
    """SkyWalking's profilers; the subclass picks the thread model."""

    thread_model = ""

    def __init__(self, dump_period: float = DUMP_PERIOD) -> None:
        self.period_ms = round(dump_period * 1000)
        self.orphans = 0
        self._open: dict[str, Session] = {}
        self._ids = itertools.count()
        self.queue: queue.Queue[Any] = queue.Queue()

    def start_run(self, concurrency: int = 1) -> None:
        from skywalking import config, profile
        from skywalking.agent import agent
        from skywalking.profile import profile_context
        from skywalking.profile.profile_task import ProfileTask
        from skywalking.utils.time import current_milli_time

        self._now_ms = current_milli_time
        self._module = profile_context
        self._saved = (
            config.agent_profile_max_parallel,
            profile_context.THREAD_MODEL,
            profile.profile_task_execution_service,
            profile_context.sys,
            greenlet.gettrace(),
        )
        # SkyWalking profiles at most 5 segments at once by default; raise
        # the cap so that every request in flight is profiled.
        config.agent_profile_max_parallel = max(concurrency, 1)
        # Chosen at import from gevent.monkey; the benchmark picks it.
        profile_context.THREAD_MODEL = self.thread_model
        profile.profile_task_execution_service = _NoTaskService()
        self._spy = _FramesSpy()
        if self.thread_model == "thread":
            profile_context.sys = self._spy
        agent.add_profiling_snapshot = self._collect  # an instance attribute: undone below
        self._agent = agent
        self.orphans = 0
        self._open.clear()
        self.queue = queue.Queue()
        task = ProfileTask(
            task_id="bench",
            first_span_op_name=OPERATION,
            duration=10,
            min_duration_threshold=0,
            thread_dump_period=self.period_ms,
            max_sampling_count=1 << 62,
            start_time=current_milli_time(),
            create_time=current_milli_time(),
        )
        self.context = profile_context.ProfileTaskExecutionContext(task)
        self.context.start_profiling()

    def stop_run(self) -> None:
        from skywalking import config, profile

        self.context.stop_profiling()
        thread = self.context._profiling_thread
        if thread is not None:
            thread.join()
        del self._agent.add_profiling_snapshot
        (
            config.agent_profile_max_parallel,
            self._module.THREAD_MODEL,
            profile.profile_task_execution_service,
            self._module.sys,
            trace,
        ) = self._saved
        # GreenletProfiler.stop_profiling restores whatever tracer it found at
        # its start, which may be another request's callback by then.
        greenlet.settrace(trace)
        while not self.queue.empty():
            self.queue.get_nowait()

    def begin(self, target: greenlet.greenlet | None = None, keep: bool = False) -> Session:
        glet = target or greenlet.getcurrent()
        trace = _TraceContext(self._now_ms())
        segment = f"segment-{next(self._ids)}"
        frame = glet.gr_frame if target is not None else sys._getframe()
        session = Session(glet, (trace, _root(frame), threading.get_ident(), segment))
        if keep:
            session.kept.append([])
        self._open[segment] = session
        if target is None or self.thread_model == "thread":
            trace.profile_status = self.context.attempt_profiling(trace, segment, OPERATION)
        else:  # what attempt_profiling does in the greenlet model, for another greenlet
            profiler = self._module.GreenletProfiler(
                trace_context=trace,
                segment_id=segment,
                profiling_thread=glet,
                profile_context=self.context,
            )
            profiler.start_profiling(self.context)
            self.context._current_profiling_cnt.add_and_get(1)
            slots = self.context.profiling_segment_slots
            for index in range(slots.length()):
                if slots.compare_and_set(index, None, profiler):
                    break
            trace.profile_status = profiler.profile_status
        return session

    def end(self, session: Session) -> Outcome:
        self.context.stop_tracing_profile(session.data[0])
        del self._open[session.data[3]]  # what it records from now on is an orphan
        return super().end(session)

    def _collect(self, snapshot: Any) -> None:
        """``agent.add_profiling_snapshot``: label, count, and queue it."""
        session = self._open.get(snapshot.trace_segment_id)
        if session is None:
            self.orphans += 1
        else:
            session.records += 1
            session.foreign += self._is_foreign(session)
            session.deepest = max(session.deepest, len(snapshot.stack_list))
            if session.kept:
                session.kept[0].append(snapshot)
        self.queue.put(snapshot)

    def _is_foreign(self, session: Session) -> bool:
        raise NotImplementedError

    def estimate(self, session: Session, function: str, on_cpu: bool) -> float:
        """What SkyWalking's OAP shows for ``function``: over the snapshots
        holding it, sorted by sequence, each run of consecutive sequence
        numbers counts from its first dump time to its last
        (``ProfileStackNode.calculateDuration``)."""
        snapshots = sorted(session.kept[0], key=lambda s: s.sequence) if session.kept else []
        needle = f".{function}: "
        total = 0
        first = last = None
        for snapshot in snapshots:
            if not any(needle in sig for sig in snapshot.stack_list):
                continue
            if last is not None and snapshot.sequence == last.sequence + 1:
                last = snapshot
                continue
            if first is not None and last is not None:
                total += last.time - first.time
            first = last = snapshot
        if first is not None and last is not None:
            total += last.time - first.time
        return total / 1000


class SkyWalkingGreenlet(_SkyWalking):
    """``GreenletProfiler``: ``traceback.extract_stack`` at every switch of the greenlet."""

    name = "SkyWalking greenlet"
    thread_model = "greenlet"

    def _is_foreign(self, session: Session) -> bool:
        # Called inside its switch callback. It extracted ``glet.gr_frame``,
        # or, when that is None, the stack of whatever runs now: the greenlet
        # itself when switching in, the next one when it has just finished.
        glet = session.glet
        return glet.gr_frame is None and greenlet.getcurrent() is not glet


class SkyWalkingThread(_SkyWalking):
    """``ThreadProfiler``: its ``ProfileThread`` samples the OS thread every period."""

    name = "SkyWalking thread"
    thread_model = "thread"

    def _is_foreign(self, session: Session) -> bool:
        _, root, ident, _ = session.data
        return _root(self._spy.last.get(ident)) is not root


class Yappi(Peer):
    """yappi with ``set_context_backend("greenlet")``, for the whole process."""

    per_request = False

    def __init__(self, clock: str) -> None:
        self.clock = clock
        self.name = f"yappi {clock}"
        self._stats: dict[int, dict[str, float]] = {}

    def start_run(self, concurrency: int = 1) -> None:
        import yappi

        yappi.clear_stats()
        yappi.set_context_backend("greenlet")
        yappi.set_clock_type(self.clock)
        self._stats = {}
        yappi.start()

    def stop_run(self) -> None:
        import yappi

        yappi.stop()

    def estimate(self, session: Session, function: str, on_cpu: bool) -> float:
        import yappi

        ctx = getattr(session.glet, "_yappi_tid", None)
        if ctx is None:
            return 0.0
        if ctx not in self._stats:
            totals: dict[str, float] = {}
            for stat in yappi.get_func_stats(ctx_id=ctx):
                totals[stat.name] = totals.get(stat.name, 0.0) + stat.ttot
            self._stats[ctx] = totals
        return self._stats[ctx].get(function, 0.0)


class CProfile(Peer):
    """cProfile, the deterministic reference, for the whole process (thread)."""

    name = "cProfile"
    per_request = False
    separates_greenlets = False

    def start_run(self, concurrency: int = 1) -> None:
        self.profile = cProfile.Profile()
        self._totals: dict[str, float] | None = None
        self.profile.enable()

    def stop_run(self) -> None:
        self.profile.disable()

    def estimate(self, session: Session, function: str, on_cpu: bool) -> float:
        if self._totals is None:
            self._totals = {}
            stats: dict[Any, Any] = pstats.Stats(self.profile).stats  # type: ignore[attr-defined]
            for (_, _, name), (_, _, _, cumulative, _) in stats.items():
                self._totals[name] = self._totals.get(name, 0.0) + cumulative
        return self._totals.get(function, 0.0)


class Pyinstrument(Peer):
    """pyinstrument, async mode off, one ``Profiler`` per request."""

    name = "pyinstrument"

    def begin(self, target: greenlet.greenlet | None = None, keep: bool = False) -> Session:
        glet = target or greenlet.getcurrent()
        profiler = _labelled_pyinstrument()(glet)
        profiler.start()
        return Session(glet, profiler)

    def end(self, session: Session) -> Outcome:
        profiler = session.data
        recorded = profiler.stop()
        session.kept.append(recorded)
        session.records = profiler.own + profiler.foreign
        session.foreign = profiler.foreign
        session.deepest = max((len(stack) for stack, _ in recorded.frame_records), default=0)
        return super().end(session)

    def estimate(self, session: Session, function: str, on_cpu: bool) -> float:
        return sum(_frame_times(session.kept[0].root_frame(), function))


def _frame_times(frame: Any, function: str) -> Iterator[float]:
    """Time of the outermost frames named ``function`` in a pyinstrument tree."""
    if frame is None:
        return
    if frame.function == function:
        yield frame.time
        return
    for child in frame.children:
        yield from _frame_times(child, function)


@functools.cache
def _labelled_pyinstrument() -> Any:
    """A pyinstrument Profiler that also counts which greenlet each sample saw
    (through the subscriber hook it registers with its stack sampler)."""
    import pyinstrument

    class Labelled(pyinstrument.Profiler):  # type: ignore[misc]
        def __init__(self, glet: greenlet.greenlet) -> None:
            super().__init__(async_mode="disabled")
            self.glet = glet
            self.own = 0
            self.foreign = 0

        def _sampler_saw_call_stack(self, *args: Any) -> None:
            if greenlet.getcurrent() is self.glet:
                self.own += 1
            else:
                self.foreign += 1
            super()._sampler_saw_call_stack(*args)

    return Labelled


def make_peers(*, noop: bool = True, **greenprof_options: Any) -> list[Peer]:
    """Every profiler, in table order; ``greenprof_options`` go to each
    greenprof ``Profiler`` (``max_snapshots``, ``max_depth``)."""
    peers: list[Peer] = [Unprofiled()]
    if noop:
        peers.append(NoopTracer())
    peers += [
        Greenprof("greenlet", **greenprof_options),
        Greenprof("hybrid", **greenprof_options),
        Greenprof("thread", **greenprof_options),
        SkyWalkingGreenlet(),
        SkyWalkingThread(),
        Yappi("wall"),
        Yappi("cpu"),
        Pyinstrument(),
        CProfile(),
    ]
    return peers
