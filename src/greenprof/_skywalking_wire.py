"""The few SkyWalking profiling messages, encoded and decoded by hand.

``skywalking.v3`` (profile/Profile.proto, common/Command.proto,
common/Common.proto) messages are tiny; writing their protobuf wire format
here keeps greenprof free of protobuf and of descriptor-pool clashes with
the SkyWalking agent's own generated stubs. Zero-valued fields are omitted,
which gives bytes identical to protobuf's own encoder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import attrs

from .snapshot import Frame

SERVICE = "/skywalking.v3.ProfileTask/"
COLLECT_SNAPSHOT = SERVICE + "collectSnapshot"
GET_PROFILE_TASK_COMMANDS = SERVICE + "getProfileTaskCommands"
REPORT_TASK_FINISH = SERVICE + "reportTaskFinish"

_VARINT = 0
_LENGTH = 2


# -- encoding -------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 and int32 negatives take ten bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _int_field(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(value) if value else b""


def _bytes_field(number: int, value: bytes) -> bytes:
    return _key(number, _LENGTH) + _varint(len(value)) + value if value else b""


def _str_field(number: int, value: str) -> bytes:
    return _bytes_field(number, value.encode())


def code_signature(frame: Frame) -> str:
    """The SkyWalking Python agent's signature of a frame."""
    return f"{frame.filename}.{frame.function}: {frame.lineno}"


def encode_thread_snapshot(
    *, task_id: str, segment_id: str, time_ms: int, sequence: int, signatures: Sequence[str]
) -> bytes:
    """``ThreadSnapshot``; ``signatures`` outermost frame first."""
    stack = b"".join(_str_field(1, signature) for signature in signatures)
    return b"".join(
        (
            _str_field(1, task_id),
            _str_field(2, segment_id),
            _int_field(3, time_ms),
            _int_field(4, sequence),
            # An empty stack is still a present (empty) message.
            _key(5, _LENGTH) + _varint(len(stack)) + stack,
        )
    )


def encode_command_query(*, service: str, instance: str, last_command_time: int) -> bytes:
    """``ProfileTaskCommandQuery``."""
    return _str_field(1, service) + _str_field(2, instance) + _int_field(3, last_command_time)


def encode_finish_report(*, service: str, instance: str, task_id: str) -> bytes:
    """``ProfileTaskFinishReport``."""
    return _str_field(1, service) + _str_field(2, instance) + _str_field(3, task_id)


# -- decoding ---------------------------------------------------------------------------


class WireError(ValueError):
    """Bytes that are not the protobuf message they should be."""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            msg = "truncated varint"
            raise WireError(msg)
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            msg = "varint too long"
            raise WireError(msg)


def fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """``(field number, value)`` pairs: an int for varints, bytes otherwise."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
            yield number, value
        elif wire_type == _LENGTH:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                msg = "truncated field"
                raise WireError(msg)
            yield number, data[pos : pos + length]
            pos += length
        elif wire_type == 1:  # fixed64
            pos += 8
        elif wire_type == 5:  # fixed32
            pos += 4
        else:
            msg = f"unsupported wire type {wire_type}"
            raise WireError(msg)


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


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
                    name = item.decode()
                elif inner == 2 and isinstance(item, bytes):
                    pair = dict(fields(item))
                    key, val = pair.get(1, b""), pair.get(2, b"")
                    if isinstance(key, bytes) and isinstance(val, bytes):
                        args[key.decode()] = val.decode()
            commands.append(Command(name, args))
    return commands


def encode_commands(commands: Sequence[Command]) -> bytes:
    """``Commands`` (what an OAP sends; used by tests and the fake collector)."""
    out = b""
    for command in commands:
        body = _str_field(1, command.command) + b"".join(
            _bytes_field(2, _str_field(1, key) + _str_field(2, value))
            for key, value in command.args.items()
        )
        out += _bytes_field(1, body) if body else _key(1, _LENGTH) + b"\x00"
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
                item.decode()
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
        raise WireError(msg)
    return ThreadSnapshotMessage(
        task.decode(), segment.decode(), _signed64(time_ms), _signed64(sequence), tuple(signatures)
    )


def decode_command_query(data: bytes) -> tuple[str, str, int]:
    """``ProfileTaskCommandQuery`` as (service, instance, lastCommandTime)."""
    values = dict(fields(data))
    service, instance, last = values.get(1, b""), values.get(2, b""), values.get(3, 0)
    if not (isinstance(service, bytes) and isinstance(instance, bytes) and isinstance(last, int)):
        msg = "not a ProfileTaskCommandQuery"
        raise WireError(msg)
    return service.decode(), instance.decode(), _signed64(last)


def decode_finish_report(data: bytes) -> tuple[str, str, str]:
    """``ProfileTaskFinishReport`` as (service, instance, taskId)."""
    values = dict(fields(data))
    parts = [values.get(n, b"") for n in (1, 2, 3)]
    if not all(isinstance(part, bytes) for part in parts):
        msg = "not a ProfileTaskFinishReport"
        raise WireError(msg)
    return tuple(part.decode() for part in parts)  # type: ignore[union-attr,return-value]
