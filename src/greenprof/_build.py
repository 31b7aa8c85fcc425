"""Turning raw switch records into :class:`~greenprof.Snapshot` objects, off
the switch path: only when someone reads them or a sink needs them."""

from __future__ import annotations

import itertools
import operator
import os
from collections.abc import Iterable, Sequence
from typing import Final

from ._buffer import GreenletBuffer, Record
from ._stack import FrameFormatter
from .snapshot import EVENTS, SNAPSHOT_SETTERS, Frame, Snapshot

__all__ = ["FORMATTER", "build", "in_time_order"]

#: Formats raw stacks for every profiler: paths come back again and again.
FORMATTER: Final = FrameFormatter()
os.register_at_fork(after_in_child=FORMATTER.after_fork_in_child)

#: Sort keys: a record's time, and that of a (record, buffer) pair.
_by_time: Final = operator.itemgetter(1)


def _by_record_time(pair: tuple[Record, GreenletBuffer]) -> int:
    return pair[0][1]


def in_time_order(
    drained: Sequence[tuple[list[Record], GreenletBuffer]],
) -> Iterable[tuple[Record, GreenletBuffer]]:
    """Records of several buffers, each with its buffer, in time order."""
    if len(drained) == 1:
        records, buffer = drained[0]
        if buffer.sampler is not None:
            # Two writers (the tracer, the hybrid sampler): a sample may land
            # a little late. One writer appends in order.
            records.sort(key=_by_time)
        return zip(records, itertools.repeat(buffer))
    merged = [(r, b) for records, b in drained for r in records]
    merged.sort(key=_by_record_time)
    return merged


def build(
    pending: Iterable[tuple[Record, GreenletBuffer]],
    out: list[Snapshot],
    *,
    session_id: str,
    first_sequence: int,
    offset_ns: int,
) -> None:
    """Append a Snapshot to ``out`` for each record, numbered from
    ``first_sequence``; ``offset_ns`` turns ``perf_counter_ns()`` times into
    wall-clock ones.

    The hot loop of reading a profile: a Snapshot is built with its slot
    setters (see ``snapshot.SNAPSHOT_SETTERS``), and each raw stack is
    formatted once.
    """
    set_gid, set_name, set_thread, set_event, set_seq, set_time, set_stack, set_session, set_parent = SNAPSHOT_SETTERS  # fmt: skip  # noqa: E501
    new = object.__new__
    stack_of = FORMATTER.stack
    stacks: dict[tuple[int, int], tuple[Frame, ...]] = {}
    sequence = first_sequence
    append = out.append
    current: GreenletBuffer | None = None
    depth = gid = thread = 0
    name = ""
    parent: int | None = None
    for record, buffer in pending:
        if buffer is not current:  # hoisted: usually one buffer throughout
            current = buffer
            depth, gid = buffer.depth, buffer.greenlet_id
            name = buffer.greenlet_name or ""  # named by its session before building
            thread, parent = buffer.thread_id, buffer.parent_id
        raw = record[2]
        done = raw.frames if raw is not None and raw.height <= depth else None
        if done is not None:
            stack = done  # formatted already, and not too deep
        else:
            key = (id(raw), depth)
            cached = stacks.get(key)
            if cached is None:
                cached = stacks[key] = stack_of(raw, depth)
            stack = cached
        snapshot = new(Snapshot)
        if len(record) == 5:  # a thread-mode sample, labelled
            set_gid(snapshot, record[3])
            set_name(snapshot, record[4])
        else:
            set_gid(snapshot, gid)
            set_name(snapshot, name)
        set_thread(snapshot, thread)
        set_event(snapshot, EVENTS[record[0]])
        set_seq(snapshot, sequence)
        set_time(snapshot, offset_ns + record[1])
        set_stack(snapshot, stack)
        set_session(snapshot, session_id)
        set_parent(snapshot, parent)
        append(snapshot)
        sequence += 1
