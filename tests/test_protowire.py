"""Protobuf's wire format by hand, judged by protobuf's own encoder and decoder
(its well-known ``Int64Value`` and ``UInt64Value`` messages: field 1, a varint)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import wrappers_pb2

from greenprof._protowire import int_field, read_varint, signed64, varint
from greenprof.exceptions import GreenprofError, WireFormatError

INT64 = [1, 127, 128, 300, 2**31, 2**63 - 1, -1, -2, -300, -(2**31), -(2**63) + 1, -(2**63)]
UINT64 = [2**63, 2**64 - 2, 2**64 - 1]
OUTSIDE_64_BITS = [-(2**63) - 1, -(2**64) + 1, -(2**64), 2**64, 2**64 + 1, 2**70]


@pytest.mark.parametrize("value", INT64)
def test_an_int64_is_written_as_protobuf_writes_it_and_reads_back(value: int) -> None:
    expected = wrappers_pb2.Int64Value(value=value).SerializeToString()
    assert int_field(1, value) == expected
    if value < 0:
        assert len(varint(value)) == 10  # its 64-bit two's complement
    number, end = read_varint(varint(value), 0)
    assert signed64(number) == value
    assert end == len(varint(value))


@pytest.mark.parametrize("value", UINT64)
def test_a_uint64_above_the_int64_range_is_written_as_protobuf_writes_it(value: int) -> None:
    assert int_field(1, value) == wrappers_pb2.UInt64Value(value=value).SerializeToString()
    assert read_varint(varint(value), 0) == (value, 10)


@pytest.mark.parametrize("value", OUTSIDE_64_BITS)
def test_a_number_outside_64_bits_is_refused_like_protobuf_refuses_it(value: int) -> None:
    message = wrappers_pb2.Int64Value if value < 0 else wrappers_pb2.UInt64Value
    with pytest.raises(ValueError, match="out of range"):
        message(value=value)
    with pytest.raises(WireFormatError, match=f"^{value} does not fit in a protobuf") as info:
        varint(value)
    assert "check the snapshots that carry it" in str(info.value)
    assert isinstance(info.value, GreenprofError)


def test_a_number_far_below_minus_2_to_the_64_raises_instead_of_looping_forever() -> None:
    # Shifting a negative number right never reaches 0: the encoder used to
    # loop, its output growing, until memory ran out. A subprocess with a
    # timeout turns such a hang into a failure instead of a stuck test run.
    code = (
        "from greenprof._protowire import varint\n"
        "from greenprof.exceptions import WireFormatError\n"
        "for value in (-2**64 - 1, -2**70, -10**30):\n"
        "    try:\n"
        "        varint(value)\n"
        "    except WireFormatError as exc:\n"
        "        print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [str(-(2**64) - 1), str(-(2**70)), str(-(10**30))]
    assert all("does not fit in a protobuf varint" in line for line in lines)


def test_a_ten_byte_varint_keeps_its_low_64_bits_as_protobuf_does() -> None:
    data = b"\xff" * 9 + b"\x7f"  # bits 64..69 set in the tenth byte
    assert wrappers_pb2.UInt64Value.FromString(b"\x08" + data).value == 2**64 - 1
    assert read_varint(data, 0) == (2**64 - 1, 10)
    assert signed64(read_varint(data, 0)[0]) == -1


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff"])
def test_a_truncated_varint_is_a_wire_format_error(data: bytes) -> None:
    with pytest.raises(WireFormatError, match="truncated varint"):
        read_varint(data, 0)


def test_an_eleven_byte_varint_is_a_wire_format_error() -> None:
    with pytest.raises(WireFormatError, match="varint too long"):
        read_varint(b"\xff" * 10 + b"\x01", 0)
