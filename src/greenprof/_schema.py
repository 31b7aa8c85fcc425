"""The greenprof snapshot file: JSON Lines, versioned.

Schema version 1 (documented in README.rst, "The snapshot file"):

- line 1, the header: ``{"format": "greenprof-snapshots", "version": 1}``;
  it may appear again further down (files several writers appended to);
- every other line: ``{"type": "snapshot", "session_id": str, "sequence": int,
  "timestamp_ns": int, "event": str, "greenlet_id": int, "greenlet_name": str,
  "thread_id": int, "stack": [[filename, function, lineno], ...]}`` with the
  stack outermost frame first, and ``"parent_id": int`` for greenlets
  profiled because a profiled greenlet spawned them.

Readers ignore keys they do not know and lines whose ``type`` they do not
know; a new version number means a change old readers cannot follow.
"""

from __future__ import annotations

import json
import os
from typing import Any, Final

from .exceptions import LoadError, UnsupportedFormatError
from .snapshot import EVENTS, Frame, Snapshot

FORMAT: Final = "greenprof-snapshots"
VERSION: Final = 1

__all__ = ["FORMAT", "VERSION", "encode_header", "encode_snapshot", "load"]


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


def load(path: str | os.PathLike[str]) -> list[Snapshot]:
    """Read a file written by :class:`~greenprof.sinks.JSONSink`.

    Returns the snapshots in file order, equal to the ones that were written.
    Raises :class:`~greenprof.exceptions.LoadError` (with the line number)
    for anything that is not such a file.
    """
    name = os.fspath(path)
    snapshots: list[Snapshot] = []
    frames: dict[tuple[str, str, int], Frame] = {}
    seen_header = False
    with open(name, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                msg = f"{name}, line {number}: not JSON ({exc})."
                raise LoadError(msg) from None
            if not isinstance(obj, dict):
                msg = f"{name}, line {number}: expected a JSON object, got {line.strip()[:60]!r}."
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
            if obj.get("type") != "snapshot":
                continue
            snapshots.append(_decode_snapshot(name, number, obj, frames))
    if not seen_header:
        msg = f"{name} is empty; a greenprof.sinks.JSONSink file starts with a header line."
        raise LoadError(msg)
    return snapshots


def _check_header(name: str, number: int, obj: dict[str, Any]) -> None:
    if obj.get("format") != FORMAT:
        msg = f"{name}, line {number}: format {obj.get('format')!r} is not {FORMAT!r}."
        raise UnsupportedFormatError(msg)
    if obj.get("version") != VERSION:
        msg = (
            f"{name}, line {number}: schema version {obj.get('version')!r}; this "
            f"greenprof reads version {VERSION}. Upgrade greenprof to read it."
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
            key = (str(filename), str(function), _int(lineno))
            frame = frames.get(key)
            if frame is None:
                frame = frames[key] = Frame(*key)
            stack.append(frame)
        event = obj["event"]
        if event not in EVENTS:
            msg = f"unknown event {event!r}"
            raise ValueError(msg)
        return Snapshot(
            greenlet_id=_int(obj["greenlet_id"]),
            greenlet_name=str(obj["greenlet_name"]),
            thread_id=_int(obj["thread_id"]),
            event=event,
            sequence=_int(obj["sequence"]),
            timestamp_ns=_int(obj["timestamp_ns"]),
            stack=tuple(stack),
            session_id=str(obj.get("session_id", "")),
            parent_id=None if obj.get("parent_id") is None else _int(obj["parent_id"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        msg = f"{name}, line {number}: not a valid snapshot ({detail})."
        raise LoadError(msg) from None


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"expected a whole number, got {value!r}"
        raise TypeError(msg)
    return value
