"""pprof's ``profile.proto``, gzipped: what ``go tool pprof`` and Pyroscope read.

One file carries three sample types, in this order: ``on_cpu`` and
``off_cpu`` (nanoseconds) and ``snapshots`` (count); ``weight`` picks the
``default_sample_type`` tools show first. There is one sample per greenlet
and exact stack, so stacks of different greenlets never merge, and each
sample has these labels:

- ``greenlet``: ``"name [0xid]"``, as the other exporters name a greenlet
  (``go tool pprof -tagfocus=greenlet=worker``; ``-tagroot=greenlet`` puts
  each greenlet at the root of its stacks);
- ``greenlet_name``: the name alone (absent when the greenlet has none);
- ``greenlet_id``: the id, a numeric label.

With ``group_by`` (or for a merged report), samples merge the greenlets
instead: one per tag value and stack, labelled with the tag
(``-tagfocus=path=/checkout``, ``-tagroot=path``).

Every location is one Python frame (a function at a line), in a single
mapping that says functions, file names and lines are known, so pprof does
not try to symbolize anything; a function's ``system_name`` is left empty,
so pprof never runs a name such as ``<module>`` through its demangler. A
stack that is empty (a greenlet's first switch-in, its exit, its time before
any frame was seen) is shown as a pseudo-frame, ``<greenlet start>`` or
``<greenlet exit>``: every sample has a location. ``time_nanos`` is the
profile's start and ``duration_nanos`` its span. The bytes depend only on
the recorded data (samples are sorted and gzip's timestamp is 0), so a file
read back with :meth:`greenprof.Report.from_file` gives the same profile.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from typing import Final

from .._protowire import int_field, length_field, packed_field
from .._report import Report
from ..snapshot import Frame
from ._common import (
    WEIGHTS,
    Stack,
    Weight,
    check_weight,
    greenlet_label,
    grouped,
    origin_ns,
    stack_values,
)

__all__ = ["UNITS", "Tables", "encode_profile", "pprof"]

#: The unit of each sample type; the types are the weights, in ``WEIGHTS`` order.
UNITS: Final = {"on_cpu": "nanoseconds", "off_cpu": "nanoseconds", "snapshots": "count"}
_COMMENT: Final = "greenprof: on-CPU and off-CPU time and snapshots per greenlet and stack"
_MAPPING_ID: Final = 1


class Tables:
    """The tables samples point into: strings, functions and locations.

    Each entry is added the first time it is used, so ids and indices follow
    the order samples are written in.
    """

    def __init__(self) -> None:
        #: ``Profile.string_table``: each string once, ``""`` at index 0.
        self.strings: dict[str, int] = {"": 0}
        self.functions: dict[tuple[str, str], int] = {}
        self.locations: dict[Frame, int] = {}
        self.function_messages: list[bytes] = []
        self.location_messages: list[bytes] = []

    def string(self, text: str) -> int:
        index = self.strings.get(text)
        if index is None:
            index = self.strings[text] = len(self.strings)
        return index

    def location(self, frame: Frame) -> int:
        """The id of ``frame``'s location: one function at one line."""
        location_id = self.locations.get(frame)
        if location_id is not None:
            return location_id
        function_id = self.functions.get((frame.function, frame.filename))
        if function_id is None:
            function_id = len(self.functions) + 1
            self.functions[(frame.function, frame.filename)] = function_id
            # No system_name (field 3): pprof demangles a name equal to it,
            # and turns <module> and <lambda> into "[python]".
            self.function_messages.append(
                int_field(1, function_id)
                + int_field(2, self.string(frame.function))
                + int_field(4, self.string(frame.filename))
            )
        location_id = self.locations[frame] = len(self.locations) + 1
        line = int_field(1, function_id) + int_field(2, frame.lineno)
        self.location_messages.append(
            int_field(1, location_id) + int_field(2, _MAPPING_ID) + length_field(4, line)
        )
        return location_id

    def sample(
        self, greenlet_id: int, name: str, stack: Stack, values: list[int], tag: str | None
    ) -> bytes:
        if tag is not None:  # a merged report: name is "tag=value"
            labels = [(tag, name.partition("=")[2])] if tag else []
            return self.labelled_sample(stack, values, labels)
        labels = [("greenlet", greenlet_label(greenlet_id, name))]
        if name:  # an empty string label is no label to pprof
            labels.append(("greenlet_name", name))
        return self.labelled_sample(stack, values, labels, numbers=[("greenlet_id", greenlet_id)])

    def labelled_sample(
        self,
        stack: Stack,
        values: list[int],
        labels: Iterable[tuple[str, str]],
        *,
        numbers: Iterable[tuple[str, int]] = (),
    ) -> bytes:
        """One sample: ``stack`` (outermost first), its values in sample type
        order, string labels and numeric ones."""
        encoded = [self.label(key, text=text) for key, text in labels]
        encoded += [self.label(key, number=number) for key, number in numbers]
        return (
            packed_field(1, [self.location(frame) for frame in reversed(stack)])  # leaf first
            + packed_field(2, values)
            + _messages(3, encoded)
        )

    def value_type(self, kind: str, unit: str) -> bytes:
        return int_field(1, self.string(kind)) + int_field(2, self.string(unit))

    def label(self, key: str, *, text: str = "", number: int = 0) -> bytes:
        return (
            int_field(1, self.string(key)) + int_field(2, self.string(text)) + int_field(3, number)
        )


def _messages(number: int, messages: Iterable[bytes]) -> bytes:
    return b"".join(length_field(number, message) for message in messages)


def _order(item: tuple[tuple[int, str, Stack], list[int]]) -> tuple[object, ...]:
    (greenlet_id, name, stack), _ = item
    return greenlet_id, name, [(f.filename, f.lineno, f.function) for f in stack]


def pprof(report: Report, *, weight: Weight = "on_cpu", group_by: str | None = None) -> bytes:
    """The report as a gzipped pprof profile (see this module's docstring)."""
    check_weight(weight)
    tables = Tables()
    sample_types = [tables.value_type(kind, UNITS[kind]) for kind in WEIGHTS]
    samples = []
    for _, part in grouped(report, group_by):
        # A merged report's samples carry its tag (none if it was not grouped by one).
        tag = group_by if group_by is not None else ("" if part.merged_as is not None else None)
        samples += [
            tables.sample(greenlet_id, name, stack, values, tag)
            for (greenlet_id, name, stack), values in sorted(stack_values(part).items(), key=_order)
        ]

    ends = [s.stop_ns for s in report.sessions]
    ends += [s.start_ns + s.duration_ns for s in report.segments]
    last = report.last_snapshot_ns
    ends += [last] if last is not None else []
    start = origin_ns(report)
    return encode_profile(
        tables,
        sample_types,
        samples,
        default_sample_type=weight,
        start_ns=start,
        duration_ns=max(0, max(ends, default=start) - start),
    )


def encode_profile(
    tables: Tables,
    sample_types: list[bytes],
    samples: list[bytes],
    *,
    default_sample_type: str,
    start_ns: int,
    duration_ns: int,
    comment: str = _COMMENT,
) -> bytes:
    """The gzipped ``Profile`` of ``samples`` (made with ``tables``), whose
    values follow ``sample_types`` (made with :meth:`Tables.value_type`)."""
    mapping = (
        int_field(1, _MAPPING_ID)
        + int_field(5, tables.string("python"))
        + int_field(7, True)  # has_functions
        + int_field(8, True)  # has_filenames
        + int_field(9, True)  # has_line_numbers
    )
    period_type = tables.value_type("on_cpu", UNITS["on_cpu"])
    comment_index = tables.string(comment)
    default_index = tables.string(default_sample_type)
    profile = b"".join(
        (
            _messages(1, sample_types),
            _messages(2, samples),
            length_field(3, mapping),
            _messages(4, tables.location_messages),
            _messages(5, tables.function_messages),
            # Every entry, the empty one at index 0 too; "replace" keeps a
            # file name that is not valid UTF-8 from making the file unreadable.
            _messages(6, (text.encode("utf-8", "replace") for text in tables.strings)),
            int_field(9, start_ns),
            int_field(10, duration_ns),
            length_field(11, period_type),
            packed_field(13, [comment_index]),
            int_field(14, default_index),
        )
    )
    return gzip.compress(profile, mtime=0)
