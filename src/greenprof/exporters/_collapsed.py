"""Brendan Gregg's folded stacks: what flamegraph.pl, speedscope and Pyroscope read."""

from __future__ import annotations

from .._report import Report
from ._common import Weight, frame_label, greenlet_label, grouped, weighted

__all__ = ["collapsed"]


def collapsed(report: Report, *, weight: Weight = "on_cpu", group_by: str | None = None) -> str:
    """``root;outer;...;inner value`` lines.

    The root of each line is the greenlet (``name [0xid]``), so greenlets
    stand side by side; with ``group_by``, the tag's value (``path=/checkout``),
    every request of that value merged. Values are nanoseconds (or snapshot
    counts). Semicolons in names become colons.
    """
    lines = []
    for _, part in grouped(report, group_by):
        for greenlet_id, name, stack, value in weighted(part, weight):
            parts = [greenlet_label(greenlet_id, name), *(frame_label(f) for f in stack)]
            lines.append(";".join(part.replace(";", ":") for part in parts) + f" {value}")
    lines.sort()
    return "".join(line + "\n" for line in lines)
