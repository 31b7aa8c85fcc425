"""A sink that keeps snapshots in a list: for tests and interactive use."""

from __future__ import annotations

from collections.abc import Sequence

from ..exceptions import SinkClosedError
from ..snapshot import Session, Snapshot


class MemorySink:
    """Appends every exported snapshot to :attr:`snapshots`, and every
    session to :attr:`sessions`."""

    #: Its export only appends: greenprof calls it in the thread that stops
    #: a session, so what ``stop()`` handed over is here when it returns.
    export_never_blocks = True
    #: Its flush has nothing to wait for: called in the caller's thread too,
    #: so ``flush()`` lets no other greenlet run for it.
    flush_never_blocks = True

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self.sessions: list[Session] = []
        self._closed = False

    def export(self, batch: Sequence[Snapshot]) -> None:
        self._check_open()
        self.snapshots.extend(batch)

    def export_sessions(self, sessions: Sequence[Session]) -> None:
        self._check_open()
        self.sessions.extend(sessions)

    def _check_open(self) -> None:
        if self._closed:
            msg = "This MemorySink is closed; create a new one to keep recording."
            raise SinkClosedError(msg)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"MemorySink(<{len(self.snapshots)} snapshots>)"
