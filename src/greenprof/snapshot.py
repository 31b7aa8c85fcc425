"""The recorded data: one :class:`Snapshot` per switch of a profiled greenlet,
and one :class:`Session` per profiling session.

Value objects only; they are built outside the switch path from raw frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from ._validate import check_tags

__all__ = ["EVENTS", "MODES", "Frame", "Session", "Snapshot"]

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
#: - ``start``: the session started in this greenlet, which was running;
#:   ``stack`` is where (the caller of greenprof, e.g. of the decorated
#:   function). Not in ``thread`` mode.
#: - ``stop``: the session stopped in this greenlet, which was running;
#:   ``stack`` is where. Not in ``thread`` mode.
EVENTS: Final = ("switch_in", "throw", "switch_out", "exit", "sample", "start", "stop")

#: What a profiler records; see README.rst, "Modes".
MODES: Final = ("greenlet", "hybrid", "thread")


@attrs.frozen(slots=True, cache_hash=True)
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


@attrs.frozen(slots=True, weakref_slot=False)
class Snapshot:
    """The stack of one profiled greenlet at the moment it switched in or out.

    A plain value: it takes no weak references (one slot less per snapshot,
    and the layout that lets greenprof build it cheaply, see ``_draft_of``).
    """

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


def _check_tags(instance: object, attribute: attrs.Attribute[object], value: object) -> None:
    check_tags(value)


def _bounds(value: Mapping[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    return {int(key): (int(start), int(stop)) for key, (start, stop) in value.items()}


def _ids(value: Iterable[int]) -> frozenset[int]:
    return frozenset(value)


def _tags(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@attrs.frozen(hash=False)
class Session:
    """One profiling session (a ``start()`` .. ``stop()`` of a
    :class:`~greenprof.Profiler`): when it ran, how, and what it is about.

    Files written by :class:`~greenprof.sinks.JSONSink` keep it beside the
    session's snapshots, so a profile read back is the same profile. Its
    fields cannot be reassigned; ``bounds`` and ``tags`` are plain dicts,
    so a Session is not hashable.
    """

    #: The ``session_id`` of the session's snapshots.
    session_id: str
    #: Wall-clock nanoseconds since the epoch, on the snapshots' clock.
    start_ns: int
    #: 0 while the session runs.
    stop_ns: int
    #: ``"greenlet"``, ``"hybrid"`` or ``"thread"``.
    mode: str = "greenlet"
    #: Nanoseconds between two samples (``hybrid`` and ``thread`` modes).
    dump_period_ns: int = 10_000_000
    max_depth: int = 128
    max_snapshots: int = 10_000
    #: Snapshots not kept because a greenlet reached ``max_snapshots``.
    dropped: int = 0
    #: ``greenlet_id`` of each profiled greenlet that was the one running
    #: when it was started.
    running_at_start: frozenset[int] = attrs.field(default=frozenset(), converter=_ids)
    #: ``greenlet_id`` -> ``(start_ns, stop_ns)`` of the part of the session
    #: each profiled greenlet was in; a start of 0 means "from its first
    #: snapshot" (greenlets picked up by ``follow_spawned``).
    bounds: dict[int, tuple[int, int]] = attrs.field(factory=dict, converter=_bounds)
    #: What the session is about: ``{"path": "/checkout", ...}``.
    tags: dict[str, str] = attrs.field(factory=dict, converter=_tags, validator=_check_tags)

    @property
    def duration_ns(self) -> int:
        """``stop_ns - start_ns``, or 0 while it runs."""
        return self.stop_ns - self.start_ns if self.stop_ns else 0


#: The field setters of ``Snapshot``'s slots, in field order. The profiler
#: builds snapshots with them (``object.__new__`` and one call a field),
#: skipping ``__init__``'s keyword parsing and event check: its values are
#: right by construction, and this halves the cost of a snapshot. Where
#: ``SNAPSHOT_DRAFT`` can be had, it uses that instead, cheaper still.
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
    raise RuntimeError("Snapshot's fields changed: update _SNAPSHOT_FIELDS and build()")
SNAPSHOT_SETTERS: Final = tuple(Snapshot.__dict__[name].__set__ for name in _SNAPSHOT_FIELDS)


def _draft_of(cls: type) -> type | None:
    """A plain class with ``cls``'s slots, laid out as ``cls``: an object
    of it takes its fields as plain attribute stores (which the
    interpreter does in a few steps, where a frozen class's slot setter is
    a call of its own) and then becomes a ``cls`` by ``__class__``
    assignment, exactly as ``cls`` would have made it. None where CPython
    refuses that assignment: before 3.12 it does for any class with both
    slots of its own and a ``__weakref__`` slot.

    The assignment raises the ``object.__setattr__`` audit event: an audit
    hook (``sys.addaudithook``) is called once for each object made so."""
    draft = type(f"_{cls.__name__}Draft", (), {"__slots__": cls.__dict__["__slots__"]})
    probe: Any = object.__new__(draft)
    try:
        probe.__class__ = cls
    except TypeError:
        return None
    return draft


#: ``Snapshot``'s draft class (see ``_draft_of``; it has no ``__weakref__``
#: slot, so every CPython greenprof runs on takes it).
SNAPSHOT_DRAFT: Final = _draft_of(Snapshot)


_SESSION_FIELDS: Final = (
    "session_id",
    "start_ns",
    "stop_ns",
    "mode",
    "dump_period_ns",
    "max_depth",
    "max_snapshots",
    "dropped",
    "running_at_start",
    "bounds",
    "tags",
)
if tuple(field.name for field in attrs.fields(Session)) != _SESSION_FIELDS:  # pragma: no cover
    raise RuntimeError("Session's fields changed: update _SESSION_FIELDS")
#: The field setters of ``Session``'s slots, in field order, and its draft
#: class (see ``_draft_of``), or None before 3.12: a kept session's record
#: is made one of these ways, its values right by construction.
SESSION_SETTERS: Final = tuple(Session.__dict__[name].__set__ for name in _SESSION_FIELDS)
SESSION_DRAFT: Final = _draft_of(Session)
