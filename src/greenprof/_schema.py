"""The greenprof snapshot file: JSON Lines, versioned.

Schema version 2 (documented in README.rst, "The snapshot file"):

- the header: ``{"format": "greenprof-snapshots", "version": 2}``; it may
  appear again further down (files several writers appended to);
- a snapshot: ``{"type": "snapshot", "session_id": str, "sequence": int,
  "timestamp_ns": int, "event": str, "greenlet_id": int, "greenlet_name": str,
  "thread_id": int, "stack": [[filename, function, lineno], ...]}`` with the
  stack outermost frame first, and ``"parent_id": int`` for greenlets
  profiled because a profiled greenlet spawned them;
- a session, written when it stops, after its snapshots: ``{"type":
  "session", "session_id": str, "start_ns": int, "stop_ns": int, "mode": str,
  "dump_period_ns": int, "max_depth": int, "max_snapshots": int, "dropped":
  int, "running_at_start": [greenlet_id, ...], "bounds": [[greenlet_id,
  start_ns, stop_ns], ...], "tags": {str: str}}``.

Version 1 is the same without session lines (and without the ``start`` and
``stop`` events); it still loads. Readers ignore keys they do not know and
lines whose ``type`` they do not know; a new version number means a change
old readers cannot follow. A line that is not JSON after the header (a write
cut short: a full disk, a killed process) is skipped and counted, so one torn
write never makes the rest of a file unreadable. Every number fits in 64 bits
(from -2**63 to 2**64 - 1), as the pprof and SkyWalking messages need.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import reprlib
from collections.abc import Generator
from typing import Any, Final

import attrs

from ._protowire import MIN_VARINT, VARINT_LIMIT
from .exceptions import LoadError, UnsupportedFormatError
from .snapshot import EVENTS, MODES, Frame, Session, Snapshot

FORMAT: Final = "greenprof-snapshots"
VERSION: Final = 2
#: The schema versions this greenprof reads.
READABLE: Final = (1, 2)

__all__ = [
    "FORMAT",
    "VERSION",
    "Recording",
    "encode_header",
    "encode_session",
    "decode_line",
    "encode_snapshot",
    "load",
    "read",
]

_logger = logging.getLogger("greenprof")

#: What to do about a line that is JSON but not a record greenprof writes.
_FIX_LINE: Final = (
    "greenprof writes no such line: remove or fix it (or the program that wrote it) "
    "to read the rest of the file."
)


@attrs.frozen
class Recording:
    """Everything a snapshot file holds."""

    snapshots: list[Snapshot]
    sessions: list[Session]
    #: Line numbers of lines that were not JSON (torn writes), skipped.
    damaged: list[int]


def encode_header() -> str:
    return json.dumps({"format": FORMAT, "version": VERSION})


def encode_snapshot(snapshot: Snapshot) -> str:
    return json.dumps(
        {
            "type": "snapshot",
            "session_id": snapshot.session_id,
            "sequence": snapshot.sequence,
            "timestamp_ns": snapshot.timestamp_ns,
            "event": snapshot.event,
            "greenlet_id": snapshot.greenlet_id,
            "greenlet_name": snapshot.greenlet_name,
            "thread_id": snapshot.thread_id,
            "stack": [[f.filename, f.function, f.lineno] for f in snapshot.stack],
            **({} if snapshot.parent_id is None else {"parent_id": snapshot.parent_id}),
        },
        separators=(",", ":"),
    )


def encode_session(session: Session) -> str:
    return json.dumps(
        {
            "type": "session",
            "session_id": session.session_id,
            "start_ns": session.start_ns,
            "stop_ns": session.stop_ns,
            "mode": session.mode,
            "dump_period_ns": session.dump_period_ns,
            "max_depth": session.max_depth,
            "max_snapshots": session.max_snapshots,
            "dropped": session.dropped,
            "running_at_start": sorted(session.running_at_start),
            "bounds": [[gid, start, stop] for gid, (start, stop) in session.bounds.items()],
            "tags": session.tags,
        },
        separators=(",", ":"),
    )


def load(path: str | os.PathLike[str]) -> list[Snapshot]:
    """Read the snapshots of a file written by :class:`~greenprof.sinks.JSONSink`.

    Returns them in file order, equal to the ones that were written (of
    schema version 1 or 2). Raises :class:`~greenprof.exceptions.LoadError`
    (with the line number) for anything that is not such a file. For the
    sessions too, and where the time went, use
    :meth:`greenprof.Report.from_file`.
    """
    return read(path).snapshots


def read(path: str | os.PathLike[str]) -> Recording:
    """Everything in a snapshot file: snapshots, sessions and damaged lines."""
    name = os.fspath(path)
    snapshots: list[Snapshot] = []
    sessions: list[Session] = []
    damaged: list[int] = []
    frames: dict[tuple[str, str, int], Frame] = {}
    seen_header = False
    with contextlib.closing(_lines(name)) as numbered:
        for number, raw in numbered:
            if not raw.strip():
                continue
            obj = _parse(raw)
            if isinstance(obj, _NotJSON):
                if not seen_header:
                    msg = (
                        f"{name} is not a greenprof snapshot file: line {number} is not JSON "
                        f"text{obj.reason}. Pass a file written by greenprof.sinks.JSONSink "
                        "or greenprof run."
                    )
                    raise LoadError(msg)
                damaged.append(number)
                continue
            if not isinstance(obj, dict):
                msg = (
                    f"{name}, line {number}: expected a JSON object, got {_excerpt(raw)}. "
                    f"{_FIX_LINE}"
                )
                raise LoadError(msg)
            if "format" in obj and "type" not in obj:
                _check_header(name, number, obj)
                seen_header = True
                continue
            if not seen_header:
                msg = (
                    f"{name} does not start with a greenprof header line; "
                    "is it a file written by greenprof.sinks.JSONSink?"
                )
                raise LoadError(msg)
            kind = obj.get("type")
            if kind == "snapshot":
                snapshots.append(_decode_snapshot(name, number, obj, frames))
            elif kind == "session":
                sessions.append(_decode_session(name, number, obj))
    if not seen_header:
        msg = f"{name} is empty; a greenprof.sinks.JSONSink file starts with a header line."
        raise LoadError(msg)
    if damaged:
        _logger.warning(
            "greenprof: %s: skipped %d damaged line(s) (writes cut short), first at line %d.",
            name,
            len(damaged),
            damaged[0],
        )
    return Recording(snapshots, sessions, damaged)


def decode_line(
    raw: bytes, frames: dict[tuple[str, str, int], Frame], *, name: str = "", number: int = 0
) -> Snapshot | Session | None:
    """The snapshot or session on one line of a snapshot file whose header
    was read already; None for a header, a line of an unknown type, or a
    line that is not JSON (a torn write). LoadError for a record that is
    not valid. ``frames`` interns equal frames across calls."""
    if not raw.strip():
        return None
    obj = _parse(raw)
    if isinstance(obj, _NotJSON) or not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if kind == "snapshot":
        return _decode_snapshot(name, number, obj, frames)
    if kind == "session":
        return _decode_session(name, number, obj)
    return None


def _lines(name: str) -> Generator[tuple[int, bytes], None, None]:
    """The file's lines and their numbers; LoadError if it cannot be read."""
    try:
        with open(name, "rb") as file:
            yield from enumerate(file, 1)
    except OSError as exc:
        raise LoadError(_unreadable(name, exc)) from exc


def _unreadable(name: str, exc: OSError) -> str:
    """Why ``name`` cannot be read, and what to pass instead."""
    wanted = "a file written by greenprof.sinks.JSONSink or greenprof run"
    if isinstance(exc, FileNotFoundError):
        return f"cannot read {name}: there is no such file. Check the path: pass {wanted}."
    if isinstance(exc, IsADirectoryError):
        return f"cannot read {name}: it is a folder. Pass {wanted}, not its folder."
    if isinstance(exc, PermissionError):
        return f"cannot read {name}: permission denied. Make it readable, or pass a readable copy."
    return f"cannot read {name}: {exc.strerror or exc}. Pass {wanted}, on a disk that can be read."


@attrs.frozen
class _NotJSON:
    """A line that is not JSON text (a torn write, or not greenprof's file)."""

    #: Why, for the reader: empty, or " (it is not UTF-8)" and the like.
    reason: str


def _parse(raw: bytes) -> object:
    """The JSON value of one line, or a :class:`_NotJSON` saying why it has none."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _NotJSON(" (it is not UTF-8)")
    try:
        return json.loads(text)
    except RecursionError:  # '[' * 100_000: nested deeper than the parser recurses
        return _NotJSON(" (it nests too deep to read)")
    except ValueError:
        return _NotJSON("")


def _excerpt(raw: bytes) -> str:
    return repr(raw.decode("utf-8", "replace").strip()[:60])


def _check_header(name: str, number: int, obj: dict[str, Any]) -> None:
    if obj.get("format") != FORMAT:
        msg = (
            f"{name}, line {number}: format {_shown(obj.get('format'))} is not {FORMAT!r}. "
            "Pass a file written by greenprof.sinks.JSONSink or greenprof run."
        )
        raise UnsupportedFormatError(msg)
    version = obj.get("version")
    # True is an int to Python, and no version; nor is one below the first.
    if type(version) is not int or version < min(READABLE):
        msg = (
            f"{name}, line {number}: schema version {_shown(version)} is no version "
            f"greenprof ever wrote, so this header is damaged; greenprof writes "
            f"{encode_header()}. Fix that line to read the file."
        )
        raise LoadError(msg)
    if version not in READABLE:
        msg = (
            f"{name}, line {number}: schema version {version!r}; this greenprof "
            f"reads versions {', '.join(map(str, READABLE))}. Upgrade greenprof to read it."
        )
        raise UnsupportedFormatError(msg)


def _decode_snapshot(
    name: str,
    number: int,
    obj: dict[str, Any],
    frames: dict[tuple[str, str, int], Frame],
) -> Snapshot:
    try:
        stack = []
        for filename, function, lineno in obj["stack"]:
            key = (_str(filename), _str(function), _int(lineno))
            frame = frames.get(key)
            if frame is None:
                frame = frames[key] = Frame(*key)
            stack.append(frame)
        event = obj["event"]
        if event not in EVENTS:
            msg = f"unknown event {_shown(event)}"
            raise ValueError(msg)
        return Snapshot(
            greenlet_id=_int(obj["greenlet_id"]),
            greenlet_name=_str(obj["greenlet_name"]),
            thread_id=_int(obj["thread_id"]),
            event=event,
            sequence=_int(obj["sequence"]),
            timestamp_ns=_int(obj["timestamp_ns"]),
            stack=tuple(stack),
            session_id=_str(obj.get("session_id", "")),
            parent_id=None if obj.get("parent_id") is None else _int(obj["parent_id"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        msg = f"{name}, line {number}: not a valid snapshot ({detail}). {_FIX_LINE}"
        raise LoadError(msg) from None


def _decode_session(name: str, number: int, obj: dict[str, Any]) -> Session:
    try:
        tags = obj.get("tags", {})
        if not isinstance(tags, dict):
            msg = f"tags must be an object, not {_shown(tags)}"
            raise TypeError(msg)
        session = Session(
            session_id=_str(obj["session_id"]),
            start_ns=_int(obj["start_ns"]),
            stop_ns=_int(obj["stop_ns"]),
            mode=_str(obj.get("mode", "greenlet")),
            dump_period_ns=_int(obj.get("dump_period_ns", 10_000_000)),
            max_depth=_int(obj.get("max_depth", 128)),
            max_snapshots=_int(obj.get("max_snapshots", 10_000)),
            dropped=_int(obj.get("dropped", 0)),
            running_at_start=frozenset(_int(g) for g in obj.get("running_at_start", ())),
            bounds={
                _int(gid): (_int(start), _int(stop)) for gid, start, stop in obj.get("bounds", ())
            },
            tags={_str(key): _str(value) for key, value in tags.items()},
        )
        _check_session(session)
        return session
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        msg = f"{name}, line {number}: not a valid session ({detail}). {_FIX_LINE}"
        raise LoadError(msg) from None


def _check_session(session: Session) -> None:
    """ValueError for values no greenprof writes: they would make nonsense times."""
    problems = []
    if session.mode not in MODES:
        problems.append(f"mode {session.mode!r} is not one of {', '.join(MODES)}")
    if session.start_ns < 0 or (session.stop_ns and session.stop_ns < session.start_ns):
        problems.append(f"it stops ({session.stop_ns}) before it starts ({session.start_ns})")
    for field in ("dump_period_ns", "max_depth", "max_snapshots"):
        if getattr(session, field) < 1:
            problems.append(f"{field} is {getattr(session, field)}, not >= 1")
    if session.dropped < 0:
        problems.append(f"dropped is {session.dropped}, not >= 0")
    if problems:
        raise ValueError("; ".join(problems))


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"expected a whole number, got {_shown(value)}"
        raise TypeError(msg)
    if not MIN_VARINT <= value < VARINT_LIMIT:
        # No clock, id or line number is this large; pprof and SkyWalking
        # messages could not carry it.
        msg = f"{_shown(value)} does not fit in 64 bits (-2**63 to 2**64 - 1)"
        raise ValueError(msg)
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        msg = f"expected a string, got {_shown(value)}"
        raise TypeError(msg)
    return value


def _shown(value: object) -> str:
    """``repr(value)``, cut short: a line may hold anything, of any size."""
    return reprlib.repr(value)
