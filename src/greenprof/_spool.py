"""``greenprof run``'s spool: what a process records goes to a temporary
JSON Lines file of its own as the run goes, and is read back once at the
end, in sequence order, one snapshot at a time."""

from __future__ import annotations

import contextlib
import heapq
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from typing import Final

from ._schema import decode_line
from .sinks import JSONSink
from .snapshot import Frame, Session, Snapshot

__all__ = ["Spool"]

#: A snapshot line's sequence number (``encode_snapshot`` writes the key
#: before any string that could hold the same characters, and a string
#: holds a quote only escaped).
_SEQUENCE: Final = re.compile(rb'"sequence":(\d+)')
_SNAPSHOT: Final = b'"type":"snapshot"'


class Spool:
    """A sink writing what a run records to a JSON Lines file of the
    process's own: each process of the run (the program's forked children
    too) spools to a temporary file made the first time it writes, read
    back when it writes its profile, then removed."""

    #: Each export is written when it returns: called in place, and so is
    #: its flush, which has nothing to wait for.
    export_never_blocks = True
    flush_never_blocks = True

    def __init__(self) -> None:
        self._files: dict[int, str] = {}
        # Found now, in the program's main thread: tempfile finds it (and
        # makes its names) under a lock of its own, which a thread of the
        # parent may hold when the program forks, for ever in the child.
        self._folder = tempfile.gettempdir()

    def path(self) -> str:
        pid = os.getpid()
        path = self._files.get(pid)
        if path is None:
            while True:
                path = os.path.join(
                    self._folder, f"greenprof-run-{pid}-{os.urandom(6).hex()}.jsonl"
                )
                try:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                    break
                except FileExistsError:
                    continue
            self._files = {pid: path}  # a forked child's own; its parent's stays the parent's
        return path

    def export(self, batch: Sequence[Snapshot]) -> None:
        JSONSink(self.path()).export(batch)

    def export_sessions(self, sessions: Sequence[Session]) -> None:
        JSONSink(self.path()).export_sessions(sessions)

    def flush(self, timeout: float | None = None) -> bool:
        return True  # every export is written when it returns

    def close(self) -> None:
        return None

    def snapshots(self) -> Iterator[Snapshot]:
        """What this process spooled so far, in sequence order, read as it
        is used: memory does not grow with the file.

        Each hand-over writes its batch whole and in order, but a sink
        thread's and one made in place (at ``stop()``) may reach the file in
        either order: the file is a few ascending runs, merged here.
        """
        path = self._files.get(os.getpid())
        if path is None or not os.path.getsize(path):
            return iter(())
        frames: dict[tuple[str, str, int], Frame] = {}  # equal frames shared
        runs = [_read(path, start, stop, frames) for start, stop in _ascending_runs(path)]
        return heapq.merge(*runs, key=_sequence_of)

    def remove(self) -> None:
        """This process's file."""
        path = self._files.pop(os.getpid(), None)
        if path is not None:
            with contextlib.suppress(OSError):
                os.remove(path)


def _ascending_runs(path: str) -> list[tuple[int, int]]:
    """``(start, stop)`` byte offsets of the parts of the file whose
    snapshots follow each other (each sequence number one more than the
    last), found without decoding a line."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    previous = -2
    offset = 0
    with open(path, "rb") as file:
        for line in file:
            found = _SEQUENCE.search(line) if _SNAPSHOT in line else None
            if found is not None:
                sequence = int(found.group(1))
                if start is None:
                    start = offset
                elif sequence != previous + 1:
                    runs.append((start, offset))
                    start = offset
                previous = sequence
            offset += len(line)
    if start is not None:
        runs.append((start, offset))
    return runs


def _read(
    path: str, start: int, stop: int, frames: dict[tuple[str, str, int], Frame]
) -> Iterator[Snapshot]:
    """The snapshots between two offsets of the file (a torn line skipped)."""
    with open(path, "rb") as file:
        file.seek(start)
        offset = start
        while offset < stop:
            line = file.readline()
            if not line:
                return
            offset += len(line)
            record = decode_line(line, frames, name=path)
            if isinstance(record, Snapshot):
                yield record


def _sequence_of(snapshot: Snapshot) -> int:
    return snapshot.sequence
