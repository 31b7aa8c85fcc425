"""speedscope's JSON file format (https://www.speedscope.app/file-format-schema.json)."""

from __future__ import annotations

import json
from typing import Any, Final

from .._report import Report, Segment
from ..snapshot import Frame
from ._common import (
    Stack,
    Weight,
    check_weight,
    greenlet_label,
    grouped,
    origin_ns,
    shown,
    timeline_tracks,
    weighted,
)

__all__ = ["SPEEDSCOPE_SCHEMA", "speedscope"]

SPEEDSCOPE_SCHEMA: Final = "https://www.speedscope.app/file-format-schema.json"


class _Frames:
    """speedscope's shared frame table."""

    def __init__(self) -> None:
        self.table: list[dict[str, Any]] = []
        self._index: dict[Frame, int] = {}

    def __call__(self, frame: Frame) -> int:
        position = self._index.get(frame)
        if position is None:
            position = self._index[frame] = len(self.table)
            entry: dict[str, Any] = {"name": frame.function}
            if frame.filename:
                entry.update(file=frame.filename, line=frame.lineno)
            self.table.append(entry)
        return position


def speedscope(
    report: Report,
    *,
    weight: Weight = "on_cpu",
    group_by: str | None = None,
    name: str = "greenprof",
) -> str:
    """A speedscope file with one profile per greenlet, or per tag value.

    Per greenlet, on-CPU and off-CPU time are ``evented`` profiles: each
    stretch of time opens and closes its stack's frames at the exact
    moments it began and ended, so speedscope's Time Order view shows what
    the greenlet did in sequence (times count from the profile's start).
    Merged views (``group_by``, or a report from ``Report.group_by``) and
    snapshot counts are ``sampled`` profiles: one sample per stack.
    """
    check_weight(weight)
    frames = _Frames()
    origin = origin_ns(report)
    profiles: list[dict[str, Any]] = []
    for _, part in grouped(report, group_by):
        # A cut timeline (a long run's, see Report.streamed) would show part
        # of the time: its totals then go in as samples.
        if weight == "snapshots" or part.merged_as is not None or part.timeline_cut_ns is not None:
            profiles += _sampled(part, weight, frames)
        else:
            profiles += _evented(part, weight, frames, origin)
    if not profiles:  # speedscope never finishes loading a file without one
        profiles.append(_timeline(f"no {weight.replace('_', '-')} recorded", [], 0))
    document = {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames.table},
        "profiles": profiles,
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "greenprof",
    }
    return json.dumps(document, separators=(",", ":"))


def _title(greenlet_id: int, name: str, weight: str) -> str:
    return f"{greenlet_label(greenlet_id, name)} ({weight.replace('_', '-')})"


def _unit(weight: str) -> str:
    return "none" if weight == "snapshots" else "nanoseconds"


def _sampled(report: Report, weight: str, frames: _Frames) -> list[dict[str, Any]]:
    per_greenlet: dict[int, tuple[str, list[list[int]], list[int]]] = {}
    for greenlet_id, greenlet_name, stack, value in sorted(
        weighted(report, weight),
        key=lambda item: (item[0], [(f.filename, f.lineno) for f in item[2]]),
    ):
        _, samples, weights = per_greenlet.setdefault(
            greenlet_id, (_title(greenlet_id, greenlet_name, weight), [], [])
        )
        samples.append([frames(frame) for frame in stack])
        weights.append(value)
    return [
        {
            "type": "sampled",
            "name": title,
            "unit": _unit(weight),
            "startValue": 0,
            "endValue": sum(weights),
            "samples": samples,
            "weights": weights,
        }
        for title, samples, weights in per_greenlet.values()
    ]


def _evented(report: Report, weight: str, frames: _Frames, origin: int) -> list[dict[str, Any]]:
    on_cpu = weight == "on_cpu"
    timelines: dict[tuple[str, int], list[Segment]] = {}
    for segment in report.segments:
        if segment.on_cpu == on_cpu:
            timelines.setdefault((segment.session_id, segment.greenlet_id), []).append(segment)
    profiles = []
    for key, label in timeline_tracks(report).items():
        segments = timelines.get(key, [])
        events: list[dict[str, Any]] = []
        open_stack: Stack = ()
        last = 0
        for segment in segments:
            start = max(segment.start_ns - origin, last)  # never back in time
            end = max(segment.start_ns + segment.duration_ns - origin, start)
            stack = shown(segment.stack)
            common = 0
            if start == last:  # adjacent: keep the frames both share open
                limit = min(len(open_stack), len(stack))
                while common < limit and open_stack[common] == stack[common]:
                    common += 1
            _close(events, open_stack, common, last, frames)
            for frame in stack[common:]:
                events.append({"type": "O", "frame": frames(frame), "at": start})
            open_stack, last = stack, end
        _close(events, open_stack, 0, last, frames)
        if events:
            profiles.append(_timeline(f"{label} ({weight.replace('_', '-')})", events, last))
    return profiles


def _timeline(name: str, events: list[dict[str, Any]], end: int) -> dict[str, Any]:
    return {
        "type": "evented",
        "name": name,
        "unit": "nanoseconds",
        "startValue": 0,
        "endValue": end,
        "events": events,
    }


def _close(events: list[dict[str, Any]], stack: Stack, keep: int, at: int, frames: _Frames) -> None:
    """Close ``stack``'s frames from the innermost down to ``keep`` of them."""
    for frame in reversed(stack[keep:]):
        events.append({"type": "C", "frame": frames(frame), "at": at})
