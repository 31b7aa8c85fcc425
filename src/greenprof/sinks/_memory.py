"""A sink that keeps snapshots in a list: for tests and interactive use."""

from __future__ import annotations

from collections.abc import Sequence

from ..exceptions import SinkClosedError
from ..snapshot import Snapshot


class MemorySink:
    """Appends every exported snapshot to :attr:`snapshots`."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self._closed = False

    def export(self, batch: Sequence[Snapshot]) -> None:
        if self._closed:
            msg = "This MemorySink is closed; create a new one to keep recording."
            raise SinkClosedError(msg)
        self.snapshots.extend(batch)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"MemorySink(<{len(self.snapshots)} snapshots>)"
