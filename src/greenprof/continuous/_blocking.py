"""``BlockingMonitor``: greenlets that ran longer than a threshold without
yielding, each reported once with where it resumed and where it yielded.

It reads what the switch path recorded for the greenlets its sessions
profile (exact stacks, and in hybrid mode the samples taken inside the
slice), so it sees what ran, not what happened to run at the moment a
monitor thread looked (gevent's ``max_blocking_time``). Live: a thread of
its own looks, a few times per threshold, at the greenlet each thread runs;
one that has run past the threshold is reported as soon as its slice ends
(the record of its switch-out is in). A slice too short to be seen running
is found when its session ends, from the session's report.
"""

from __future__ import annotations

import atexit
import logging
import math
import reprlib
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from itertools import islice
from typing import Any, Final

import attrs

from .._buffer import SAMPLE, START, SWITCH_IN, THROW, GreenletBuffer, Record
from .._build import FORMATTER
from .._dispatcher import installed_dispatchers
from .._loop import BackgroundLoop
from .._report import Report
from .._threads import allocate_real_lock
from .._validate import is_number
from ..exceptions import ConfigurationError
from ..snapshot import Frame, Session, Snapshot

__all__ = ["BlockingMonitor", "BlockingSlice"]

_logger = logging.getLogger("greenprof")

Stack = tuple[Frame, ...]

#: Frames of each stack the default callback's line shows, innermost first.
SHOWN_FRAMES: Final = 4
#: Looks at the running greenlets this many times per threshold (a slice
#: 1.25 thresholds long or more is always seen running, and reported live).
LOOKS_PER_THRESHOLD: Final = 5
#: Slices reported, remembered so the session's end reports none twice.
REMEMBERED: Final = 4096
#: Records looked through, back from the newest, for a slice's end.
_LOOK_BACK: Final = 10_000
#: What a slice starts with: a switch in, a throw in, or the session's start.
_RESUMES: Final = frozenset((SWITCH_IN, THROW, START))


@attrs.frozen
class BlockingSlice:
    """One stretch a greenlet ran without yielding for ``threshold`` or more."""

    greenlet_id: int
    greenlet_name: str
    #: Wall-clock ns when it resumed, and how long it ran.
    start_ns: int
    duration_ns: int
    #: Where it resumed (empty: its first run), and where it yielded (empty:
    #: it finished, or its session stopped, without yielding again).
    resumed: Stack
    yielded: Stack
    #: Hybrid mode: the stacks sampled inside the slice, in time order.
    samples: tuple[Stack, ...]
    #: The tags of the session it ran in (``method``, ``path`` of a request).
    tags: Mapping[str, str]


def compact(stack: Stack) -> str:
    """The innermost frames of ``stack``: ``f (a.py:3) < g (b.py:9) < ...``."""
    if not stack:
        return "(none)"
    shown = [f"{f.function} ({f.filename}:{f.lineno})" for f in reversed(stack[-SHOWN_FRAMES:])]
    more = len(stack) - SHOWN_FRAMES
    return " < ".join(shown) + (f" < ... {more} more" if more > 0 else "")


def log_blocking_slice(found: BlockingSlice) -> None:
    """The default callback: one warning line through ``logging``."""
    request = " ".join(found.tags[key] for key in ("method", "path") if found.tags.get(key))
    _logger.warning(
        "greenprof: greenlet %s [%#x]%s ran %.1f ms without yielding; resumed at %s; "
        "yielded at %s%s",
        found.greenlet_name or "greenlet",
        found.greenlet_id,
        f" ({request})" if request else "",
        found.duration_ns / 1e6,
        compact(found.resumed),
        compact(found.yielded),
        f"; sampled inside: {compact(found.samples[-1])}" if found.samples else "",
    )


class BlockingMonitor:
    """Reports each run slice of ``threshold`` seconds or more, once, to
    ``callback`` (default: a warning through ``logging``), as soon as it
    ends (or, for a slice shorter than 1.25 thresholds, when the session it
    ran in ends).

    Give it to a :class:`~greenprof.continuous.ContinuousProfiler`
    (``blocking=BlockingMonitor()``), which shows it every request it
    profiles, or use it as a sink of any profiler or of
    ``ProfilerMiddleware`` (``sinks=[BlockingMonitor()]``). It sees the
    sessions it is given: with ``sample_rate`` below 1, the profiled share
    of requests. As a sink it is called in a thread of its own (a real OS
    thread), never in the program's greenlets, so a callback that logs or
    blocks holds up no request; one that raises is logged once and counted
    in :attr:`callback_failures`.
    """

    def __init__(
        self,
        threshold: float = 0.1,
        callback: Callable[[BlockingSlice], None] | None = None,
    ) -> None:
        if not is_number(threshold) or not 0 < threshold < math.inf:
            msg = (
                "threshold is the seconds a greenlet may run without yielding before "
                f"it is reported: a number > 0 such as 0.1, not {reprlib.repr(threshold)}."
            )
            raise ConfigurationError(msg)
        if callback is not None and not callable(callback):
            msg = f"callback must be a function taking a BlockingSlice, not {callback!r}."
            raise ConfigurationError(msg)
        self.threshold = float(threshold)
        self.callback = callback if callback is not None else log_blocking_slice
        self._threshold_ns = round(threshold * 1e9)
        #: Slices reported, and callback calls that raised.
        self.reported = 0
        self.callback_failures = 0
        self._lock = allocate_real_lock()
        self._waiting: dict[str, list[Snapshot]] = {}
        self._failures_logged = False
        #: Slices reported: (greenlet_id, start_ns), oldest first.
        self._reported: dict[tuple[int, int], None] = {}
        #: Slices seen running past the threshold, not ended yet:
        #: (id(buffer), start) -> (buffer, the record it started with).
        self._running: dict[tuple[int, int], tuple[GreenletBuffer, Record]] = {}
        self._looks_every = min(max(self.threshold / LOOKS_PER_THRESHOLD, 0.002), 1.0)
        self._loop = BackgroundLoop(
            self._look, name="greenprof's blocking monitor", after_fork=self._running.clear
        )

    # -- live ------------------------------------------------------------------------

    def watch_slices(self) -> None:
        """Start looking at running greenlets (called when this monitor
        becomes a sink of a profiler): from then on the sessions of that
        profiler mark their greenlets for it."""
        if not self._loop.running:
            _watching.add(self)
            self._loop.start()

    def _look(self) -> float:
        # In the monitor's thread: reads what the switch path appends, never
        # writes it; a read the program's thread overlaps is done again.
        now = time.perf_counter_ns()
        for dispatcher in installed_dispatchers():
            watch = dispatcher.get_running()
            if watch is None:
                continue
            for buffer in watch.buffers:
                if self._owner(buffer) is None:
                    continue
                first = _slice_start(buffer)
                if first is not None and now - first[1] >= self._threshold_ns:
                    self._running.setdefault((id(buffer), first[1]), (buffer, first))
        for key, (buffer, first) in list(self._running.items()):
            if self._owner(buffer) is None:  # its session is gone
                del self._running[key]
                continue
            ended = _ended_slice(buffer, first)
            if ended is None:
                continue  # still running
            del self._running[key]
            if ended:
                self._report_live(buffer, first, ended)
        return self._looks_every

    def _owner(self, buffer: GreenletBuffer) -> Any:
        """The session of ``buffer``, if this monitor is one of its sinks."""
        run: Any = buffer.run() if buffer.run is not None else None
        if run is None or self not in run.pipeline.delivery.slice_watchers:
            return None
        return run

    def _report_live(self, buffer: GreenletBuffer, first: Record, ended: list[Record]) -> None:
        run = self._owner(buffer)
        if run is None:
            return
        last = ended[-1]
        depth = buffer.depth
        offset = run.pipeline.offset_ns
        tags = run.tags if run.tags is not None else run.pipeline.options.tags
        self._report(
            BlockingSlice(
                greenlet_id=buffer.greenlet_id,
                greenlet_name=buffer.greenlet_name or "",
                start_ns=offset + first[1],
                duration_ns=last[1] - first[1],
                resumed=FORMATTER.stack(first[2], depth),
                yielded=FORMATTER.stack(last[2], depth),
                samples=tuple(FORMATTER.stack(r[2], depth) for r in ended[:-1]),
                tags=dict(tags),
            )
        )

    def _report(self, found: BlockingSlice) -> None:
        key = (found.greenlet_id, found.start_ns)
        with self._lock:
            if key in self._reported:
                return
            self._reported[key] = None
            if len(self._reported) > REMEMBERED:
                del self._reported[next(iter(self._reported))]
            self.reported += 1
        try:
            self.callback(found)
        except Exception:
            with self._lock:
                self.callback_failures += 1
            if not self._failures_logged:
                self._failures_logged = True
                _logger.exception("greenprof: BlockingMonitor's callback failed")

    # -- from a session's report -----------------------------------------------------

    def check(self, report: Report) -> None:
        """Report the slices of ``report`` (one session's) past the threshold
        that were not reported live."""
        tags = report.sessions[0].tags if report.sessions else {}
        for found in report.slices:
            if found.duration_ns < self._threshold_ns:
                continue
            end = found.start_ns + found.duration_ns
            samples = tuple(
                s.stack
                for s in report.snapshots
                if s.event == "sample"
                and s.greenlet_id == found.greenlet_id
                and found.start_ns <= s.timestamp_ns <= end
            )
            blocking = BlockingSlice(
                greenlet_id=found.greenlet_id,
                greenlet_name=found.greenlet_name,
                start_ns=found.start_ns,
                duration_ns=found.duration_ns,
                resumed=found.start_stack,
                yielded=found.end_stack,
                samples=samples,
                tags=dict(tags),
            )
            self._report(blocking)

    # -- as a sink --------------------------------------------------------------------

    def export(self, batch: Sequence[Snapshot]) -> None:
        with self._lock:
            for snapshot in batch:
                self._waiting.setdefault(snapshot.session_id, []).append(snapshot)

    def export_sessions(self, sessions: Sequence[Session]) -> None:
        with self._lock:
            found = [(s, self._waiting.pop(s.session_id, [])) for s in sessions]
            # A session's snapshots come in the batch that ends with it.
            self._waiting.clear()
        for session, snapshots in found:
            self.check(Report(snapshots, sessions=[session], timeline=False))

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        self._loop.stop()
        with self._lock:
            self._waiting.clear()
        self._running.clear()

    def __repr__(self) -> str:
        return f"BlockingMonitor(threshold={self.threshold})"


#: Monitors whose thread looks at running greenlets: stopped at exit, so
#: none runs among the interpreter's last steps.
_watching: weakref.WeakSet[BlockingMonitor] = weakref.WeakSet()


@atexit.register
def _stop_watching() -> None:
    for monitor in list(_watching):
        monitor._loop.stop(1.0)


def _slice_start(buffer: GreenletBuffer) -> Record | None:
    """The record the running slice of ``buffer``'s greenlet started with
    (back past the samples taken in it), or None if it is not running (or
    the buffer changed as it was read: looked at again next time)."""
    try:
        for record in islice(reversed(buffer.records), _LOOK_BACK):
            if record[0] != SAMPLE:
                return record if record[0] in _RESUMES else None
    except RuntimeError:  # "deque mutated during iteration"
        pass
    return None


def _ended_slice(buffer: GreenletBuffer, first: Record) -> list[Record] | None:
    """The records after ``first`` up to the one that ended its slice (the
    samples inside it, then a switch-out, exit or stop); None while it
    runs, or if the buffer changed as it was read (a record of the next
    slice is never taken for this one's end: looked at again next time);
    empty if ``first`` was taken out of the buffer meanwhile (its session
    drained it: the session's report tells of the slice)."""
    newer: list[Record] = []  # newest first
    try:
        for record in islice(reversed(buffer.records), _LOOK_BACK):
            if record is first:
                after = newer[::-1]  # oldest first
                for index, later in enumerate(after):
                    if later[0] != SAMPLE:
                        return after[: index + 1]
                return None
            newer.append(record)
    except RuntimeError:  # "deque mutated during iteration"
        return None
    return []
