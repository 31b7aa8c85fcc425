"""Where time went: on-CPU and off-CPU time per stack and per greenlet.

Built from snapshots and the sessions they belong to, so a profile read back
from a file gives the same answers as the live one; merged per tag value
(``group_by``) to see where many requests spend their time.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from .exceptions import ConfigurationError
from .snapshot import Frame, Session, Snapshot

__all__ = ["GreenletTime", "Report", "RunSlice", "Segment", "StackTime", "Wait"]

Stack = tuple[Frame, ...]

#: A thread-mode sample stands for this much on-CPU time when its session
#: is not known (snapshots without a session record: a schema 1 file).
_DEFAULT_DUMP_PERIOD_NS = 10_000_000

#: Greenlets a streamed report keeps apart; those after them are merged as
#: they end, one entry per kind (see ``Report.streamed``).
MAX_GREENLETS: Final = 1_000
#: Kinds of merged greenlets; past that, one more entry takes the rest.
MAX_KINDS: Final = 100
#: Items a streamed report keeps in each of its timeline lists.
MAX_TIMELINE: Final = 10_000
#: Longest slices a streamed report keeps when its timeline is cut.
MAX_LONGEST: Final = 100


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
    greenlet_id: int = 0
    replay: _Replay | None = None
    #: Samples seen before anything else: a greenlet with samples only is
    #: replayed as thread mode's are (known only at its end, or at its
    #: first other event).
    pending: list[Snapshot] | None = attrs.Factory(list)
    #: Replayed as samples only (thread mode).
    samples_only: bool = False
    #: A thread-mode sample waiting for the next one (its timeline length).
    last_sample: Snapshot | None = None
    stopped: bool = False
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
        self._setup(sessions, bounds, running_at_start, dump_period_ns)
        self._timeline = timeline
        self.snapshots: list[Snapshot] = sorted(snapshots, key=_time_order)
        # Sessions are replayed apart: a file may hold many (one per request),
        # and a greenlet id may come back in a later one.
        by_session: dict[tuple[str, int], list[Snapshot]] = {}
        for snapshot in self.snapshots:
            by_session.setdefault((snapshot.session_id, snapshot.greenlet_id), []).append(snapshot)
            self._names[snapshot.greenlet_id] = snapshot.greenlet_name
        for (session_id, greenlet_id), events in by_session.items():
            self.greenlet_sessions.setdefault(greenlet_id, set()).add(session_id)
            walk = self._walk(greenlet_id, session_id)
            for snapshot in events:
                self._step(walk, snapshot)
            self._end(walk)
        self._finish({key[1] for key in by_session}, by_session)

    def _setup(
        self,
        sessions: Iterable[Session],
        bounds: Mapping[int, tuple[int, int]] | None,
        running_at_start: Collection[int],
        dump_period_ns: int,
    ) -> None:
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
        #: False: :attr:`segments` stays empty (a report that only adds time up).
        self._timeline = True
        #: ``greenlet_id`` -> the sessions it has snapshots in.
        self.greenlet_sessions: dict[int, set[str]] = {}
        #: A streamed report's timeline (``slices``, ``waits``, ``segments``),
        #: when cut (see :meth:`streamed`), holds everything that began before this.
        self.timeline_cut_ns: int | None = None
        #: A streamed report's: greenlets merged into one entry per kind.
        self.merged_greenlets = 0
        self._legacy = _Replay(dict(bounds or {}), running_at_start, dump_period_ns)
        self._replays = {
            session_id: _Replay(
                s.bounds, s.running_at_start, s.dump_period_ns, samples_only=s.mode == "thread"
            )
            for session_id, s in known.items()
        }
        self._stream: _Stream | None = None
        #: ``(greenlet_id, name, stack, exit with no stack)`` -> snapshots,
        #: when they are not kept (streamed, or merged from such a report).
        self._counts: dict[tuple[int, str, Stack, bool], int] | None = None

    def _finish(self, seen: Collection[int], by_session: Collection[tuple[str, int]]) -> None:
        # Profiled greenlets that recorded nothing still ran or waited.
        for session_id, replay in self._replays.items():
            if not replay.samples_only:
                self._silent_ones(session_id, replay, {g for s, g in by_session if s == session_id})
        self._silent_ones("", self._legacy, set(seen))
        self.slices.sort(key=lambda s: s.start_ns)
        self.waits.sort(key=lambda w: w.start_ns)
        self.segments.sort(key=lambda s: s.start_ns)

    @classmethod
    def streamed(
        cls,
        snapshots: Iterable[Snapshot],
        *,
        sessions: Iterable[Session],
        max_greenlets: int = MAX_GREENLETS,
        max_timeline: int = MAX_TIMELINE,
    ) -> Report:
        """The report of ``snapshots`` read once, in time order (as a run
        spooled them), keeping none of them: memory follows what it shows,
        not how long the program ran. The same numbers as ``Report(...)``
        for the same snapshots and ``sessions`` (all known before the
        first snapshot), within two bounds:

        - ``max_greenlets``: the first that many greenlets are kept apart.
          Each later one is merged, as it ends, into one entry per kind (its
          name without the address: ``Greenlet`` for every
          ``Greenlet-0x7f...``; past 100 kinds, ``other greenlets``), named
          with how many it holds; its time and stacks add up there.
          Greenlets still running at the end stay apart.
        - ``max_timeline``: the slices, waits and segments that timelines
          show (Chrome trace, speedscope's time order) are kept up to that
          many each; ``timeline_cut_ns`` then says up to when they are
          whole. Every total counts the whole run, and
          :meth:`longest_slices` too (up to 100 slices).

        ``snapshots`` stays empty: :meth:`counts` gives the snapshot counts
        per stack. Such a report cannot be split by tag (it is one program's
        run).
        """
        report = object.__new__(cls)
        report._setup(sessions, None, (), _DEFAULT_DUMP_PERIOD_NS)
        report.snapshots = []
        stream = report._stream = _Stream(max_greenlets, max_timeline)
        report._counts = stream.counts
        # The greenlets that may have run or waited silently (see _silent_ones).
        silent = {
            (session_id, greenlet_id)
            for session_id, replay in report._replays.items()
            for greenlet_id, (start, stop) in replay.bounds.items()
            if start and stop
        }
        seen: set[tuple[str, int]] = set()
        walks: dict[tuple[str, int], _Walk] = {}
        kept = stream.kept
        for snapshot in snapshots:
            greenlet_id = snapshot.greenlet_id
            key = (snapshot.session_id, greenlet_id)
            walk = walks.get(key)
            if walk is None:
                report._names[greenlet_id] = snapshot.greenlet_name
                report.greenlet_sessions.setdefault(greenlet_id, set()).add(snapshot.session_id)
                walk = walks[key] = report._walk(greenlet_id, snapshot.session_id)
                if len(kept) < max_greenlets:
                    kept.add(greenlet_id)
                if key in silent:
                    seen.add(key)
            stream.count(snapshot)
            report._step(walk, snapshot)
            if snapshot.event == "exit" and walk.pending is None and greenlet_id not in kept:
                # Past the greenlets kept apart: merged as it ends.
                del walks[key]
                report._end(walk)
                stream.fold(report, greenlet_id)
        for walk in walks.values():
            report._end(walk)
        report._finish((), seen | walks.keys())
        stream.name_folds(report)
        return report

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Report:
        """The report of a file written by :class:`~greenprof.sinks.JSONSink`
        (or by ``greenprof run``): the same numbers as each session's live
        ``profiler.report()``, for one session or many."""
        from ._schema import read

        recording = read(path)
        return cls(recording.snapshots, sessions=recording.sessions)

    # -- results ------------------------------------------------------------------

    def counts(self) -> dict[tuple[int, str, Stack, bool], int]:
        """Snapshots per ``(greenlet_id, greenlet_name, stack, is an exit
        with no stack)``, under :meth:`label_of`'s labels."""
        if self._counts is not None:
            return self._counts
        counts: dict[tuple[int, str, Stack, bool], int] = {}
        for snapshot in self.snapshots:
            stack = snapshot.stack
            key = (*self.label_of(snapshot), stack, not stack and snapshot.event == "exit")
            counts[key] = counts.get(key, 0) + 1
        return counts

    @property
    def first_snapshot_ns(self) -> int | None:
        """When the first snapshot was taken (None without any)."""
        if self._stream is not None:
            return self._stream.first_ns
        return self.snapshots[0].timestamp_ns if self.snapshots else None

    @property
    def last_snapshot_ns(self) -> int | None:
        """When the last snapshot was taken (None without any)."""
        if self._stream is not None:
            return self._stream.last_ns
        return self.snapshots[-1].timestamp_ns if self.snapshots else None

    @property
    def stacks(self) -> list[StackTime]:
        """Per greenlet and exact stack, on-CPU and off-CPU nanoseconds."""
        return [
            StackTime(gid, self._names[gid], stack, cell.on_cpu_ns, cell.off_cpu_ns)
            for (gid, stack), cell in self._cells.items()
        ]

    def longest_slices(self, count: int = 10) -> list[RunSlice]:
        """The ``count`` longest stretches without a yield: what blocked the loop."""
        stream = self._stream
        if stream is not None and self.timeline_cut_ns is not None:
            return sorted(stream.longest(), key=lambda s: -s.duration_ns)[:count]
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
        if missing is not None and self._stream is None:
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
        merged._stream = self._stream
        merged.timeline_cut_ns = self.timeline_cut_ns
        if self._counts is not None:
            merged._counts = {}
            for (_, _, stack, exited), count in self._counts.items():
                key = (0, name, stack, exited)
                merged._counts[key] = merged._counts.get(key, 0) + count
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
        if self._stream is not None:
            msg = (
                "a report streamed from a run keeps no snapshots to select sessions "
                "from: read the run's .jsonl with Report.from_file() to split it"
            )
            raise ConfigurationError(msg)
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
        stream = self._stream
        if stream is not None:
            stream.stack_of(greenlet_id, stack)
        shown = duration if timeline is None else timeline
        if shown and self._timeline and self._on_timeline(start, self.segments):
            self.segments.append(
                Segment(greenlet_id, walk.name, start, shown, stack, on_cpu, walk.session_id)
            )

    def _on_timeline(self, start: int, kept: list[Any]) -> bool:
        """Whether the timeline keeps one more item starting at ``start``:
        always, but in a streamed report past ``max_timeline`` items."""
        stream = self._stream
        cut = self.timeline_cut_ns
        if stream is None or (cut is None and len(kept) < stream.max_timeline):
            return True
        # Items come as they end: one that began earlier may still come.
        self.timeline_cut_ns = start if cut is None else min(cut, start)
        return False

    def _walk(self, greenlet_id: int, session_id: str) -> _Walk:
        replay = self._replays.get(session_id, self._legacy)
        walk = _Walk(self._names[greenlet_id], session_id, greenlet_id, replay)
        walk.samples_only = replay.samples_only
        return walk

    def _step(self, walk: _Walk, snapshot: Snapshot) -> None:
        """Replay one more snapshot of ``walk``'s greenlet, in time order."""
        pending = walk.pending
        if walk.samples_only:
            self._sample_only(walk, snapshot)
        elif pending is None:
            self._event(walk, snapshot)
        elif snapshot.event == "sample":
            pending.append(snapshot)  # thread mode's, or hybrid's: known later
        else:
            walk.pending = None
            self._begin(walk, pending[0] if pending else snapshot)
            for sample in pending:
                self._event(walk, sample)
            self._event(walk, snapshot)

    def _begin(self, walk: _Walk, first: Snapshot) -> None:
        """Where a greenlet with switches was, from its first snapshot and
        its session's bounds."""
        assert walk.replay is not None
        start, _ = walk.replay.bounds.get(walk.greenlet_id, (0, 0))
        if first.event in ("switch_out", "exit", "sample", "stop"):
            walk.running_since = start or first.timestamp_ns
        elif first.event != "start" and first.stack and start:
            walk.waiting_since = start
            walk.wait_stack = first.stack

    def _event(self, walk: _Walk, snapshot: Snapshot) -> None:
        greenlet_id = walk.greenlet_id
        now = snapshot.timestamp_ns
        kind = snapshot.event
        if kind == "sample":
            walk.samples += 1
            if walk.running_since is None:
                # Only a sample taken while it waited (it cannot run
                # then): it stands for one period, like a thread-mode
                # one, and takes no room on a timeline (it waited then).
                assert walk.replay is not None
                period = walk.replay.dump_period_ns
                self._add(walk, greenlet_id, snapshot.stack, now, period, on_cpu=True, timeline=0)
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
            walk.stopped = kind == "stop"

    def _sample_only(self, walk: _Walk, snapshot: Snapshot) -> None:
        # Thread mode: no switches, each sample stands for one period. On a
        # timeline, until the next sample at most (a late sampler takes two
        # close together).
        previous = walk.last_sample
        if previous is not None:
            self._period(walk, previous, snapshot.timestamp_ns)
        walk.last_sample = snapshot

    def _period(self, walk: _Walk, sample: Snapshot, after: int | None) -> None:
        assert walk.replay is not None
        period = walk.replay.dump_period_ns
        at = sample.timestamp_ns
        shown = period if after is None else max(0, min(period, after - at))
        self._add(walk, walk.greenlet_id, sample.stack, at, period, on_cpu=True, timeline=shown)
        walk.samples += 1
        walk.on_cpu_ns += period

    def _end(self, walk: _Walk) -> None:
        """The end of ``walk``'s snapshots: to its session's stop, and its totals."""
        if walk.pending:  # samples only: replayed as thread mode's
            walk.samples_only = True
            for sample in walk.pending:
                self._sample_only(walk, sample)
        walk.pending = None
        if walk.samples_only:
            if walk.last_sample is not None:
                self._period(walk, walk.last_sample, None)
                walk.last_sample = None
            self._total(walk.greenlet_id, walk)
            return
        assert walk.replay is not None
        _, stop = walk.replay.bounds.get(walk.greenlet_id, (0, 0))
        if stop and not walk.stopped:
            self._end_slice(walk.greenlet_id, walk, stop, self._last_stack(walk), ())
            self._end_wait(walk.greenlet_id, walk, stop)
        self._total(walk.greenlet_id, walk)

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
            if self._on_timeline(walk.waiting_since, self.waits):
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
        run_slice = RunSlice(
            greenlet_id=greenlet_id,
            greenlet_name=walk.name,
            start_ns=start,
            duration_ns=duration,
            start_stack=walk.resumed_stack,
            end_stack=yielded,
            samples=len(samples),
            session_id=walk.session_id,
        )
        if self._stream is not None:
            self._stream.keep_if_long(run_slice)
        if self._on_timeline(start, self.slices):
            self.slices.append(run_slice)
        walk.running_since = None
        walk.samples_in_slice = []


#: The end of a name greenprof made up from a greenlet's type and address.
_ADDRESS: Final = re.compile(r"-0x[0-9a-f]+$")


def _time_order(snapshot: Snapshot) -> tuple[int, int]:
    return snapshot.timestamp_ns, snapshot.sequence


def kind_of(name: str) -> str:
    """What greenlets named ``name`` are merged under: the name without
    the address greenprof puts after a type (``Greenlet-0x7f12ab`` ->
    ``Greenlet``)."""
    return _ADDRESS.sub("", name) or "greenlet"


class _Stream:
    """What a streamed report keeps instead of its snapshots."""

    def __init__(self, max_greenlets: int, max_timeline: int) -> None:
        self.max_greenlets = max_greenlets
        self.max_timeline = max_timeline
        self.counts: dict[tuple[int, str, Stack, bool], int] = {}
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        #: The first ``max_greenlets`` greenlets: kept apart to the end.
        self.kept: set[int] = set()
        #: Per greenlet kept apart: its stacks and its count keys.
        self._stacks: dict[int, set[Stack]] = {}
        self._count_keys: dict[int, set[tuple[int, str, Stack, bool]]] = {}
        #: Kind -> the id of its merged entry (below 0: no greenlet's).
        self._kinds: dict[str, int] = {}
        #: Merged entry id -> greenlets merged there.
        self._merged: dict[int, int] = {}
        self._longest: list[tuple[int, int, RunSlice]] = []
        self._ties = itertools.count()

    def count(self, snapshot: Snapshot) -> None:
        at = snapshot.timestamp_ns
        if self.first_ns is None or at < self.first_ns:
            self.first_ns = at
        if self.last_ns is None or at > self.last_ns:
            self.last_ns = at
        stack = snapshot.stack
        key = (
            snapshot.greenlet_id,
            snapshot.greenlet_name,
            stack,
            not stack and snapshot.event == "exit",
        )
        counts = self.counts
        if key in counts:
            counts[key] += 1
        else:
            counts[key] = 1
            self._count_keys.setdefault(snapshot.greenlet_id, set()).add(key)

    def stack_of(self, greenlet_id: int, stack: Stack) -> None:
        """``greenlet_id`` has time at ``stack`` (to merge it, later)."""
        stacks = self._stacks.get(greenlet_id)
        if stacks is None:
            stacks = self._stacks[greenlet_id] = set()
        stacks.add(stack)

    def keep_if_long(self, run_slice: RunSlice) -> None:
        entry = (run_slice.duration_ns, next(self._ties), run_slice)
        if len(self._longest) < MAX_LONGEST:
            heapq.heappush(self._longest, entry)
        elif entry[0] > self._longest[0][0]:
            heapq.heapreplace(self._longest, entry)

    def longest(self) -> list[RunSlice]:
        return [run_slice for _, _, run_slice in self._longest]

    def fold(self, report: Report, greenlet_id: int) -> None:
        """Merge what ``report`` holds of ``greenlet_id`` into its kind's entry."""
        kind = kind_of(report._names.pop(greenlet_id, ""))
        into: int | None = self._kinds.get(kind)
        if into is None:
            if len(self._kinds) >= MAX_KINDS:
                kind = "other greenlets"
                into = self._kinds.get(kind)
            if into is None:
                # Below 0: no greenlet's id (0 is a merged report's entry).
                into = self._kinds[kind] = -len(self._kinds) - 1
        report._names[into] = kind
        self._merged[into] = self._merged.get(into, 0) + 1
        report.merged_greenlets += 1
        cells = report._cells
        for stack in self._stacks.pop(greenlet_id, ()):
            cell = cells.pop((greenlet_id, stack), None)
            if cell is None:
                continue
            target = cells.get((into, stack))
            if target is None:
                cells[(into, stack)] = cell
            else:
                target.on_cpu_ns += cell.on_cpu_ns
                target.off_cpu_ns += cell.off_cpu_ns
        counts = self.counts
        for key in self._count_keys.pop(greenlet_id, ()):
            count = counts.pop(key, 0)
            merged_key = (into, kind, key[2], key[3])
            counts[merged_key] = counts.get(merged_key, 0) + count
        totals = report.greenlets.pop(greenlet_id, None)
        if totals is not None:
            old = report.greenlets.get(into)
            report.greenlets[into] = GreenletTime(
                greenlet_id=into,
                greenlet_name=kind,
                wall_ns=totals.wall_ns + (old.wall_ns if old else 0),
                on_cpu_ns=totals.on_cpu_ns + (old.on_cpu_ns if old else 0),
                off_cpu_ns=totals.off_cpu_ns + (old.off_cpu_ns if old else 0),
                switches_in=totals.switches_in + (old.switches_in if old else 0),
                switches_out=totals.switches_out + (old.switches_out if old else 0),
                samples=totals.samples + (old.samples if old else 0),
            )
        sessions = report.greenlet_sessions.pop(greenlet_id, set())
        report.greenlet_sessions.setdefault(into, set()).update(sessions)

    def name_folds(self, report: Report) -> None:
        """Name each merged entry after its kind and how many it holds,
        once all are in; slices of merged greenlets go under their entry."""
        names = {}
        for kind, into in self._kinds.items():
            merged = self._merged.get(into, 0)
            names[into] = f"{kind} ({merged:,} greenlet{'s' * (merged != 1)} merged)"
        if not names:
            return
        report._names.update(names)
        for into, name in names.items():
            if into in report.greenlets:
                report.greenlets[into] = attrs.evolve(report.greenlets[into], greenlet_name=name)
        self.counts = {
            ((gid, names[gid], stack, exited) if gid in names else (gid, label, stack, exited)): n
            for (gid, label, stack, exited), n in self.counts.items()
        }
        report._counts = self.counts
        for index, (duration, tie, run_slice) in enumerate(self._longest):
            if run_slice.greenlet_id not in report.greenlets:
                kind = kind_of(run_slice.greenlet_name)
                home = self._kinds.get(kind, self._kinds.get("other greenlets"))
                if home is not None:
                    moved = attrs.evolve(run_slice, greenlet_id=home, greenlet_name=names[home])
                    self._longest[index] = (duration, tie, moved)


def _weight(report: Report) -> int:
    return sum(g.wall_ns for g in report.greenlets.values())
