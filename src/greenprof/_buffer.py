"""Per-greenlet bounded buffers of raw switch records.

The switch path appends; draining happens later, from any thread.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from ._stack import RawStack

# Event codes stored on the switch path; indexes into ``snapshot.EVENTS``.
SWITCH_IN: Final = 0
THROW: Final = 1
SWITCH_OUT: Final = 2
EXIT: Final = 3

#: ``(event code, perf_counter_ns(), raw stack)``
Record = tuple[int, int, RawStack]


class GreenletBuffer:
    """What one profiler recorded for one greenlet.

    Overflow policy: the first ``limit`` records are kept; every later one is
    dropped and counted in ``dropped``. ``count`` never goes down, so draining
    does not make room: a session records at most ``limit`` snapshots per
    greenlet, however long it runs.
    """

    __slots__ = (
        "count",
        "depth",
        "dropped",
        "greenlet_id",
        "greenlet_name",
        "limit",
        "records",
        "thread_id",
    )

    def __init__(
        self,
        *,
        limit: int,
        depth: int,
        greenlet_id: int,
        greenlet_name: str,
        thread_id: int,
    ) -> None:
        self.records: deque[Record] = deque()
        self.limit = limit
        self.depth = depth
        self.count = 0
        self.dropped = 0
        self.greenlet_id = greenlet_id
        self.greenlet_name = greenlet_name
        self.thread_id = thread_id

    def drain(self) -> list[Record]:
        """Take every record appended so far; safe against a concurrent switch path."""
        out: list[Record] = []
        popleft = self.records.popleft
        while True:
            try:
                out.append(popleft())
            except IndexError:
                return out
