"""A self-contained HTML page with an interactive flame graph of a report.

The profile goes into the page as JSON; the viewer is the vanilla JS and CSS
beside this module (``flamegraph.*``), inlined: the page needs no network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import string
from functools import cache
from html import escape
from importlib import resources
from typing import Any, Final

from .._report import Report
from ..snapshot import Frame
from ._common import (
    Stack,
    default_group,
    greenlet_label,
    groups,
    origin_ns,
    stack_values,
    viewable_tags,
)

__all__ = ["html"]

#: How many of the longest run slices the page lists.
SLICES: Final = 25
#: The view that has one entry per greenlet; tags name the others.
GREENLET_VIEW: Final = "greenlet"
#: greenprof's own package folder (with a trailing separator): its frames
#: (the WSGI middleware, a decorator) are library code to the page.
OWN_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


@cache
def _asset(name: str) -> str:
    return (resources.files("greenprof.exporters") / name).read_text(encoding="utf-8")


class _Frames:
    """Each distinct frame once, in the order first seen; stacks refer to them by index."""

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self._index: dict[Frame, int] = {}

    def indices(self, stack: Stack) -> list[int]:
        out = []
        for frame in stack:
            at = self._index.get(frame)
            if at is None:
                at = self._index[frame] = len(self.rows)
                self.rows.append([frame.function, frame.filename, frame.lineno])
            out.append(at)
        return out


def _stack_rows(
    values: dict[tuple[int, str, Stack], list[int]], position: dict[int, int], frames: _Frames
) -> list[list[Any]]:
    """``[[entry, [frame, ...], on_cpu_ns, off_cpu_ns, snapshots]]`` of a
    report's ``stack_values``, the entry being ``position[greenlet_id]``."""
    cells: dict[tuple[int, Stack], list[int]] = {}
    for (gid, _, stack), cell_values in values.items():
        # A greenlet renamed while profiled has snapshots under both names.
        cell = cells.setdefault((gid, stack), [0, 0, 0])
        cell[:] = [a + b for a, b in zip(cell, cell_values, strict=True)]
    return [
        [position[gid], frames.indices(stack), *cell]
        for (gid, stack), cell in sorted(
            cells.items(),
            key=lambda item: (
                position[item[0][0]],
                [(f.filename, f.lineno, f.function) for f in item[0][1]],
            ),
        )
        if any(cell)
    ]


def _view_tags(report: Report, group_by: str | None) -> list[str]:
    """The tags that get a view (see :data:`TAG_VALUES`), ``group_by`` always."""
    tags = viewable_tags(report)
    return sorted({*tags, group_by}) if group_by is not None else tags


def _tags_text(tags: dict[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in sorted(tags.items()))


def _greenlet_view(report: Report, frames: _Frames) -> tuple[dict[str, Any], dict[int, int]]:
    """The view with one entry per greenlet, heaviest first, and each
    greenlet's entry index."""
    values = stack_values(report)
    names = {gid: name for gid, name, _ in values}
    totals = report.greenlets
    order = sorted(
        names.keys() | totals.keys(),
        key=lambda gid: (-(totals[gid].wall_ns if gid in totals else 0), gid),
    )
    position = {gid: index for index, gid in enumerate(order)}
    stacks = _stack_rows(values, position, frames)
    snapshots = [0] * len(order)
    for row in stacks:
        snapshots[row[0]] += row[4]
    # The sessions each greenlet was in: a request's greenlet is labelled
    # with what the request was (path=/checkout), not only its id.
    sessions_of = {gid: set(ids) for gid, ids in report.greenlet_sessions.items()}
    for session in report.sessions:
        for gid in session.bounds:
            sessions_of.setdefault(gid, set()).add(session.session_id)
    by_id = {session.session_id: session for session in report.sessions}
    entries = []
    for gid in order:
        known = totals.get(gid)
        entry: dict[str, Any] = {
            "label": greenlet_label(gid, known.greenlet_name if known else names[gid]),
            "on_cpu": known.on_cpu_ns if known else 0,
            "off_cpu": known.off_cpu_ns if known else 0,
            "snapshots": snapshots[position[gid]],
            "switches": known.switches_out if known else 0,
        }
        sessions = [by_id[s] for s in sorted(sessions_of.get(gid, ())) if s in by_id]
        if len(sessions) == 1 and sessions[0].tags:
            entry["tags"] = _tags_text(sessions[0].tags)
        entries.append(entry)
    view = {"key": GREENLET_VIEW, "entries": entries, "stacks": stacks}
    return view, position


def _tag_view(report: Report, tag: str, frames: _Frames) -> dict[str, Any]:
    """One entry per value of ``tag``: every session with it merged, heaviest first."""
    entries = []
    stacks: list[list[Any]] = []
    for index, merged in enumerate(groups(report, tag).values()):
        rows = _stack_rows(stack_values(merged), {0: index}, frames)
        totals = merged.greenlets.get(0)
        entries.append(
            {
                "label": greenlet_label(0, merged.merged_as or ""),
                "on_cpu": totals.on_cpu_ns if totals else 0,
                "off_cpu": totals.off_cpu_ns if totals else 0,
                "snapshots": sum(row[4] for row in rows),
                "switches": totals.switches_out if totals else 0,
                "sessions": len(merged.sessions),
            }
        )
        stacks += rows
    return {"key": tag, "entries": entries, "stacks": stacks}


def _session_tags(report: Report, greenlet_id: int, when_ns: int) -> dict[str, str]:
    """The tags of the session ``greenlet_id`` was profiled in at ``when_ns``:
    a greenlet of a server's pool serves one request after another."""
    for session in report.sessions:
        start, stop = session.bounds.get(greenlet_id, (0, 0))
        start = start or session.start_ns
        stop = stop or session.stop_ns or when_ns
        if greenlet_id in session.bounds and start <= when_ns <= stop:
            return session.tags
    return {}


def _profile(report: Report, group_by: str | None = None) -> dict[str, Any]:
    """The JSON the viewer reads; flamegraph.js documents its shape."""
    tag_keys = _view_tags(report, group_by)
    frames = _Frames()
    greenlets, position = _greenlet_view(report, frames)
    # A group_by no session has fails here, naming the tags there are.
    views = [greenlets] + [_tag_view(report, key, frames) for key in tag_keys]
    initial = group_by or default_group(report) or GREENLET_VIEW

    # Times go in relative to the first moment seen: epoch nanoseconds do not
    # fit a JavaScript number exactly.
    origin = origin_ns(report)
    ends = [s.start_ns + s.duration_ns for s in report.slices]
    ends += [w.start_ns + w.duration_ns for w in report.waits]
    last = report.last_snapshot_ns
    ends += [last] if last is not None else []
    ends += [s.stop_ns for s in report.sessions if s.stop_ns]
    slices = [
        [
            position[s.greenlet_id],
            s.start_ns - origin,
            s.duration_ns,
            s.samples,
            frames.indices(s.start_stack),
            frames.indices(s.end_stack),
            _tags_text(_session_tags(report, s.greenlet_id, s.start_ns)),
        ]
        for s in report.longest_slices(SLICES)
        if s.greenlet_id in position
    ]
    return {
        "frames": frames.rows,
        "views": views,
        "view": initial,
        "slices": slices,
        "sessions": len(report.sessions),
        "span_ns": max(ends, default=origin) - origin,
        "own_dir": OWN_DIR,
    }


def _script_json(value: object) -> str:
    # Inside <script> only "</script" and "<!--" mean anything to the HTML
    # parser, and both start with "<": as \u003c no name can end the element.
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def html(report: Report, *, title: str = "greenprof", group_by: str | None = None) -> str:
    """One self-contained HTML page: a flame graph of ``report`` to explore in a browser.

    View it by greenlet or by any tag of its sessions with at most
    :data:`TAG_VALUES` values (each value merging every session that has
    it); it opens on ``group_by``, else on ``path`` when sessions have that
    tag, else on greenlets. Show every entry merged into one tree, side by
    side, or one alone; weigh stacks by on-CPU time, off-CPU time or
    snapshot count; fold runs of library frames into one node; click a frame
    to zoom; search functions and files. The longest stretches without a
    yield are listed below the graph. No network is used: the page's
    Content-Security-Policy allows its own inline script and style and
    nothing else. ``group_by`` naming a tag no session has raises
    :class:`~greenprof.exceptions.ConfigurationError`.
    """
    script = _asset("flamegraph.js")
    csp = f"default-src 'none'; script-src {_csp_hash(script)}; style-src 'unsafe-inline'"
    return string.Template(_asset("flamegraph.html")).substitute(
        title=escape(title),
        csp=csp,
        style=_asset("flamegraph.css"),
        data=_script_json(_profile(report, group_by)),
        script=script,
    )
