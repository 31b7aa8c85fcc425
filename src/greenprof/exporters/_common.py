"""What every exporter shares: weights, a greenlet's label, values per stack."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Final, Literal

from .._report import Report
from ..exceptions import ConfigurationError
from ..snapshot import Frame

Weight = Literal["on_cpu", "off_cpu", "snapshots"]
#: What a stack can be weighed by.
WEIGHTS: Final = ("on_cpu", "off_cpu", "snapshots")

Stack = tuple[Frame, ...]


def check_weight(weight: str) -> None:
    if weight not in WEIGHTS:
        msg = f"weight must be one of {', '.join(WEIGHTS)}, not {weight!r}."
        raise ConfigurationError(msg)


def weighted(report: Report, weight: str) -> Iterator[tuple[int, str, Stack, int]]:
    """``(greenlet_id, greenlet_name, stack, value)`` with value > 0."""
    check_weight(weight)
    if weight == "snapshots":
        counts = Counter((s.greenlet_id, s.greenlet_name, s.stack) for s in report.snapshots)
        for (greenlet_id, name, stack), count in counts.items():
            yield greenlet_id, name, stack, count
        return
    for cell in report.stacks:
        value = cell.on_cpu_ns if weight == "on_cpu" else cell.off_cpu_ns
        if value > 0:
            yield cell.greenlet_id, cell.greenlet_name, cell.stack, value


def frame_label(frame: Frame) -> str:
    return f"{frame.function} ({frame.filename}:{frame.lineno})"


def greenlet_label(greenlet_id: int, name: str) -> str:
    return f"{name or 'greenlet'} [{greenlet_id:#x}]"


def stack_values(report: Report) -> dict[tuple[int, str, Stack], list[int]]:
    """``(greenlet_id, greenlet_name, stack) -> [on_cpu_ns, off_cpu_ns, snapshots]``."""
    values: dict[tuple[int, str, Stack], list[int]] = {}
    for column, weight in enumerate(WEIGHTS):
        for greenlet_id, name, stack, value in weighted(report, weight):
            cell = values.setdefault((greenlet_id, name, stack), [0] * len(WEIGHTS))
            cell[column] += value
    return values
