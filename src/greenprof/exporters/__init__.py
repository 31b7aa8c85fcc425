"""Profiles in the formats other tools read: collapsed stacks, speedscope, a text tree.

Every exporter takes a :class:`~greenprof.Report` (``profiler.report()`` or
``Report(greenprof.load(path))``), keeps greenlets apart, and weighs stacks
by on-CPU time, off-CPU time or snapshot count.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any, Final, Literal

from .._report import Report
from ..exceptions import ConfigurationError
from ..snapshot import Frame

__all__ = ["FORMATS", "WEIGHTS", "chrome_trace", "collapsed", "export", "speedscope", "text"]

Weight = Literal["on_cpu", "off_cpu", "snapshots"]
#: What a stack can be weighed by.
WEIGHTS: Final = ("on_cpu", "off_cpu", "snapshots")

SPEEDSCOPE_SCHEMA: Final = "https://www.speedscope.app/file-format-schema.json"

Stack = tuple[Frame, ...]


def _check_weight(weight: str) -> None:
    if weight not in WEIGHTS:
        msg = f"weight must be one of {', '.join(WEIGHTS)}, not {weight!r}."
        raise ConfigurationError(msg)


def _weighted(report: Report, weight: str) -> Iterator[tuple[int, str, Stack, int]]:
    """``(greenlet_id, greenlet_name, stack, value)`` with value > 0."""
    _check_weight(weight)
    if weight == "snapshots":
        counts = Counter((s.greenlet_id, s.greenlet_name, s.stack) for s in report.snapshots)
        for (greenlet_id, name, stack), count in counts.items():
            yield greenlet_id, name, stack, count
        return
    for cell in report.stacks:
        value = cell.on_cpu_ns if weight == "on_cpu" else cell.off_cpu_ns
        if value > 0:
            yield cell.greenlet_id, cell.greenlet_name, cell.stack, value


def _label(frame: Frame) -> str:
    return f"{frame.function} ({frame.filename}:{frame.lineno})"


def _greenlet_label(greenlet_id: int, name: str) -> str:
    return f"{name or 'greenlet'} [{greenlet_id:#x}]"


def collapsed(report: Report, *, weight: Weight = "on_cpu") -> str:
    """Brendan Gregg's folded format: ``greenlet;outer;...;inner value`` lines.

    The first element of each line is the greenlet, so flamegraph.pl,
    speedscope and Pyroscope show greenlets side by side; values are
    nanoseconds (or snapshot counts). Semicolons in names become colons.
    """
    lines = []
    for greenlet_id, name, stack, value in _weighted(report, weight):
        parts = [_greenlet_label(greenlet_id, name), *(_label(f) for f in stack)]
        lines.append(";".join(part.replace(";", ":") for part in parts) + f" {value}")
    lines.sort()
    return "".join(line + "\n" for line in lines)


def speedscope(report: Report, *, weight: Weight = "on_cpu", name: str = "greenprof") -> str:
    """A speedscope file: one ``sampled`` profile per greenlet."""
    frames: list[dict[str, Any]] = []
    index: dict[Frame, int] = {}
    per_greenlet: dict[int, tuple[str, list[list[int]], list[int]]] = {}
    for greenlet_id, greenlet_name, stack, value in sorted(
        _weighted(report, weight),
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
            greenlet_id, (_greenlet_label(greenlet_id, greenlet_name), [], [])
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
            f"{bold}{_greenlet_label(totals.greenlet_id, totals.greenlet_name)}{reset}  "
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
        name = _greenlet_label(greenlet_id, report.greenlets[greenlet_id].greenlet_name)
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


#: ``name -> (exporter, takes a weight)`` for :func:`export` and the CLI.
FORMATS: Final = ("collapsed", "speedscope", "chrome", "text")


def export(report: Report, format: str, *, weight: Weight = "on_cpu") -> str:
    """Render ``report`` in ``format`` (one of :data:`FORMATS`)."""
    if format == "collapsed":
        return collapsed(report, weight=weight)
    if format == "speedscope":
        return speedscope(report, weight=weight)
    if format == "chrome":
        return chrome_trace(report)
    if format == "text":
        return text(report)
    msg = f"format must be one of {', '.join(FORMATS)}, not {format!r}."
    raise ConfigurationError(msg)
