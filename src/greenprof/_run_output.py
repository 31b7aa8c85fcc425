"""One process's profile at the end of ``greenprof run``, written in
bounded memory: ``.jsonl`` is streamed from the spool a line at a time,
and every other format is built from a report streamed from it
(``Report.streamed``), which keeps per-stack totals, not snapshots."""

from __future__ import annotations

import heapq
import itertools
import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Final

from ._files import replace_file_with
from ._output import STDOUT, write_report
from ._report import Report
from ._schema import encode_header, encode_session, encode_snapshot
from .snapshot import Session, Snapshot

__all__ = ["Tally", "in_time_order", "write_profile"]

#: Snapshots held to put the stream in time order: the spool is in
#: sequence order, and only a sample that reached its buffer after the
#: switch that followed it is out of time order, by a few snapshots.
WINDOW: Final = 1_000
#: Greenlets the summary line counts one by one (past it: "at least").
MAX_COUNTED: Final = 100_000


class Tally:
    """What the summary line says of the snapshots that went by."""

    def __init__(self) -> None:
        self.snapshots = 0
        self._greenlets: set[int] = set()
        #: Some greenlet switched (or was sampled): not only start and stop.
        self.switched = False

    @property
    def greenlets(self) -> int:
        return len(self._greenlets)

    @property
    def greenlets_shown(self) -> str:
        count = len(self._greenlets)
        return f"{count:,}+" if count >= MAX_COUNTED else f"{count}"

    def counted(self, snapshots: Iterable[Snapshot]) -> Iterator[Snapshot]:
        greenlets = self._greenlets
        for snapshot in snapshots:
            self.snapshots += 1
            if len(greenlets) < MAX_COUNTED:
                greenlets.add(snapshot.greenlet_id)
            if not self.switched and snapshot.event not in ("start", "stop"):
                self.switched = True
            yield snapshot


def in_time_order(snapshots: Iterable[Snapshot], window: int = WINDOW) -> Iterator[Snapshot]:
    """``snapshots``, nearly in time order already, in time order: each
    held until ``window`` later ones have come (a snapshot out of order by
    more than that goes out as late as it came)."""
    heap: list[tuple[int, int, int, Snapshot]] = []
    ties = itertools.count()
    for snapshot in snapshots:
        heapq.heappush(heap, (snapshot.timestamp_ns, snapshot.sequence, next(ties), snapshot))
        if len(heap) > window:
            yield heapq.heappop(heap)[3]
    while heap:
        yield heapq.heappop(heap)[3]


def write_profile(snapshots: Iterable[Snapshot], session: Session, format: str, path: str) -> Tally:
    """Write ``snapshots`` (read once) and their ``session`` in ``format``
    to ``path`` (``-``: stdout), replacing the file in one step; what went by."""
    tally = Tally()
    counted = tally.counted(snapshots)
    if format == "jsonl":
        if path == STDOUT:
            sys.stdout.flush()  # what the program printed comes first
            _write_jsonl(counted, session, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            replace_file_with(path, lambda file: _write_jsonl(counted, session, file))
        return tally
    report = Report.streamed(in_time_order(counted), sessions=[session])
    write_report(report, format, path)
    return tally


def _write_jsonl(snapshots: Iterable[Snapshot], session: Session, file: BinaryIO) -> None:
    """What the jsonl exporter writes, a line at a time."""
    file.write(encode_header().encode() + b"\n")
    for snapshot in snapshots:
        file.write(encode_snapshot(snapshot).encode("utf-8", "backslashreplace") + b"\n")
    file.write(encode_session(session).encode("utf-8", "backslashreplace") + b"\n")
