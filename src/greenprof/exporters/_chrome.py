"""Chrome's trace-event JSON: what chrome://tracing and the Perfetto UI read."""

from __future__ import annotations

import json
from typing import Any

from .._report import Report
from ._common import frame_label, origin_ns, shown, splits, timeline_tracks

__all__ = ["chrome_trace"]


def chrome_trace(report: Report, *, group_by: str | None = None) -> str:
    """A timeline: one track per greenlet (of each session), named after it, with its run
    slices (``running``, category ``cpu``) and waits (``waiting``, category
    ``wait``), and inside each, one nested event per frame of the stack the
    time went to (a run slice of a hybrid session holds one such stack per
    sample).

    Timestamps are whole microseconds from the profile's start (floored, so
    the slices of one greenlet never overlap); the start itself, in
    nanoseconds since the epoch, is ``otherData.start_ns``. With
    ``group_by``, each value of that tag is a process of its own (a track
    group in Perfetto) holding the tracks of its sessions' greenlets.
    """
    origin = origin_ns(report)
    events: list[dict[str, Any]] = []
    parts = [("greenprof", report)]
    if group_by is not None:  # heaviest value first
        parts = [(f"{group_by}={value}", part) for value, part in splits(report, group_by).items()]
    for pid, (title, part) in enumerate(parts, 1):
        events.append(_meta("process_name", pid, 0, title))
        events.append(
            {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}
        )
        events += _tracks(part, pid, origin)
    other: dict[str, Any] = {"start_ns": origin, "exporter": "greenprof"}
    if report.timeline_cut_ns is not None:  # a long run's: the timeline stops there
        other["timeline_cut_ns"] = report.timeline_cut_ns
    return json.dumps(
        {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other},
        separators=(",", ":"),
    )


def _meta(kind: str, pid: int, tid: int, name: str) -> dict[str, Any]:
    return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "args": {"name": name}}


def _tracks(report: Report, pid: int, origin: int) -> list[dict[str, Any]]:
    source = report.unmerged or report  # a merged report: its greenlets' own timelines
    events: list[dict[str, Any]] = []
    tracks: dict[tuple[str, int], int] = {}
    for key, label in timeline_tracks(report).items():
        tracks[key] = len(tracks) + 1
        events.append(_meta("thread_name", pid, tracks[key], label))

    def us(ns: int) -> int:
        return (ns - origin) // 1000

    spans: list[tuple[int, int, int, int, dict[str, Any]]] = []
    for kind, name, items in (
        (
            "cpu",
            "running",
            [(s.session_id, s.greenlet_id, s.start_ns, s.duration_ns) for s in source.slices],
        ),
        (
            "wait",
            "waiting",
            [(w.session_id, w.greenlet_id, w.start_ns, w.duration_ns) for w in source.waits],
        ),
    ):
        for session_id, greenlet_id, start, duration in items:
            track = tracks.get((session_id, greenlet_id))
            if track is not None:
                body: dict[str, Any] = {"name": name, "cat": kind}
                spans.append((track, us(start), us(start + duration), 0, body))
    for segment in source.segments:
        track = tracks.get((segment.session_id, segment.greenlet_id))
        if track is None:
            continue
        ts, end = us(segment.start_ns), us(segment.start_ns + segment.duration_ns)
        kind = "cpu" if segment.on_cpu else "wait"
        for depth, frame in enumerate(shown(segment.stack), 1):
            args = (
                {"file": frame.filename, "line": frame.lineno}
                if frame.filename
                else {"frame": frame_label(frame)}
            )
            body = {"name": frame.function, "cat": kind, "args": args}
            spans.append((track, ts, end, depth, body))
    # Parents before children: by start, then the outermost first.
    spans.sort(key=lambda span: (span[0], span[1], span[3], -span[2]))
    for track, ts, end, _, body in spans:
        events.append({"ph": "X", "pid": pid, "tid": track, "ts": ts, "dur": end - ts, **body})
    return events
