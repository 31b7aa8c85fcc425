"""The recorded data: one :class:`Snapshot` per switch of a profiled greenlet.

Value objects only; they are built outside the switch path from raw frames.
"""

from __future__ import annotations

from typing import Final

import attrs

__all__ = ["EVENTS", "Frame", "Snapshot"]

#: Every value :attr:`Snapshot.event` can take.
#:
#: - ``switch_in``: the greenlet resumed (or, with an empty stack, ran for the
#:   first time) because another greenlet switched to it.
#: - ``throw``: the greenlet resumed because an exception was thrown into it
#:   (``greenlet.throw()``, gevent's ``kill()`` raising ``GreenletExit``).
#: - ``switch_out``: the greenlet was suspended; ``stack`` is its wait site.
#: - ``exit``: the greenlet finished and left for good; ``stack`` is empty.
#: - ``sample``: a periodic sample (``hybrid`` and ``thread`` modes) of the
#:   greenlet running at that moment; in ``thread`` mode that may be another
#:   greenlet than the one profiled, which is the point of that mode.
EVENTS: Final = ("switch_in", "throw", "switch_out", "exit", "sample")


@attrs.frozen(slots=True)
class Frame:
    """One frame of a stack: where a function was when the snapshot was taken."""

    filename: str
    #: The qualified name (``Class.method``) on Python 3.11+, the bare name on 3.10.
    function: str
    lineno: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


def _check_event(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in EVENTS:
        msg = f"Snapshot.event must be one of {', '.join(EVENTS)}, not {value!r}."
        raise ValueError(msg)


@attrs.frozen(slots=True)
class Snapshot:
    """The stack of one profiled greenlet at the moment it switched in or out."""

    greenlet_id: int
    greenlet_name: str
    #: The OS thread the greenlet runs in (``threading.get_ident()`` of that
    #: thread, as it was before any gevent monkey-patching).
    thread_id: int
    event: str = attrs.field(validator=_check_event)
    #: Position in the profiling session, from 0, without gaps.
    sequence: int
    #: Wall-clock time in nanoseconds since the epoch, monotonic within a
    #: session (derived from a monotonic clock anchored at session start).
    timestamp_ns: int
    #: Outermost frame first, the frame that switched last.
    stack: tuple[Frame, ...]
    #: Identifies the profiling session (one :class:`~greenprof.Profiler`).
    session_id: str = ""
    #: ``greenlet_id`` of the profiled greenlet that spawned this one, when
    #: it is profiled because of ``follow_spawned``; else None.
    parent_id: int | None = None


#: The field setters of ``Snapshot``'s slots, in field order. The profiler
#: builds snapshots with them (``object.__new__`` and one call a field),
#: skipping ``__init__``'s keyword parsing and event check: its values are
#: right by construction, and this halves the cost of a snapshot.
_SNAPSHOT_FIELDS: Final = (
    "greenlet_id",
    "greenlet_name",
    "thread_id",
    "event",
    "sequence",
    "timestamp_ns",
    "stack",
    "session_id",
    "parent_id",
)
if tuple(field.name for field in attrs.fields(Snapshot)) != _SNAPSHOT_FIELDS:  # pragma: no cover
    raise RuntimeError("Snapshot's fields changed: update _SNAPSHOT_FIELDS and _drain()")
SNAPSHOT_SETTERS: Final = tuple(Snapshot.__dict__[name].__set__ for name in _SNAPSHOT_FIELDS)
