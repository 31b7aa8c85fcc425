"""Profiles in the formats other tools read: collapsed stacks, speedscope, Chrome
trace events, pprof, an HTML flame graph and a text tree.

Every exporter takes a :class:`~greenprof.Report` (``profiler.report()`` or
``Report(greenprof.load(path))``), keeps greenlets apart, and weighs stacks
by on-CPU time, off-CPU time or snapshot count.
"""

from __future__ import annotations

import json
import os
from typing import Any, Final

from .._report import Report
from ..exceptions import ConfigurationError
from ..snapshot import Frame
from ._common import WEIGHTS, Stack, Weight, check_weight, frame_label, greenlet_label, weighted
from ._html import html
from ._pprof import pprof

__all__ = [
    "FORMATS",
    "WEIGHTS",
    "chrome_trace",
    "collapsed",
    "export",
    "html",
    "pprof",
    "speedscope",
    "text",
    "write",
]

SPEEDSCOPE_SCHEMA: Final = "https://www.speedscope.app/file-format-schema.json"


def collapsed(report: Report, *, weight: Weight = "on_cpu") -> str:
    """Brendan Gregg's folded format: ``greenlet;outer;...;inner value`` lines.

    The first element of each line is the greenlet, so flamegraph.pl,
    speedscope and Pyroscope show greenlets side by side; values are
    nanoseconds (or snapshot counts). Semicolons in names become colons.
    """
    lines = []
    for greenlet_id, name, stack, value in weighted(report, weight):
        parts = [greenlet_label(greenlet_id, name), *(frame_label(f) for f in stack)]
        lines.append(";".join(part.replace(";", ":") for part in parts) + f" {value}")
    lines.sort()
    return "".join(line + "\n" for line in lines)


def speedscope(report: Report, *, weight: Weight = "on_cpu", name: str = "greenprof") -> str:
    """A speedscope file: one ``sampled`` profile per greenlet."""
    frames: list[dict[str, Any]] = []
    index: dict[Frame, int] = {}
    per_greenlet: dict[int, tuple[str, list[list[int]], list[int]]] = {}
    for greenlet_id, greenlet_name, stack, value in sorted(
        weighted(report, weight),
        key=lambda item: (item[0], [(f.filename, f.lineno) for f in item[2]]),
    ):
        sample = []
        for frame in stack:
            position = index.get(frame)
            if position is None:
                position = index[frame] = len(frames)
                frames.append(
                    {"name": frame.function, "file": frame.filename, "line": frame.lineno}
                )
            sample.append(position)
        _, samples, weights = per_greenlet.setdefault(
            greenlet_id, (greenlet_label(greenlet_id, greenlet_name), [], [])
        )
        samples.append(sample)
        weights.append(value)
    unit = "none" if weight == "snapshots" else "nanoseconds"
    profiles = [
        {
            "type": "sampled",
            "name": f"{label} ({weight.replace('_', '-')})",
            "unit": unit,
            "startValue": 0,
            "endValue": sum(weights),
            "samples": samples,
            "weights": weights,
        }
        for label, samples, weights in per_greenlet.values()
    ]
    document = {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "greenprof",
    }
    return json.dumps(document, separators=(",", ":"))


def text(report: Report, *, color: bool = False, min_share: float = 0.0) -> str:
    """A call tree per greenlet with on-CPU and off-CPU columns, like pyinstrument's.

    ``min_share`` hides nodes below that fraction of their greenlet's time.
    """
    bold, dim, reset = ("\033[1m", "\033[2m", "\033[0m") if color else ("", "", "")
    out: list[str] = []
    greenlets = sorted(report.greenlets.values(), key=lambda g: -(g.wall_ns))
    for totals in greenlets:
        tree: dict[Frame, Any] = {}
        for cell in report.stacks:
            if cell.greenlet_id != totals.greenlet_id:
                continue
            node = tree
            for frame in cell.stack:
                entry = node.setdefault(frame, [0, 0, {}])
                entry[0] += cell.on_cpu_ns
                entry[1] += cell.off_cpu_ns
                node = entry[2]
        total = max(totals.wall_ns, 1)
        out.append(
            f"{bold}{greenlet_label(totals.greenlet_id, totals.greenlet_name)}{reset}  "
            f"wall {totals.wall_ns / 1e6:.2f} ms  on-CPU {totals.on_cpu_ns / 1e6:.2f} ms  "
            f"off-CPU {totals.off_cpu_ns / 1e6:.2f} ms  switches {totals.switches_out}"
        )
        out.append(f"{dim}{'on-CPU ms':>10} {'off-CPU ms':>10}  frame{reset}")

        def walk(node: dict[Frame, Any], depth: int, total: int = total) -> None:
            ordered = sorted(node.items(), key=lambda item: -(item[1][0] + item[1][1]))
            for frame, (on, off, children) in ordered:
                if (on + off) / total < min_share:
                    continue
                out.append(
                    f"{on / 1e6:>10.2f} {off / 1e6:>10.2f}  {'  ' * depth}{frame.function} "
                    f"{dim}{os.path.basename(frame.filename)}:{frame.lineno}{reset}"
                )
                walk(children, depth + 1, total)

        walk(tree, 0)
        out.append("")
    return "\n".join(out)


def chrome_trace(report: Report) -> str:
    """Chrome trace-event JSON (chrome://tracing, Perfetto UI): one track per
    greenlet, named after it, with its run slices (category ``cpu``) and its
    waits (category ``wait``) as complete events; inside each, one nested
    event per frame of the stack it yielded from (or waited in)."""
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "greenprof"}}
    ]
    tracks: dict[int, int] = {}
    for greenlet_id in sorted(report.greenlets):
        track = tracks[greenlet_id] = len(tracks) + 1
        name = greenlet_label(greenlet_id, report.greenlets[greenlet_id].greenlet_name)
        events.append(
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": track, "args": {"name": name}}
        )
    intervals: list[tuple[int, int, int, str, str, Stack]] = [
        (s.greenlet_id, s.start_ns, s.duration_ns, "cpu", "running", s.end_stack or s.start_stack)
        for s in report.slices
    ]
    intervals += [
        (w.greenlet_id, w.start_ns, w.duration_ns, "wait", "waiting", w.stack) for w in report.waits
    ]
    for greenlet_id, start_ns, duration_ns, category, name, stack in intervals:
        if greenlet_id not in tracks:
            continue
        track = tracks[greenlet_id]
        ts, dur = start_ns / 1000, duration_ns / 1000
        base = {"ph": "X", "pid": 1, "tid": track, "ts": ts, "dur": dur, "cat": category}
        events.append({**base, "name": name})
        for frame in stack:
            events.append(
                {
                    **base,
                    "name": frame.function,
                    "args": {"file": frame.filename, "line": frame.lineno},
                }
            )
    return json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}, separators=(",", ":"))


#: The formats :func:`export` and the ``greenprof`` command know.
FORMATS: Final = ("collapsed", "speedscope", "chrome", "pprof", "html", "text")


def export(report: Report, format: str, *, weight: Weight = "on_cpu") -> str | bytes:
    """Render ``report`` in ``format`` (one of :data:`FORMATS`): text, except
    for ``pprof``, which is gzipped bytes. ``weight`` applies to the formats
    that weigh stacks (``collapsed``, ``speedscope``, ``pprof``: its default
    sample type); ``chrome`` is a timeline, and ``html`` and ``text`` carry
    every weight."""
    check_weight(weight)
    if format == "collapsed":
        return collapsed(report, weight=weight)
    if format == "speedscope":
        return speedscope(report, weight=weight)
    if format == "chrome":
        return chrome_trace(report)
    if format == "pprof":
        return pprof(report, weight=weight)
    if format == "html":
        return html(report)
    if format == "text":
        return text(report)
    msg = f"format must be one of {', '.join(FORMATS)}, not {format!r}."
    raise ConfigurationError(msg)


def write(report: Report, format: str, path: str | os.PathLike[str], **options: Any) -> None:
    """:func:`export` ``report`` to the file at ``path`` (``weight=`` as there)."""
    rendered = export(report, format, **options)
    if isinstance(rendered, str):
        # A file name may hold a lone surrogate (a non-UTF-8 path): escape it.
        rendered = rendered.encode("utf-8", "backslashreplace")
    with open(path, "wb") as file:
        file.write(rendered)
