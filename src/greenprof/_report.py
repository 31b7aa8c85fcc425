"""Where time went: on-CPU and off-CPU time per stack and per greenlet.

Built from snapshots and the sessions they belong to, so a profile read back
from a file gives the same answers as the live one; merged per tag value
(``group_by``) to see where many requests spend their time.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Collection, Iterable, Mapping, Sequence

import attrs

from .snapshot import Frame, Session, Snapshot

__all__ = ["GreenletTime", "Report", "RunSlice", "Segment", "StackTime", "Wait"]

Stack = tuple[Frame, ...]

#: A thread-mode sample stands for this much on-CPU time when its session
#: is not known (snapshots without a session record: a schema 1 file).
_DEFAULT_DUMP_PERIOD_NS = 10_000_000


@attrs.frozen
class StackTime:
    """Time one greenlet spent with one exact stack."""

    greenlet_id: int
    greenlet_name: str
    stack: Stack
    on_cpu_ns: int = 0
    off_cpu_ns: int = 0


@attrs.frozen
class GreenletTime:
    """Totals for one greenlet over the session."""

    greenlet_id: int
    greenlet_name: str
    #: ``on_cpu_ns + off_cpu_ns``: the time the session watched it live.
    wall_ns: int
    on_cpu_ns: int
    off_cpu_ns: int
    #: Times it was switched to (``switch_in`` and ``throw``).
    switches_in: int
    #: Times it switched away (``switch_out``; the final ``exit`` not counted).
    switches_out: int
    samples: int


@attrs.frozen
class RunSlice:
    """One stretch a greenlet ran without yielding: switch-in to switch-out."""

    greenlet_id: int
    greenlet_name: str
    start_ns: int
    duration_ns: int
    #: Where it resumed (empty for its first run or when unknown).
    start_stack: Stack
    #: Where it yielded (empty when it finished or when the session's end,
    #: as recorded, cut it; the ``stop`` stack when it stopped the session).
    end_stack: Stack
    samples: int
    #: The session it ran in (not part of equality).
    session_id: str = attrs.field(default="", eq=False)


@attrs.frozen
class Wait:
    """One suspension of a greenlet: switch-out to the next switch-in."""

    greenlet_id: int
    greenlet_name: str
    start_ns: int
    duration_ns: int
    #: The wait site: the stack it switched out from.
    stack: Stack
    #: The session it waited in (not part of equality).
    session_id: str = attrs.field(default="", eq=False)


@attrs.frozen
class Segment:
    """A stretch of one greenlet's time given to one stack: what a timeline
    (speedscope's Time Order, Perfetto) shows, moment by moment."""

    greenlet_id: int
    greenlet_name: str
    start_ns: int
    duration_ns: int
    stack: Stack
    #: True: it ran (on-CPU); False: it waited there (off-CPU).
    on_cpu: bool
    #: The session it belongs to (not part of equality).
    session_id: str = attrs.field(default="", eq=False)


@attrs.define
class _Cell:
    on_cpu_ns: int = 0
    off_cpu_ns: int = 0


@attrs.define
class _Walk:
    """One greenlet's state while its snapshots are replayed."""

    name: str
    session_id: str = ""
    running_since: int | None = None
    resumed_stack: Stack = ()
    samples_in_slice: list[Snapshot] = attrs.Factory(list)
    waiting_since: int | None = None
    wait_stack: Stack = ()
    on_cpu_ns: int = 0
    off_cpu_ns: int = 0
    switches_in: int = 0
    switches_out: int = 0
    samples: int = 0


@attrs.frozen
class _Replay:
    """How one session's snapshots are replayed."""

    bounds: Mapping[int, tuple[int, int]]
    running_at_start: Collection[int]
    dump_period_ns: int
    #: Thread mode records samples only: a greenlet without samples was not
    #: seen, rather than running or waiting the whole session.
    samples_only: bool = False


class Report:
    """Time attribution for recorded sessions; see README.rst, "Time".

    Rules, per greenlet, from its snapshots in order:

    - Off-CPU: from a ``switch_out`` to the next ``switch_in``/``throw`` the
      greenlet waited; that time goes to the switch-out stack, its exact wait
      site.
    - On-CPU: from a ``switch_in``/``throw``/``start`` to the next
      ``switch_out``/``exit``/``stop`` it ran (a *run slice*). With samples
      inside the slice (``hybrid`` mode), each sample's stack gets the time
      from the midpoint with the sample before it to the midpoint with the
      sample after it; the first sample also gets the time from the slice's
      start, the last one the time to its end. Without samples the whole
      slice goes to the stack it switched out from; a slice that ends in
      ``exit`` or at the session's stop goes to the stack it resumed in (the
      ``start`` stack for a greenlet the session started in).
    - A greenlet with samples only (``thread`` mode: no switches are
      recorded) gets one dump period of on-CPU time per sample, to the
      sample's stack; bounds do not apply to it.
    - With the session's bounds, a greenlet running when the session started
      counts from the start, and one running or waiting when it stopped
      counts to the stop. A profiled greenlet that never switched ran (those
      in ``running_at_start``) or waited the whole session, with an empty
      stack: greenlet mode cannot see inside it (hybrid mode can). Not in
      thread mode, which records samples only.
    - Each session (``session_id``) is replayed on its own, with its own
      bounds and dump period (from ``sessions``); totals of a greenlet seen
      in several sessions add up. Snapshots of a session with no
      :class:`~greenprof.Session` (a schema 1 file, or a session still
      running when the file was written) are replayed with ``bounds``,
      ``running_at_start`` and ``dump_period_ns``, or without bounds: from
      their first snapshot to their last.

    ``timeline=False`` leaves :attr:`segments` empty: for a report that only
    adds time up (each request's, in continuous profiling), a third cheaper.
    """

    def __init__(
        self,
        snapshots: Iterable[Snapshot],
        *,
        sessions: Iterable[Session] = (),
        bounds: Mapping[int, tuple[int, int]] | None = None,
        running_at_start: Collection[int] = (),
        dump_period_ns: int = _DEFAULT_DUMP_PERIOD_NS,
        timeline: bool = True,
    ) -> None:
        #: False: :attr:`segments` stays empty (a report that only adds up time).
        self._timeline = timeline
        self.snapshots: list[Snapshot] = sorted(
            snapshots, key=lambda s: (s.timestamp_ns, s.sequence)
        )
        known: dict[str, Session] = {}
        for session in sessions:
            known[session.session_id] = session  # the last record of a session wins
        #: The sessions, in the order they started.
        self.sessions: list[Session] = sorted(
            known.values(), key=lambda s: (s.start_ns, s.session_id)
        )
        #: The label of a merged report (see :meth:`merged`), else None.
        self.merged_as: str | None = None
        #: For a merged report, the report it merged (timelines need its greenlets).
        self.unmerged: Report | None = None
        self._cells: dict[tuple[int, Stack], _Cell] = {}
        self._names: dict[int, str] = {}
        #: Every run slice, in time order.
        self.slices: list[RunSlice] = []
        #: Every suspension, in time order.
        self.waits: list[Wait] = []
        #: Every stretch of time given to a stack, in time order.
        self.segments: list[Segment] = []
        self.greenlets: dict[int, GreenletTime] = {}
        legacy = _Replay(dict(bounds or {}), running_at_start, dump_period_ns)
        replays = {
            session_id: _Replay(
                s.bounds, s.running_at_start, s.dump_period_ns, samples_only=s.mode == "thread"
            )
            for session_id, s in known.items()
        }
        # Sessions are replayed apart: a file may hold many (one per request),
        # and a greenlet id may come back in a later one.
        by_session: dict[tuple[str, int], list[Snapshot]] = {}
        for snapshot in self.snapshots:
            by_session.setdefault((snapshot.session_id, snapshot.greenlet_id), []).append(snapshot)
            self._names[snapshot.greenlet_id] = snapshot.greenlet_name
        for (session_id, greenlet_id), events in by_session.items():
            self._replay(greenlet_id, session_id, events, replays.get(session_id, legacy))
        # Profiled greenlets that recorded nothing still ran or waited.
        for session_id, replay in replays.items():
            if not replay.samples_only:
                self._silent_ones(session_id, replay, {g for s, g in by_session if s == session_id})
        self._silent_ones("", legacy, {greenlet_id for _, greenlet_id in by_session})
        self.slices.sort(key=lambda s: s.start_ns)
        self.waits.sort(key=lambda w: w.start_ns)
        self.segments.sort(key=lambda s: s.start_ns)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Report:
        """The report of a file written by :class:`~greenprof.sinks.JSONSink`
        (or by ``greenprof run``): the same numbers as each session's live
        ``profiler.report()``, for one session or many."""
        from ._schema import read

        recording = read(path)
        return cls(recording.snapshots, sessions=recording.sessions)

    # -- results ------------------------------------------------------------------

    @property
    def stacks(self) -> list[StackTime]:
        """Per greenlet and exact stack, on-CPU and off-CPU nanoseconds."""
        return [
            StackTime(gid, self._names[gid], stack, cell.on_cpu_ns, cell.off_cpu_ns)
            for (gid, stack), cell in self._cells.items()
        ]

    def longest_slices(self, count: int = 10) -> list[RunSlice]:
        """The ``count`` longest stretches without a yield: what blocked the loop."""
        return sorted(self.slices, key=lambda s: -s.duration_ns)[:count]

    def self_ns(self, greenlet_id: int, function: str, *, on_cpu: bool = True) -> int:
        """Time of ``greenlet_id`` with ``function`` (``Frame.function``) as
        the innermost frame: time spent in it, not in what it called."""
        return sum(
            (t.on_cpu_ns if on_cpu else t.off_cpu_ns)
            for t in self.stacks
            if t.greenlet_id == greenlet_id and t.stack and t.stack[-1].function == function
        )

    def total_ns(self, greenlet_id: int, function: str, *, on_cpu: bool = True) -> int:
        """Time of ``greenlet_id`` with ``function`` anywhere on the stack."""
        return sum(
            (t.on_cpu_ns if on_cpu else t.off_cpu_ns)
            for t in self.stacks
            if t.greenlet_id == greenlet_id and any(f.function == function for f in t.stack)
        )

    def label_of(self, snapshot: Snapshot) -> tuple[int, str]:
        """``(greenlet_id, greenlet_name)`` under which this report shows
        ``snapshot``: its own, or the merged report's."""
        if self.merged_as is not None:
            return 0, self.merged_as
        return snapshot.greenlet_id, snapshot.greenlet_name

    # -- selecting and merging ----------------------------------------------------

    def where(
        self,
        tags: Mapping[str, str] | None = None,
        *,
        min_duration_ns: int = 0,
    ) -> Report:
        """The report of the sessions whose tags include ``tags`` and that
        lasted at least ``min_duration_ns``. Snapshots of sessions without a
        :class:`~greenprof.Session` are left out by any condition."""
        wanted = dict(tags or {})
        if not wanted and not min_duration_ns:
            return self
        chosen = [
            s
            for s in self.sessions
            if all(s.tags.get(key) == value for key, value in wanted.items())
            and s.duration_ns >= min_duration_ns
        ]
        return self._subset(chosen)

    def split_by(self, tag: str, *, missing: str | None = None) -> dict[str, Report]:
        """One report per value of ``tag`` (greenlets kept apart), heaviest
        first. Sessions without the tag, and snapshots without a session,
        go under ``missing`` (left out when it is None)."""
        values: dict[str, list[Session]] = {}
        for session in self.sessions:
            value = session.tags.get(tag, missing)
            if value is not None:
                values.setdefault(value, []).append(session)
        parts = {value: self._subset(chosen) for value, chosen in values.items()}
        if missing is not None:
            known = {s.session_id for s in self.sessions}
            orphans = [s for s in self.snapshots if s.session_id not in known]
            if orphans:
                chosen = values.get(missing, [])
                ids = {s.session_id for s in chosen}
                parts[missing] = Report(
                    [*orphans, *(s for s in self.snapshots if s.session_id in ids)],
                    sessions=chosen,
                    timeline=self._timeline,
                )
        return dict(sorted(parts.items(), key=lambda item: (-_weight(item[1]), item[0])))

    def group_by(self, tag: str, *, missing: str | None = None) -> dict[str, Report]:
        """One merged report per value of ``tag``, heaviest first.

        Each merges every session with that value (see :meth:`merged`):
        stacks of all its greenlets and sessions add up into one tree,
        rooted at the program's outermost frame, named ``tag=value``.
        Sessions without the tag (and snapshots without a session) are left
        out, or merged under the value ``missing`` when it is given.
        """
        return {
            value: part.merged(f"{tag}={value}")
            for value, part in self.split_by(tag, missing=missing).items()
        }

    def merged(self, name: str) -> Report:
        """This report with every greenlet folded into one, named ``name``
        (``greenlet_id`` 0): the time of equal stacks adds up, whichever
        greenlet and session spent it. ``unmerged`` keeps this report."""
        merged = Report((), timeline=self._timeline)
        merged.snapshots = self.snapshots
        merged.sessions = self.sessions
        merged.merged_as = name
        merged.unmerged = self
        merged._names = {0: name}
        for (_, stack), cell in self._cells.items():
            into = merged._cells.get((0, stack))
            if into is None:
                into = merged._cells[(0, stack)] = _Cell()
            into.on_cpu_ns += cell.on_cpu_ns
            into.off_cpu_ns += cell.off_cpu_ns
        merged.slices = [attrs.evolve(s, greenlet_id=0, greenlet_name=name) for s in self.slices]
        merged.waits = [attrs.evolve(w, greenlet_id=0, greenlet_name=name) for w in self.waits]
        merged.segments = [
            attrs.evolve(s, greenlet_id=0, greenlet_name=name) for s in self.segments
        ]
        totals = self.greenlets.values()
        if totals:
            merged.greenlets = {
                0: GreenletTime(
                    greenlet_id=0,
                    greenlet_name=name,
                    wall_ns=sum(g.wall_ns for g in totals),
                    on_cpu_ns=sum(g.on_cpu_ns for g in totals),
                    off_cpu_ns=sum(g.off_cpu_ns for g in totals),
                    switches_in=sum(g.switches_in for g in totals),
                    switches_out=sum(g.switches_out for g in totals),
                    samples=sum(g.samples for g in totals),
                )
            }
        return merged

    def _subset(self, sessions: Sequence[Session]) -> Report:
        ids = {s.session_id for s in sessions}
        return Report(
            (s for s in self.snapshots if s.session_id in ids),
            sessions=sessions,
            timeline=self._timeline,
        )

    # -- replay --------------------------------------------------------------------

    def _add(
        self,
        walk: _Walk,
        greenlet_id: int,
        stack: Stack,
        start: int,
        duration: int,
        *,
        on_cpu: bool,
        timeline: int | None = None,
    ) -> None:
        """Give ``duration`` ns from ``start`` to ``stack``; ``timeline``: how
        much of it the timeline shows, when less (thread-mode samples)."""
        cell = self._cells.get((greenlet_id, stack))
        if cell is None:
            cell = self._cells[(greenlet_id, stack)] = _Cell()
        if on_cpu:
            cell.on_cpu_ns += duration
        else:
            cell.off_cpu_ns += duration
        shown = duration if timeline is None else timeline
        if shown and self._timeline:
            self.segments.append(
                Segment(greenlet_id, walk.name, start, shown, stack, on_cpu, walk.session_id)
            )

    def _replay(
        self, greenlet_id: int, session_id: str, events: Sequence[Snapshot], replay: _Replay
    ) -> None:
        walk = _Walk(self._names[greenlet_id], session_id)
        period = replay.dump_period_ns
        if all(snapshot.event == "sample" for snapshot in events):
            # Thread mode: no switches, each sample stands for one period. On
            # a timeline, until the next sample at most (a late sampler takes
            # two close together).
            nexts = [s.timestamp_ns for s in events[1:]]
            for snapshot, after in itertools.zip_longest(events, nexts):
                at = snapshot.timestamp_ns
                shown = period if after is None else max(0, min(period, after - at))
                self._add(
                    walk, greenlet_id, snapshot.stack, at, period, on_cpu=True, timeline=shown
                )
            walk.samples = len(events)
            walk.on_cpu_ns = len(events) * period
            self._total(greenlet_id, walk)
            return
        start, stop = replay.bounds.get(greenlet_id, (0, 0))
        first = events[0]
        if first.event in ("switch_out", "exit", "sample", "stop"):
            walk.running_since = start or first.timestamp_ns
        elif first.event != "start" and first.stack and start:
            walk.waiting_since = start
            walk.wait_stack = first.stack
        stopped = False
        for snapshot in events:
            now = snapshot.timestamp_ns
            kind = snapshot.event
            if kind == "sample":
                walk.samples += 1
                if walk.running_since is None:
                    # Only a sample taken while it waited (it cannot run
                    # then): it stands for one period, like a thread-mode
                    # one, and takes no room on a timeline (it waited then).
                    stack = snapshot.stack
                    self._add(walk, greenlet_id, stack, now, period, on_cpu=True, timeline=0)
                    walk.on_cpu_ns += period
                else:
                    walk.samples_in_slice.append(snapshot)
            elif kind in ("switch_in", "throw", "start"):
                if kind != "start":
                    walk.switches_in += 1
                self._end_wait(greenlet_id, walk, now)
                walk.running_since = now
                walk.resumed_stack = snapshot.stack
            elif kind == "switch_out":
                walk.switches_out += 1
                self._end_slice(greenlet_id, walk, now, snapshot.stack, snapshot.stack)
                walk.waiting_since = now
                walk.wait_stack = snapshot.stack
            else:  # exit, stop: the slice goes to where it resumed
                yielded = snapshot.stack if kind == "stop" else ()
                self._end_slice(greenlet_id, walk, now, self._last_stack(walk), yielded)
                stopped = kind == "stop"
        if stop and not stopped:
            self._end_slice(greenlet_id, walk, stop, self._last_stack(walk), ())
            self._end_wait(greenlet_id, walk, stop)
        self._total(greenlet_id, walk)

    @staticmethod
    def _last_stack(walk: _Walk) -> Stack:
        """Where a slice that did not yield is taken to have run: its last
        sample, else where it resumed."""
        samples = walk.samples_in_slice
        return (samples[-1].stack if samples else ()) or walk.resumed_stack

    def _silent_ones(self, session_id: str, replay: _Replay, seen: set[int]) -> None:
        """The greenlets of ``replay``'s bounds with no snapshot in ``seen``:
        profiled, but they never switched (and were not sampled), so they
        ran, or waited, the whole session, at a stack the snapshots do not
        show."""
        for greenlet_id, (start, stop) in replay.bounds.items():
            if start and stop and greenlet_id not in seen:
                running = greenlet_id in replay.running_at_start
                self._silent(greenlet_id, session_id, start, stop, running=running)

    def _silent(
        self, greenlet_id: int, session_id: str, start: int, stop: int, *, running: bool
    ) -> None:
        self._names.setdefault(greenlet_id, "")
        walk = _Walk(self._names[greenlet_id], session_id)
        if running:
            walk.running_since = start
            self._end_slice(greenlet_id, walk, stop, (), ())
        else:
            walk.waiting_since = start
            self._end_wait(greenlet_id, walk, stop)
        self._total(greenlet_id, walk)

    def _total(self, greenlet_id: int, walk: _Walk) -> None:
        old = self.greenlets.get(greenlet_id)
        self.greenlets[greenlet_id] = GreenletTime(
            greenlet_id=greenlet_id,
            greenlet_name=walk.name,
            wall_ns=walk.on_cpu_ns + walk.off_cpu_ns + (old.wall_ns if old else 0),
            on_cpu_ns=walk.on_cpu_ns + (old.on_cpu_ns if old else 0),
            off_cpu_ns=walk.off_cpu_ns + (old.off_cpu_ns if old else 0),
            switches_in=walk.switches_in + (old.switches_in if old else 0),
            switches_out=walk.switches_out + (old.switches_out if old else 0),
            samples=walk.samples + (old.samples if old else 0),
        )

    def _end_wait(self, greenlet_id: int, walk: _Walk, now: int) -> None:
        if walk.waiting_since is not None:
            waited = max(0, now - walk.waiting_since)
            self._add(walk, greenlet_id, walk.wait_stack, walk.waiting_since, waited, on_cpu=False)
            walk.off_cpu_ns += waited
            self.waits.append(
                Wait(
                    greenlet_id,
                    walk.name,
                    walk.waiting_since,
                    waited,
                    walk.wait_stack,
                    walk.session_id,
                )
            )
            walk.waiting_since = None

    def _end_slice(
        self, greenlet_id: int, walk: _Walk, now: int, fallback: Stack, yielded: Stack
    ) -> None:
        start = walk.running_since
        if start is None:
            return
        samples = walk.samples_in_slice
        if samples:
            times = [s.timestamp_ns for s in samples]
            edges = [start, *((a + b) // 2 for a, b in itertools.pairwise(times)), now]
            for sample, (lo, hi) in zip(samples, itertools.pairwise(edges), strict=True):
                self._add(walk, greenlet_id, sample.stack, lo, max(0, hi - lo), on_cpu=True)
        else:
            self._add(walk, greenlet_id, fallback, start, max(0, now - start), on_cpu=True)
        duration = max(0, now - start)
        walk.on_cpu_ns += duration
        self.slices.append(
            RunSlice(
                greenlet_id=greenlet_id,
                greenlet_name=walk.name,
                start_ns=start,
                duration_ns=duration,
                start_stack=walk.resumed_stack,
                end_stack=yielded,
                samples=len(samples),
                session_id=walk.session_id,
            )
        )
        walk.running_since = None
        walk.samples_in_slice = []


def _weight(report: Report) -> int:
    return sum(g.wall_ns for g in report.greenlets.values())
