"""The few SkyWalking profiling messages, encoded and decoded by hand.

``skywalking.v3`` (profile/Profile.proto, common/Command.proto,
common/Common.proto) messages are tiny; writing their protobuf wire format
here (with ``_protowire``) keeps greenprof free of protobuf and of
descriptor-pool clashes with the SkyWalking agent's own generated stubs.
Zero-valued fields are omitted, which gives bytes identical to protobuf's
own encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from .._protowire import (
    bytes_field,
    fields,
    int_field,
    length_field,
    signed64,
    str_field,
)
from ..exceptions import WireFormatError
from ..snapshot import Frame

SERVICE = "/skywalking.v3.ProfileTask/"
COLLECT_SNAPSHOT = SERVICE + "collectSnapshot"
GET_PROFILE_TASK_COMMANDS = SERVICE + "getProfileTaskCommands"
REPORT_TASK_FINISH = SERVICE + "reportTaskFinish"


# -- encoding -------------------------------------------------------------------------


def code_signature(frame: Frame) -> str:
    """The SkyWalking Python agent's signature of a frame."""
    return f"{frame.filename}.{frame.function}: {frame.lineno}"


def encode_thread_snapshot(
    *, task_id: str, segment_id: str, time_ms: int, sequence: int, signatures: Sequence[str]
) -> bytes:
    """``ThreadSnapshot``; ``signatures`` outermost frame first."""
    stack = b"".join(str_field(1, signature) for signature in signatures)
    return b"".join(
        (
            str_field(1, task_id),
            str_field(2, segment_id),
            int_field(3, time_ms),
            int_field(4, sequence),
            # An empty stack is still a present (empty) message.
            length_field(5, stack),
        )
    )


def encode_command_query(*, service: str, instance: str, last_command_time: int) -> bytes:
    """``ProfileTaskCommandQuery``."""
    return str_field(1, service) + str_field(2, instance) + int_field(3, last_command_time)


def encode_finish_report(*, service: str, instance: str, task_id: str) -> bytes:
    """``ProfileTaskFinishReport``."""
    return str_field(1, service) + str_field(2, instance) + str_field(3, task_id)


# -- decoding ---------------------------------------------------------------------------


@attrs.frozen
class Command:
    """One ``Command``: a name and its string arguments."""

    command: str
    args: dict[str, str]


def decode_commands(data: bytes) -> list[Command]:
    """``Commands`` as the OAP answers every ProfileTask call."""
    commands = []
    for number, value in fields(data):
        if number == 1 and isinstance(value, bytes):
            name = ""
            args: dict[str, str] = {}
            for inner, item in fields(value):
                if inner == 1 and isinstance(item, bytes):
                    name = _text(item)
                elif inner == 2 and isinstance(item, bytes):
                    pair = dict(fields(item))
                    key, val = pair.get(1, b""), pair.get(2, b"")
                    if isinstance(key, bytes) and isinstance(val, bytes):
                        args[_text(key)] = _text(val)
            commands.append(Command(name, args))
    return commands


def encode_commands(commands: Sequence[Command]) -> bytes:
    """``Commands`` (what an OAP sends; used by tests and the fake collector)."""
    out = b""
    for command in commands:
        body = str_field(1, command.command) + b"".join(
            bytes_field(2, str_field(1, key) + str_field(2, value))
            for key, value in command.args.items()
        )
        out += length_field(1, body)  # a Command with nothing set is still sent
    return out


@attrs.frozen
class ThreadSnapshotMessage:
    """A decoded ``ThreadSnapshot`` (tests and the fake collector)."""

    task_id: str
    segment_id: str
    time_ms: int
    sequence: int
    signatures: tuple[str, ...]


def decode_thread_snapshot(data: bytes) -> ThreadSnapshotMessage:
    values: dict[int, int | bytes] = {}
    signatures: list[str] = []
    for number, value in fields(data):
        if number == 5 and isinstance(value, bytes):
            signatures.extend(
                _text(item)
                for inner, item in fields(value)
                if inner == 1 and isinstance(item, bytes)
            )
        else:
            values[number] = value
    task, segment = values.get(1, b""), values.get(2, b"")
    time_ms, sequence = values.get(3, 0), values.get(4, 0)
    if not (
        isinstance(task, bytes)
        and isinstance(segment, bytes)
        and isinstance(time_ms, int)
        and isinstance(sequence, int)
    ):
        msg = "not a ThreadSnapshot"
        raise WireFormatError(msg)
    return ThreadSnapshotMessage(
        _text(task), _text(segment), signed64(time_ms), signed64(sequence), tuple(signatures)
    )


def decode_command_query(data: bytes) -> tuple[str, str, int]:
    """``ProfileTaskCommandQuery`` as (service, instance, lastCommandTime)."""
    values = dict(fields(data))
    service, instance, last = values.get(1, b""), values.get(2, b""), values.get(3, 0)
    if not (isinstance(service, bytes) and isinstance(instance, bytes) and isinstance(last, int)):
        msg = "not a ProfileTaskCommandQuery"
        raise WireFormatError(msg)
    return _text(service), _text(instance), signed64(last)


def decode_finish_report(data: bytes) -> tuple[str, str, str]:
    """``ProfileTaskFinishReport`` as (service, instance, taskId)."""
    values = dict(fields(data))
    parts = [values.get(n, b"") for n in (1, 2, 3)]
    if not all(isinstance(part, bytes) for part in parts):
        msg = "not a ProfileTaskFinishReport"
        raise WireFormatError(msg)
    return tuple(_text(part) for part in parts)  # type: ignore[arg-type,return-value]


def _text(raw: bytes) -> str:
    """A ``string`` field: UTF-8, or the message is not what it claims to be."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"a string field is not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise WireFormatError(msg) from None
