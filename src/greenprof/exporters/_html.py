"""A self-contained HTML page with an interactive flame graph of a report.

The profile goes into the page as JSON; the viewer is the vanilla JS and CSS
beside this module (``flamegraph.*``), inlined: the page needs no network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import string
from collections import Counter
from functools import cache
from html import escape
from importlib import resources
from typing import Any, Final

from .._report import Report
from ..snapshot import Frame
from ._common import Stack, greenlet_label, stack_values

__all__ = ["html"]

#: How many of the longest run slices the page lists.
SLICES: Final = 25


@cache
def _asset(name: str) -> str:
    return (resources.files("greenprof.exporters") / name).read_text(encoding="utf-8")


def _profile(report: Report) -> dict[str, Any]:
    """The JSON the viewer reads; flamegraph.js documents its shape."""
    cells: dict[tuple[int, Stack], list[int]] = {}
    names: dict[int, str] = {}
    for (gid, name, stack), values in stack_values(report).items():
        cell = cells.setdefault((gid, stack), [0, 0, 0])
        cell[:] = [a + b for a, b in zip(cell, values, strict=True)]
        names[gid] = name

    totals = report.greenlets
    order = sorted(
        names.keys() | totals.keys(),
        key=lambda gid: (-(totals[gid].wall_ns if gid in totals else 0), gid),
    )
    position = {gid: index for index, gid in enumerate(order)}
    snapshots_of = Counter(s.greenlet_id for s in report.snapshots)
    greenlets = []
    for gid in order:
        known = totals.get(gid)
        greenlets.append(
            {
                "label": greenlet_label(gid, known.greenlet_name if known else names[gid]),
                "on_cpu": known.on_cpu_ns if known else 0,
                "off_cpu": known.off_cpu_ns if known else 0,
                "snapshots": snapshots_of[gid],
                "switches": known.switches_out if known else 0,
            }
        )

    frames: list[list[Any]] = []
    index: dict[Frame, int] = {}

    def indices(stack: Stack) -> list[int]:
        out = []
        for frame in stack:
            at = index.get(frame)
            if at is None:
                at = index[frame] = len(frames)
                frames.append([frame.function, frame.filename, frame.lineno])
            out.append(at)
        return out

    stacks = [
        [position[gid], indices(stack), *values]
        for (gid, stack), values in sorted(
            cells.items(),
            key=lambda item: (
                position[item[0][0]],
                [(f.filename, f.lineno, f.function) for f in item[0][1]],
            ),
        )
        if any(values)
    ]
    # Times go in relative to the first moment seen: epoch nanoseconds do not
    # fit a JavaScript number exactly.
    starts = [s.start_ns for s in report.slices] + [w.start_ns for w in report.waits]
    starts += [s.timestamp_ns for s in report.snapshots[:1]]
    origin = min(starts, default=0)
    ends = [s.start_ns + s.duration_ns for s in report.slices]
    ends += [w.start_ns + w.duration_ns for w in report.waits]
    ends += [s.timestamp_ns for s in report.snapshots[-1:]]
    slices = [
        [
            position[s.greenlet_id],
            s.start_ns - origin,
            s.duration_ns,
            s.samples,
            indices(s.start_stack),
            indices(s.end_stack),
        ]
        for s in report.longest_slices(SLICES)
    ]
    return {
        "greenlets": greenlets,
        "frames": frames,
        "stacks": stacks,
        "slices": slices,
        "span_ns": max(ends, default=origin) - origin,
    }


def _script_json(value: object) -> str:
    # Inside <script> only "</script" and "<!--" mean anything to the HTML
    # parser, and both start with "<": as \u003c no name can end the element.
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def html(report: Report, *, title: str = "greenprof") -> str:
    """One self-contained HTML page: a flame graph of ``report`` to explore in a browser.

    Pick a greenlet (or all of them side by side), weigh stacks by on-CPU
    time, off-CPU time or snapshot count, click a frame to zoom, search
    functions and files; the longest stretches without a yield are listed
    below the graph. No network is used: the page's Content-Security-Policy
    allows its own inline script and style and nothing else.
    """
    script = _asset("flamegraph.js")
    csp = f"default-src 'none'; script-src {_csp_hash(script)}; style-src 'unsafe-inline'"
    return string.Template(_asset("flamegraph.html")).substitute(
        title=escape(title),
        csp=csp,
        style=_asset("flamegraph.css"),
        data=_script_json(_profile(report)),
        script=script,
    )
