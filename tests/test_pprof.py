"""The pprof exporter, read back with protobuf's own decoder (compiled from
google/pprof's ``profile.proto`` for each run: see ``profile_proto``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import gevent
import pytest

import greenprof
from greenprof import Frame, Snapshot, exporters
from greenprof.exceptions import ConfigurationError
from greenprof.exporters import pprof
from greenprof.sinks import JSONSink

from .profile_proto import decode_labelled
from .workloads import record_red_and_blue

SAMPLE_TYPES = [("on_cpu", "nanoseconds"), ("off_cpu", "nanoseconds"), ("snapshots", "count")]


@attrs.frozen
class Decoded:
    """A parsed profile with its stacks rebuilt, outermost frame first."""

    message: Any
    strings: list[str]
    #: ``(greenlet_id, stack) -> [on_cpu_ns, off_cpu_ns, snapshots]``.
    values: dict[tuple[int, tuple[Frame, ...]], list[int]]
    #: ``greenlet_id -> {label key: str or num}`` (the same for all its samples).
    labels: dict[int, dict[str, object]]


def decode(profile_pb2: ModuleType, data: bytes) -> Decoded:
    """The profile by greenlet: each sample labelled with its greenlet."""
    labelled = decode_labelled(profile_pb2, data)
    values: dict[tuple[int, tuple[Frame, ...]], list[int]] = {}
    labels: dict[int, dict[str, object]] = {}
    for label_set, stacks in labelled.samples.items():
        found = dict(label_set)
        assert {"greenlet", "greenlet_id"} <= found.keys()
        greenlet_id = found["greenlet_id"]
        assert isinstance(greenlet_id, int)
        assert labels.setdefault(greenlet_id, found) == found
        for stack, value in stacks.items():
            values[(greenlet_id, stack)] = value
    return Decoded(labelled.message, labelled.strings, values, labels)


START = (Frame("", "<greenlet start>", 0),)
EXIT = (Frame("", "<greenlet exit>", 0),)


def expected_values(report: greenprof.Report) -> dict[tuple[int, tuple[Frame, ...]], list[int]]:
    """What the samples should hold: an empty stack is ``<greenlet exit>``
    for an exit, else ``<greenlet start>``."""
    expected: dict[tuple[int, tuple[Frame, ...]], list[int]] = {}
    for cell in report.stacks:
        entry = expected.setdefault((cell.greenlet_id, cell.stack or START), [0, 0, 0])
        entry[0] += cell.on_cpu_ns
        entry[1] += cell.off_cpu_ns
    for (greenlet_id, stack), count in Counter(
        (s.greenlet_id, s.stack or (EXIT if s.event == "exit" else START)) for s in report.snapshots
    ).items():
        expected.setdefault((greenlet_id, stack), [0, 0, 0])[2] += count
    return {key: value for key, value in expected.items() if any(value)}


# -- a real workload -----------------------------------------------------------------------


@attrs.frozen
class Recording:
    report: greenprof.Report
    path: Path
    red_id: int
    blue_id: int


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    path = tmp_path_factory.mktemp("pprof") / "profile.jsonl"

    def sinks() -> list[JSONSink]:
        path.unlink(missing_ok=True)  # only the last attempt's recording
        return [JSONSink(path)]

    profiler, red, blue = record_red_and_blue(sinks=sinks)
    return Recording(profiler.report(), path, id(red), id(blue))


def test_pprof_declares_three_sample_types_and_the_chosen_default(
    recording: Recording, profile_pb2: ModuleType
) -> None:
    for weight in ("on_cpu", "off_cpu", "snapshots"):
        profile = decode(profile_pb2, pprof(recording.report, weight=weight)).message
        strings = list(profile.string_table)
        assert strings[0] == ""
        assert len(set(strings)) == len(strings)
        assert [(strings[t.type], strings[t.unit]) for t in profile.sample_type] == SAMPLE_TYPES
        assert strings[profile.default_sample_type] == weight
        period = profile.period_type
        assert (strings[period.type], strings[period.unit]) == ("on_cpu", "nanoseconds")
        assert any("greenprof" in strings[index] for index in profile.comment)
    default = decode(profile_pb2, pprof(recording.report)).message
    assert default.string_table[default.default_sample_type] == "on_cpu"


def test_pprof_samples_carry_the_reports_times_and_snapshot_counts(
    recording: Recording, profile_pb2: ModuleType
) -> None:
    report = recording.report
    decoded = decode(profile_pb2, pprof(report, weight="off_cpu"))
    assert decoded.values == expected_values(report)
    assert all(len(values) == 3 and any(values) for values in decoded.values.values())
    # Every snapshot and nanosecond of the report is in some sample.
    assert sum(v[2] for v in decoded.values.values()) == len(report.snapshots)
    for greenlet_id in (recording.red_id, recording.blue_id):
        mine = [v for (g, _), v in decoded.values.items() if g == greenlet_id]
        totals = report.greenlets[greenlet_id]
        assert sum(v[0] for v in mine) == totals.on_cpu_ns
        assert sum(v[1] for v in mine) == totals.off_cpu_ns
    # red spun 3 x 2 ms and slept 3 x 4 ms in red_wait; blue spun 2 x 3 ms.
    red_values = {stack: v for (g, stack), v in decoded.values.items() if g == recording.red_id}
    assert sum(v[0] for v in red_values.values()) >= 6_000_000
    waited = sum(v[1] for s, v in red_values.items() if any(f.function == "red_wait" for f in s))
    assert waited >= 12_000_000
    blue_on = sum(v[0] for (g, _), v in decoded.values.items() if g == recording.blue_id)
    assert blue_on >= 6_000_000


def test_pprof_labels_name_the_greenlet_and_stacks_never_mix_greenlets(
    recording: Recording, profile_pb2: ModuleType
) -> None:
    decoded = decode(profile_pb2, pprof(recording.report))
    assert decoded.labels == {
        recording.red_id: {
            "greenlet": f"red [{recording.red_id:#x}]",
            "greenlet_name": "red",
            "greenlet_id": recording.red_id,
        },
        recording.blue_id: {
            "greenlet": f"blue [{recording.blue_id:#x}]",
            "greenlet_name": "blue",
            "greenlet_id": recording.blue_id,
        },
    }
    for (greenlet_id, stack), _ in decoded.values.items():
        functions = {frame.function for frame in stack}
        mine, theirs = ("red", "blue") if greenlet_id == recording.red_id else ("blue", "red")
        assert not {f"{theirs}_work", f"{theirs}_wait"} & functions
        assert stack  # every sample has a location
        if stack not in (START, EXIT):
            assert f"{mine}_work" in functions
    # The leaf comes first: spin calls no Python function, so a stack with
    # spin in it starts there, and the greenlet's work function comes later.
    spinning = [
        names
        for names in (
            [function_name(decoded, location_id) for location_id in sample.location_id]
            for sample in decoded.message.sample
        )
        if "spin" in names
    ]
    assert spinning
    for names in spinning:
        assert names[0] == "spin"
        assert any(work in names[1:] for work in ("red_work", "blue_work"))


def function_name(decoded: Decoded, location_id: int) -> str:
    profile = decoded.message
    location = next(loc for loc in profile.location if loc.id == location_id)
    function = next(f for f in profile.function if f.id == location.line[0].function_id)
    return decoded.strings[function.name]


def test_pprof_every_referenced_id_and_index_exists(
    recording: Recording, profile_pb2: ModuleType
) -> None:
    profile = decode(profile_pb2, pprof(recording.report)).message
    size = len(profile.string_table)
    mappings = [m.id for m in profile.mapping]
    functions = [f.id for f in profile.function]
    locations = [loc.id for loc in profile.location]
    for ids in (mappings, functions, locations):
        assert 0 not in ids
        assert len(set(ids)) == len(ids)
    (mapping,) = profile.mapping
    assert mapping.has_functions
    assert mapping.has_filenames
    assert mapping.has_line_numbers
    for function in profile.function:
        assert all(0 <= i < size for i in (function.name, function.filename))
        assert function.system_name == 0  # else pprof demangles <module> into [python]
        assert function.name
        pseudo = profile.string_table[function.name].startswith("<greenlet ")
        assert bool(function.filename) != pseudo
    pseudo_ids = {
        f.id for f in profile.function if profile.string_table[f.name].startswith("<greenlet ")
    }
    for location in profile.location:
        assert location.mapping_id in mappings
        assert len(location.line) == 1
        assert location.line[0].function_id in functions
        assert (location.line[0].line > 0) != (location.line[0].function_id in pseudo_ids)
    for sample in profile.sample:
        assert sample.location_id  # nothing is attributed to no function
        assert set(sample.location_id) <= set(locations)
        for label in sample.label:
            assert all(0 <= i < size for i in (label.key, label.str, label.num_unit))
    for value_type in (*profile.sample_type, profile.period_type):
        assert all(0 < i < size for i in (value_type.type, value_type.unit))
    assert all(0 < i < size for i in (*profile.comment, profile.default_sample_type))
    # Nothing unreferenced either: each location and function is used.
    used = {i for sample in profile.sample for i in sample.location_id}
    assert used == set(locations)
    assert {loc.line[0].function_id for loc in profile.location} == set(functions)


def test_pprof_times_span_the_session(recording: Recording, profile_pb2: ModuleType) -> None:
    profile = decode(profile_pb2, pprof(recording.report)).message
    (session,) = recording.report.sessions
    assert profile.time_nanos == session.start_ns
    assert profile.duration_nanos == session.stop_ns - session.start_ns
    assert profile.duration_nanos > 0
    times = [s.timestamp_ns for s in recording.report.snapshots]
    assert session.start_ns <= min(times) <= max(times) <= session.stop_ns


def test_pprof_of_a_file_read_back_is_byte_for_byte_the_same(recording: Recording) -> None:
    read_back = greenprof.Report.from_file(recording.path)
    assert read_back.sessions == recording.report.sessions
    for weight in ("on_cpu", "off_cpu", "snapshots"):
        # The file keeps the session's bounds: the same profile, byte for
        # byte, as the live report's, whatever the order of the snapshots.
        from_file = pprof(read_back, weight=weight)
        assert from_file == pprof(recording.report, weight=weight)
        shuffled = greenprof.Report(
            list(reversed(recording.report.snapshots)), sessions=recording.report.sessions
        )
        assert from_file == pprof(shuffled, weight=weight)
        assert from_file[4:8] == b"\0\0\0\0"  # gzip's mtime


def test_pprof_refuses_an_unknown_weight(recording: Recording) -> None:
    with pytest.raises(ConfigurationError, match="weight must be one of"):
        pprof(recording.report, weight="wall")  # type: ignore[arg-type]


# -- exact values ---------------------------------------------------------------------------


def snapshot(greenlet_id: int, name: str, event: str, at: int, *stack: Frame) -> Snapshot:
    return Snapshot(
        greenlet_id=greenlet_id,
        greenlet_name=name,
        thread_id=1,
        event=event,
        sequence=at,
        timestamp_ns=1_700_000_000_000_000_000 + at,
        stack=stack,
        session_id="s",
    )


def test_pprof_values_and_shared_tables_for_a_known_history(profile_pb2: ModuleType) -> None:
    outer, inner = Frame("/app/a.py", "handler", 10), Frame("/app/a.py", "fetch", 20)
    other_line = Frame("/app/a.py", "fetch", 25)
    report = greenprof.Report(
        [
            snapshot(7, "web", "switch_in", 1_000),
            snapshot(7, "web", "switch_out", 3_000, outer, inner),
            snapshot(7, "web", "switch_in", 7_000, outer, inner),
            snapshot(7, "web", "exit", 8_000),
            snapshot(9, "", "switch_in", 2_000),
            snapshot(9, "", "switch_out", 2_500, outer, other_line),
            snapshot(9, "", "switch_in", 5_500, outer, other_line),
            snapshot(9, "", "exit", 6_000),
        ]
    )
    decoded = decode(profile_pb2, pprof(report, weight="snapshots"))
    assert decoded.values == {
        # Ran 1000..3000 and 7000..8000 there, waited 3000..7000.
        (7, (outer, inner)): [3_000, 4_000, 2],
        # The first switch_in and the exit: no time, but snapshots, each
        # under its pseudo-frame.
        (7, START): [0, 0, 1],
        (7, EXIT): [0, 0, 1],
        (9, (outer, other_line)): [1_000, 3_000, 2],
        (9, START): [0, 0, 1],
        (9, EXIT): [0, 0, 1],
    }
    assert decoded.labels[9] == {"greenlet": "greenlet [0x9]", "greenlet_id": 9}
    assert decoded.labels[7]["greenlet_name"] == "web"
    profile = decoded.message
    # handler at line 10 is one location for both greenlets; fetch is one
    # function with two lines; and the two pseudo-frames.
    assert len(profile.location) == 5
    assert sorted(decoded.strings[f.name] for f in profile.function) == [
        "<greenlet exit>",
        "<greenlet start>",
        "fetch",
        "handler",
    ]
    assert profile.time_nanos == 1_700_000_000_000_001_000
    assert profile.duration_nanos == 7_000


def test_pprof_of_an_empty_report_is_a_valid_profile(profile_pb2: ModuleType) -> None:
    profile = decode(profile_pb2, pprof(greenprof.Report([]))).message
    assert list(profile.sample) == []
    assert profile.string_table[0] == ""
    assert len(profile.sample_type) == 3
    assert profile.time_nanos == profile.duration_nanos == 0


# -- numbers at and past 64 bits ---------------------------------------------------------


def test_pprof_writes_negative_64_bit_numbers_as_protobuf_reads_them(
    profile_pb2: ModuleType,
) -> None:
    lowest = -(2**63)
    frame = Frame("/app/a.py", "handler", -7)
    report = greenprof.Report(
        [
            snapshot(lowest, "web", "switch_in", 1_000),
            snapshot(lowest, "web", "switch_out", 3_000, frame),
        ]
    )
    decoded = decode(profile_pb2, pprof(report))
    assert decoded.labels[lowest]["greenlet_id"] == lowest
    assert decoded.values[(lowest, (frame,))] == [2_000, 0, 1]


OUT_OF_RANGE_PPROF = """
from greenprof import Frame, Report, Snapshot
from greenprof.exceptions import WireFormatError
from greenprof.exporters import pprof

values = dict(greenlet_id=7, timestamp_ns=1_000, lineno=10)
values[{field!r}] = {value}
report = Report([
    Snapshot(values["greenlet_id"], "web", 1, "switch_out", 0, values["timestamp_ns"],
             (Frame("app.py", "handler", values["lineno"]),), "s"),
])
try:
    pprof(report)
except WireFormatError as exc:
    print(exc)
"""


@pytest.mark.parametrize("field", ["greenlet_id", "timestamp_ns", "lineno"])
@pytest.mark.parametrize("value", [-(2**70), -(2**64), 2**64])
def test_pprof_of_a_number_outside_64_bits_raises_instead_of_hanging(
    field: str, value: int
) -> None:
    # Below -2**64 the encoder used to loop forever, memory growing; from
    # -2**64 to -2**63 it wrote another number. The subprocess's timeout
    # makes a hang a failure.
    code = OUT_OF_RANGE_PPROF.format(field=field, value=value)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith(f"{value} does not fit in a protobuf varint"), done.stdout


# -- in go tool pprof itself -------------------------------------------------------------


def go_pprof(*args: str) -> str:
    """``go tool pprof ARGS``'s output (Debian's golang-go; CI installs it)."""
    if shutil.which("go") is None:
        message = "Go is needed to run go tool pprof (Debian: apt-get install golang-go)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        ["go", "tool", "pprof", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PPROF_TMPDIR": os.environ.get("TMPDIR", "/tmp")},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_go_tool_pprof_names_module_and_lambda_and_every_sample_has_a_place(
    tmp_path: Path,
) -> None:
    # Module-level code and a lambda: pprof used to demangle their names into "[python]".
    source = "import gevent\nwait = lambda: gevent.sleep(0.002)\nfor _ in range(3):\n    wait()\n"
    code = compile(source, str(tmp_path / "app.py"), "exec")
    worker = gevent.spawn(exec, code, {})
    with greenprof.profile(worker) as profiler:
        worker.join()
    path = tmp_path / "profile.pb.gz"
    exporters.write(profiler.report(), "pprof", path, weight="off_cpu")
    top = go_pprof("-top", str(path))
    assert "[python]" not in top
    rows = {line.split()[-1]: line for line in top.splitlines() if line.endswith(">")}
    assert {"<lambda>", "<module>"} <= rows.keys()
    totals = profiler.report().greenlets[id(worker)]
    # As pprof labels a value (ScaledLabel): two decimals, ".00" left off.
    label = f"{totals.off_cpu_ns / 1e6:.2f}".removesuffix(".00")
    assert f"Total samples = {label}ms" in top
    # Every sample is under at least one function: "on off count: location ids".
    raw = go_pprof("-raw", str(path))
    samples = re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+):(.*)$", raw, re.MULTILINE)
    assert sum(int(sample[1]) for sample in samples) == totals.off_cpu_ns
    assert sum(int(sample[2]) for sample in samples) == len(profiler.snapshots)
    for sample in samples:
        assert sample[3].split(), sample
    snapshots = go_pprof("-top", "-sample_index=snapshots", str(path))
    assert "<greenlet start>" in snapshots
    assert "<greenlet exit>" in snapshots
