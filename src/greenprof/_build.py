"""Turning raw switch records into :class:`~greenprof.Snapshot` objects, off
the switch path: only when someone reads them or a sink needs them."""

from __future__ import annotations

import itertools
import operator
import os
from collections.abc import Iterable, Sequence
from typing import Any, Final

from ._buffer import GreenletBuffer, Record
from ._stack import FrameFormatter
from .snapshot import EVENTS, SNAPSHOT_DRAFT, SNAPSHOT_SETTERS, Frame, Snapshot

__all__ = ["FORMATTER", "Meta", "Taken", "build", "in_time_order", "meta_of"]

#: Formats raw stacks for every profiler: paths come back again and again.
FORMATTER: Final = FrameFormatter()
os.register_at_fork(after_in_child=FORMATTER.after_fork_in_child)

#: What a build needs of the buffer records came from, in an exact tuple of
#: plain values (kept with its records by a compacting session: nothing the
#: garbage collector tracks): ``(depth, greenlet_id, greenlet_name,
#: thread_id, parent_id, two_writers)``; ``two_writers``: the tracer and a
#: hybrid-mode sampler both appended, so a sample may land a little late.
Meta = tuple[int, int, str, int, int | None, bool]

#: Records of one buffer, as taken from it, and what the build needs of it.
Taken = tuple[Sequence[Record], Meta]


def meta_of(buffer: GreenletBuffer) -> Meta:
    """``buffer``'s Meta (once its session named it)."""
    return (
        buffer.depth,
        buffer.greenlet_id,
        buffer.greenlet_name or "",
        buffer.thread_id,
        buffer.parent_id,
        buffer.sampler is not None,
    )


#: Sort keys: a record's time, and that of a (record, meta) pair.
_by_time: Final = operator.itemgetter(1)


def _by_record_time(pair: tuple[Record, Meta]) -> int:
    return pair[0][1]


def in_time_order(taken: Sequence[Taken]) -> Iterable[tuple[Record, Meta]]:
    """Records taken from several buffers (or from one buffer several
    times), each with its Meta, in time order."""
    if len(taken) == 1:
        records, meta = taken[0]
        if meta[5]:
            records = sorted(records, key=_by_time)
        return zip(records, itertools.repeat(meta))
    merged = [(r, m) for records, m in taken for r in records]
    merged.sort(key=_by_record_time)
    return merged


def build(
    pending: Iterable[tuple[Record, Meta]],
    out: list[Snapshot],
    *,
    session_id: str,
    first_sequence: int,
    offset_ns: int,
) -> None:
    """Append a Snapshot to ``out`` for each record, numbered from
    ``first_sequence``; ``offset_ns`` turns ``perf_counter_ns()`` times into
    wall-clock ones.

    The hot loop of reading a profile: a Snapshot is built as a
    ``SNAPSHOT_DRAFT`` that becomes one, or with its slot setters where
    there is no draft (see ``snapshot.SNAPSHOT_SETTERS``); each raw stack
    is formatted once.
    """
    set_gid, set_name, set_thread, set_event, set_seq, set_time, set_stack, set_session, set_parent = SNAPSHOT_SETTERS  # fmt: skip  # noqa: E501
    draft: type | None = SNAPSHOT_DRAFT
    new = object.__new__
    stack_of = FORMATTER.stack
    raw_of, frames_of = FORMATTER.hits()  # stack_of()'s hit, inlined below
    sequence = first_sequence
    append = out.append
    current: Meta | None = None
    depth = gid = thread = record_gid = 0
    name = record_name = ""
    parent: int | None = None
    last_raw: object = out  # matches no raw stack
    stack: tuple[Frame, ...] = ()
    snapshot: Any
    for record, meta in pending:
        if meta is not current:  # hoisted: usually one buffer throughout
            current = meta
            if meta[0] != depth:
                last_raw = current  # matches no raw stack
            depth, gid, name, thread, parent, _ = meta
        raw = record[2]
        if raw is not last_raw:  # a switch-in shares the switch-out's raw stack
            last_raw = raw
            key = id(raw)
            if raw_of(key) is raw and (found := frames_of(key)) is not None and len(found) <= depth:
                stack = found  # formatted before: the common case
            else:
                stack = stack_of(raw, depth)
        if len(record) == 5:  # a thread-mode sample, labelled
            record_gid = record[3]
            record_name = record[4]
        else:
            record_gid = gid
            record_name = name
        if draft is not None:
            snapshot = new(draft)
            snapshot.greenlet_id = record_gid
            snapshot.greenlet_name = record_name
            snapshot.thread_id = thread
            snapshot.event = EVENTS[record[0]]
            snapshot.sequence = sequence
            snapshot.timestamp_ns = offset_ns + record[1]
            snapshot.stack = stack
            snapshot.session_id = session_id
            snapshot.parent_id = parent
            snapshot.__class__ = Snapshot
        else:
            snapshot = new(Snapshot)
            set_gid(snapshot, record_gid)
            set_name(snapshot, record_name)
            set_thread(snapshot, thread)
            set_event(snapshot, EVENTS[record[0]])
            set_seq(snapshot, sequence)
            set_time(snapshot, offset_ns + record[1])
            set_stack(snapshot, stack)
            set_session(snapshot, session_id)
            set_parent(snapshot, parent)
        append(snapshot)
        sequence += 1
