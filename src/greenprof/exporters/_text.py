"""A call tree per greenlet (or per tag value) with on-CPU and off-CPU
columns, like pyinstrument's, and a summary of the sessions first."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Final

from .._report import GreenletTime, Report
from ..snapshot import Frame, Session
from ._common import NO_VALUE, Stack, default_group, greenlet_label, grouped, stack_values

__all__ = ["text"]

#: With more greenlets than this (and no grouping), one merged tree is shown
#: with a table of the heaviest greenlets, instead of a tree each.
MAX_TREES: Final = 10


def text(
    report: Report,
    *,
    color: bool = False,
    min_share: float = 0.0,
    top: int | None = None,
    group_by: str | None = None,
) -> str:
    """The report as text: a summary of its sessions when there are several
    (by ``group_by``, else by ``path`` when they have that tag: counts,
    total, p50 and p99 duration), then a call tree per greenlet, or per
    value of ``group_by`` with every session of that value merged.

    ``min_share`` hides nodes below that fraction of their tree's time;
    ``top`` keeps only each tree's ``top`` heaviest stacks. With more than
    ten greenlets and no grouping, they are merged into one tree, and the
    heaviest are listed.
    """
    style = _Style(color)
    out: list[str] = []
    if len(report.sessions) > 1:
        out += _summary(report.sessions, group_by or default_group(report), style)
    for _, part in grouped(report, group_by):
        greenlets = sorted(part.greenlets.values(), key=lambda g: (-g.wall_ns, g.greenlet_id))
        if group_by is None and len(greenlets) > MAX_TREES:
            merged = part.merged(f"all {len(greenlets)} greenlets")
            out += _tree(stack_values(merged), merged.greenlets[0], style, min_share, top)
            out += _heaviest(greenlets, style)
        else:
            values = stack_values(part)
            for totals in greenlets:
                out += _tree(values, totals, style, min_share, top)
    return "\n".join(out)


class _Style:
    def __init__(self, color: bool) -> None:
        self.bold, self.dim, self.reset = ("\033[1m", "\033[2m", "\033[0m") if color else ("",) * 3


def _ms(ns: float) -> str:
    return f"{ns / 1e6:,.2f}"


def _percentile(sorted_values: Sequence[int], share: float) -> int:
    """Nearest rank: the smallest value with at least ``share`` of them at or below it."""
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]


def _summary(sessions: Sequence[Session], tag: str | None, style: _Style) -> list[str]:
    durations = [s.duration_ns for s in sessions]
    first = min(s.start_ns for s in sessions)
    last = max(s.stop_ns or s.start_ns for s in sessions)
    out = [
        f"{style.bold}{len(sessions)} sessions{style.reset} over {_ms(last - first)} ms, "
        f"{_ms(sum(durations))} ms in all"
    ]
    if tag is not None:
        rows: dict[str, list[int]] = {}
        for session in sessions:
            rows.setdefault(session.tags.get(tag, NO_VALUE), []).append(session.duration_ns)
        width = max([len(tag), *map(len, rows)])
        out.append(
            f"{style.dim}{tag:<{width}}  {'sessions':>8}  {'total ms':>10}  "
            f"{'p50 ms':>9}  {'p99 ms':>9}{style.reset}"
        )
        for value, values in sorted(rows.items(), key=lambda item: (-sum(item[1]), item[0])):
            values.sort()
            out.append(
                f"{value:<{width}}  {len(values):>8}  {_ms(sum(values)):>10}  "
                f"{_ms(_percentile(values, 0.5)):>9}  {_ms(_percentile(values, 0.99)):>9}"
            )
    out.append("")
    return out


def _tree(
    values: dict[tuple[int, str, Stack], list[int]],
    totals: GreenletTime,
    style: _Style,
    min_share: float,
    top: int | None,
) -> list[str]:
    cells = [
        (stack, cell)
        for (gid, _, stack), cell in values.items()
        if gid == totals.greenlet_id and (cell[0] or cell[1])
    ]
    if top is not None:
        cells.sort(key=lambda cell: -(cell[1][0] + cell[1][1]))
        cells = cells[:top]
    tree: dict[Frame, Any] = {}
    for stack, (on, off, _) in cells:
        node = tree
        for frame in stack:
            entry = node.setdefault(frame, [0, 0, {}])
            entry[0] += on
            entry[1] += off
            node = entry[2]
    out = [
        f"{style.bold}{greenlet_label(totals.greenlet_id, totals.greenlet_name)}{style.reset}  "
        f"wall {totals.wall_ns / 1e6:.2f} ms  on-CPU {totals.on_cpu_ns / 1e6:.2f} ms  "
        f"off-CPU {totals.off_cpu_ns / 1e6:.2f} ms  switches {totals.switches_out}"
        + (f"  (the {top} heaviest stacks)" if top is not None else ""),
        f"{style.dim}{'on-CPU ms':>10} {'off-CPU ms':>10}  frame{style.reset}",
    ]
    total = max(totals.wall_ns, 1)

    def walk(node: dict[Frame, Any], depth: int) -> None:
        ordered = sorted(node.items(), key=lambda item: -(item[1][0] + item[1][1]))
        for frame, (on, off, children) in ordered:
            if (on + off) / total < min_share:
                continue
            where = (
                f" {style.dim}{os.path.basename(frame.filename)}:{frame.lineno}{style.reset}"
                if frame.filename
                else ""
            )
            out.append(
                f"{on / 1e6:>10.2f} {off / 1e6:>10.2f}  {'  ' * depth}{frame.function}{where}"
            )
            walk(children, depth + 1)

    walk(tree, 0)
    out.append("")
    return out


def _heaviest(greenlets: Sequence[GreenletTime], style: _Style) -> list[str]:
    out = [
        f"{style.dim}the {MAX_TREES} heaviest of {len(greenlets)} greenlets "
        f"(greenprof convert --format html shows each):{style.reset}",
        f"{style.dim}{'wall ms':>10} {'on-CPU ms':>10} {'off-CPU ms':>10}  greenlet{style.reset}",
    ]
    for totals in greenlets[:MAX_TREES]:
        out.append(
            f"{_ms(totals.wall_ns):>10} {_ms(totals.on_cpu_ns):>10} {_ms(totals.off_cpu_ns):>10}  "
            f"{greenlet_label(totals.greenlet_id, totals.greenlet_name)}"
        )
    out.append("")
    return out
