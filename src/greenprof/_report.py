"""Where time went: on-CPU and off-CPU time per stack and per greenlet.

Built from snapshots alone (and the session's bounds when known), so a
profile read back from a file gives the same answers as a live one.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence

import attrs

from .snapshot import Frame, Snapshot

__all__ = ["GreenletTime", "Report", "RunSlice", "StackTime", "Wait"]

Stack = tuple[Frame, ...]


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
    #: Where it yielded (empty when it finished, or the session ended first).
    end_stack: Stack
    samples: int


@attrs.frozen
class Wait:
    """One suspension of a greenlet: switch-out to the next switch-in."""

    greenlet_id: int
    greenlet_name: str
    start_ns: int
    duration_ns: int
    #: The wait site: the stack it switched out from.
    stack: Stack


@attrs.define
class _Cell:
    on_cpu_ns: int = 0
    off_cpu_ns: int = 0


@attrs.define
class _Walk:
    """One greenlet's state while its snapshots are replayed."""

    name: str
    running_since: int | None = None
    last_seen_ns: int = 0
    resumed_stack: Stack = ()
    samples_in_slice: list[Snapshot] = attrs.Factory(list)
    waiting_since: int | None = None
    wait_stack: Stack = ()
    on_cpu_ns: int = 0
    off_cpu_ns: int = 0
    switches_in: int = 0
    switches_out: int = 0
    samples: int = 0


class Report:
    """Time attribution for a recorded session; see README.rst, "Time".

    Rules, per greenlet, from its snapshots in order:

    - Off-CPU: from a ``switch_out`` to the next ``switch_in``/``throw`` the
      greenlet waited; that time goes to the switch-out stack, its exact wait
      site.
    - On-CPU: from a ``switch_in``/``throw`` to the next ``switch_out``/``exit``
      it ran (a *run slice*). With samples inside the slice (``hybrid``
      mode), each sample's stack gets the time from the midpoint with the
      sample before it to the midpoint with the sample after it; the first
      sample also gets the time from the slice's start, the last one the time
      to its end. Without samples the whole slice goes to the stack it
      switched out from (for a final slice that ends in ``exit``, to the stack
      it resumed in).
    - A greenlet with samples only (``thread`` mode: no switches are
      recorded) gets one dump period of on-CPU time per sample, to the
      sample's stack; bounds do not apply to it.
    - With session bounds, a greenlet running when the session started
      counts from the start, and one running or waiting when it stopped
      counts to the stop. A profiled greenlet that never switched ran (those
      in ``running_at_start``) or waited the whole session, with an empty
      stack: greenlet mode cannot see inside it (hybrid mode can).
    - Each session (``session_id``) is replayed on its own; totals of a
      greenlet seen in several sessions add up.
    """

    def __init__(
        self,
        snapshots: Iterable[Snapshot],
        *,
        bounds: Mapping[int, tuple[int, int]] | None = None,
        running_at_start: Collection[int] = (),
        dump_period_ns: int = 10_000_000,
    ) -> None:
        self.snapshots: list[Snapshot] = sorted(
            snapshots, key=lambda s: (s.timestamp_ns, s.sequence)
        )
        self._bounds = dict(bounds or {})
        self._dump_period_ns = dump_period_ns
        self._cells: dict[tuple[int, Stack], _Cell] = {}
        self._names: dict[int, str] = {}
        #: Every run slice, in time order.
        self.slices: list[RunSlice] = []
        #: Every suspension, in time order.
        self.waits: list[Wait] = []
        self.greenlets: dict[int, GreenletTime] = {}
        # Sessions are replayed apart: a file may hold many (one per request),
        # and a greenlet id may come back in a later one.
        by_session: dict[tuple[str, int], list[Snapshot]] = {}
        for snapshot in self.snapshots:
            by_session.setdefault((snapshot.session_id, snapshot.greenlet_id), []).append(snapshot)
            self._names[snapshot.greenlet_id] = snapshot.greenlet_name
        for (_, greenlet_id), events in by_session.items():
            self._replay(greenlet_id, events)
        seen = {greenlet_id for _, greenlet_id in by_session}
        for greenlet_id, (start, stop) in self._bounds.items():
            if greenlet_id not in seen and start and stop:
                self._silent(greenlet_id, start, stop, greenlet_id in running_at_start)
        self.slices.sort(key=lambda s: s.start_ns)
        self.waits.sort(key=lambda w: w.start_ns)

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

    # -- replay --------------------------------------------------------------------

    def _add(self, greenlet_id: int, stack: Stack, *, on: int = 0, off: int = 0) -> None:
        cell = self._cells.get((greenlet_id, stack))
        if cell is None:
            cell = self._cells[(greenlet_id, stack)] = _Cell()
        cell.on_cpu_ns += on
        cell.off_cpu_ns += off

    def _replay(self, greenlet_id: int, events: Sequence[Snapshot]) -> None:
        walk = _Walk(self._names[greenlet_id])
        if all(snapshot.event == "sample" for snapshot in events):
            # Thread mode: no switches, each sample stands for one period.
            for snapshot in events:
                self._add(greenlet_id, snapshot.stack, on=self._dump_period_ns)
            walk.samples = len(events)
            walk.on_cpu_ns = len(events) * self._dump_period_ns
            self._total(greenlet_id, walk)
            return
        start, stop = self._bounds.get(greenlet_id, (0, 0))
        first = events[0]
        if first.event in ("switch_out", "exit", "sample"):
            walk.running_since = start or first.timestamp_ns
            walk.last_seen_ns = walk.running_since
        elif first.stack and start:
            walk.waiting_since = start
            walk.wait_stack = first.stack
        for snapshot in events:
            now = snapshot.timestamp_ns
            kind = snapshot.event
            if kind == "sample":
                walk.samples += 1
                if walk.running_since is None:
                    # Only a sample taken while it waited (it cannot run
                    # then): it stands for one period, like a thread-mode one.
                    self._add(greenlet_id, snapshot.stack, on=self._dump_period_ns)
                    walk.on_cpu_ns += self._dump_period_ns
                else:
                    walk.samples_in_slice.append(snapshot)
            elif kind in ("switch_in", "throw"):
                walk.switches_in += 1
                self._end_wait(greenlet_id, walk, now)
                walk.running_since = now
                walk.resumed_stack = snapshot.stack
            else:  # switch_out, exit
                if kind == "switch_out":
                    walk.switches_out += 1
                end_stack = snapshot.stack if kind == "switch_out" else walk.resumed_stack
                self._end_slice(greenlet_id, walk, now, end_stack, snapshot.stack)
                if kind == "switch_out":
                    walk.waiting_since = now
                    walk.wait_stack = snapshot.stack
        if stop:
            if walk.running_since is not None:
                last = walk.samples_in_slice[-1].stack if walk.samples_in_slice else None
                self._end_slice(greenlet_id, walk, stop, last or walk.resumed_stack, ())
            self._end_wait(greenlet_id, walk, stop)
        self._total(greenlet_id, walk)

    def _silent(self, greenlet_id: int, start: int, stop: int, running: bool) -> None:
        # Profiled, but it never switched (and was not sampled): it ran, or
        # waited, the whole session, at a stack the snapshots do not show.
        self._names.setdefault(greenlet_id, "")
        walk = _Walk(self._names[greenlet_id])
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
            self._add(greenlet_id, walk.wait_stack, off=waited)
            walk.off_cpu_ns += waited
            self.waits.append(
                Wait(greenlet_id, walk.name, walk.waiting_since, waited, walk.wait_stack)
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
                self._add(greenlet_id, sample.stack, on=max(0, hi - lo))
        else:
            self._add(greenlet_id, fallback, on=max(0, now - start))
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
            )
        )
        walk.running_since = None
        walk.samples_in_slice = []
