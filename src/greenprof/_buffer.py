"""Per-greenlet bounded buffers of raw switch records.

The switch path appends; draining happens later, from any thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

import greenlet

from ._stack import MARKS, RawStack

# Event codes stored on the switch path; indexes into ``snapshot.EVENTS``.
SWITCH_IN: Final = 0
THROW: Final = 1
SWITCH_OUT: Final = 2
EXIT: Final = 3
SAMPLE: Final = 4
START: Final = 5
STOP: Final = 6

#: ``(event code, perf_counter_ns(), raw stack)``, and for thread-mode
#: samples also the ``greenlet_id`` and ``greenlet_name`` of the greenlet
#: that was running.
Record = tuple[int, int, RawStack] | tuple[int, int, RawStack, int, str]


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
        "follow",
        "greenlet_id",
        "greenlet_name",
        "limit",
        "marks",
        "parent_id",
        "records",
        "run",
        "sampler",
        "thread_id",
    )

    def __init__(
        self,
        limit: int,
        depth: int,
        greenlet_id: int,
        greenlet_name: str | None,
        thread_id: int,
        marks: bool = MARKS,
    ) -> None:
        self.records: deque[Record] = deque()
        self.limit = limit
        self.depth = depth
        self.count = 0
        self.dropped = 0
        self.greenlet_id = greenlet_id
        #: None until its session names it (see ``Run._name_targets``).
        self.greenlet_name = greenlet_name
        self.thread_id = thread_id
        #: ``greenlet_id`` of the greenlet that spawned this one, when it was
        #: profiled because its parent was (``follow_spawned``).
        self.parent_id: int | None = None
        #: Called with a greenlet this one spawned; returns the buffer to
        #: record it in, or None when the session is stopping. ``None``:
        #: spawned greenlets are not followed.
        self.follow: Callable[[greenlet.greenlet, GreenletBuffer], GreenletBuffer | None] | None = (
            None
        )
        #: The hybrid-mode sampling session that samples into this buffer
        #: (shared by the greenlets ``follow`` adds); None in other modes.
        self.sampler: object | None = None
        #: A weak reference to the session, when one of its sinks looks at
        #: its greenlets' run slices as they happen (``BlockingMonitor``).
        self.run: Callable[[], object] | None = None
        #: Whether walks for it leave marks in frames (3.12+, see ``_stack``).
        #: False for a session that ``min_duration`` will most likely drop:
        #: marking pays off when the snapshots are read, and costs more than
        #: walking the whole stack on a switch path nobody reads.
        self.marks = marks

    def add(self, record: Record) -> None:
        """Append from outside the switch path (the sampler thread)."""
        if self.count < self.limit:
            self.count += 1
            self.records.append(record)
        else:
            self.dropped += 1

    def drain(self) -> tuple[Record, ...]:
        """Take every record appended so far; safe against a concurrent switch path
        (which only appends, on the right). A tuple: records are exact
        tuples of untracked values, so what holds them is not tracked by the
        garbage collector either, after its first collection."""
        popleft = self.records.popleft
        return tuple([popleft() for _ in range(len(self.records))])
