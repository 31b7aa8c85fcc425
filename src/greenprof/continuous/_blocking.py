"""``BlockingMonitor``: greenlets that ran longer than a threshold without
yielding, each reported once with where it resumed and where it yielded.

It reads the run slices :class:`~greenprof.Report` finds in each profiled
session (exact stacks from the switch path, and in hybrid mode the
samples taken inside the slice), so it sees what ran, not what happened to
run at the moment a monitor thread looked (gevent's ``max_blocking_time``).
"""

from __future__ import annotations

import logging
import math
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import attrs

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
    ``callback`` (default: a warning through ``logging``), when the
    session it ran in ends.

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

    def check(self, report: Report) -> None:
        """Report the slices of ``report`` (one session's) past the threshold."""
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
            self.reported += 1
            try:
                self.callback(blocking)
            except Exception:
                self.callback_failures += 1
                if not self._failures_logged:
                    self._failures_logged = True
                    _logger.exception("greenprof: BlockingMonitor's callback failed")

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
        with self._lock:
            self._waiting.clear()

    def __repr__(self) -> str:
        return f"BlockingMonitor(threshold={self.threshold})"
