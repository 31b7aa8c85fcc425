"""Protobuf's wire format by hand: varints and length-delimited fields.

Enough for the few messages greenprof writes (SkyWalking's, pprof's) without
a protobuf runtime. Scalar fields at their zero value are omitted, as
protobuf's own encoder does for proto3, so the bytes match it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from .exceptions import WireFormatError

VARINT: Final = 0
LENGTH: Final = 2
#: A varint holds 64 bits: an ``int64`` from -2**63, a ``uint64`` up to 2**64 - 1.
MIN_VARINT: Final = -(1 << 63)
VARINT_LIMIT: Final = 1 << 64


# -- encoding -------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """``value`` as protobuf writes an ``int64``, ``int32`` or ``uint64``: a
    negative one as its 64-bit two's complement, in ten bytes.

    A number outside 64 bits is refused: shifting a negative one right never
    reaches 0, and wrapping it would write another number.
    """
    if not MIN_VARINT <= value < VARINT_LIMIT:
        msg = (
            f"{value} does not fit in a protobuf varint, which holds 64-bit numbers "
            f"({MIN_VARINT} to {VARINT_LIMIT - 1}). No Python program makes a greenlet id, "
            "timestamp or line number like it: check the snapshots that carry it."
        )
        raise WireFormatError(msg)
    if value < 0:
        value += VARINT_LIMIT
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def int_field(number: int, value: int) -> bytes:
    """A varint field (``int32``, ``int64``, ``uint64``, ``bool``); omitted at 0."""
    return key(number, VARINT) + varint(value) if value else b""


def length_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field written even when empty: an embedded message
    that must be present, or one element of a ``repeated string``."""
    return key(number, LENGTH) + varint(len(payload)) + payload


def bytes_field(number: int, value: bytes) -> bytes:
    """A ``bytes`` field; omitted when empty."""
    return length_field(number, value) if value else b""


def str_field(number: int, value: str) -> bytes:
    """A ``string`` field; omitted when empty."""
    return bytes_field(number, value.encode())


def packed_field(number: int, values: Iterable[int]) -> bytes:
    """A packed ``repeated`` varint field (proto3's default); omitted when empty."""
    return bytes_field(number, b"".join(varint(value) for value in values))


# -- decoding ---------------------------------------------------------------------------


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(data):
            msg = "truncated varint"
            raise WireFormatError(msg)
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            # Bits past the 64th of a ten-byte varint are dropped, as protobuf does.
            return result & (VARINT_LIMIT - 1), pos
        shift += 7
        if shift > 63:
            msg = "varint too long"
            raise WireFormatError(msg)


def fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """``(field number, value)`` pairs: an int for varints, bytes otherwise."""
    pos = 0
    while pos < len(data):
        number_and_type, pos = read_varint(data, pos)
        number, wire_type = number_and_type >> 3, number_and_type & 7
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
            yield number, value
        elif wire_type == LENGTH:
            length, pos = read_varint(data, pos)
            if pos + length > len(data):
                msg = "truncated field"
                raise WireFormatError(msg)
            yield number, data[pos : pos + length]
            pos += length
        elif wire_type == 1:  # fixed64
            pos += 8
        elif wire_type == 5:  # fixed32
            pos += 4
        else:
            msg = f"unsupported wire type {wire_type}"
            raise WireFormatError(msg)


def signed64(value: int) -> int:
    """An ``int64`` read as an unsigned varint, back to its sign."""
    return value - (1 << 64) if value >= 1 << 63 else value
