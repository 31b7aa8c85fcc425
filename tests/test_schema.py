"""Snapshot files that are not what they should be.

Whatever a path holds (random bytes, Latin-1 text, JSON nested 100,000 deep,
a header whose version is ``true``, numbers past 64 bits) or whatever it is
(missing, a folder), ``load()`` and ``Report.from_file()`` raise one
``LoadError`` that names the file, and the line when there is one, and says
what to do; ``greenprof show`` and ``convert`` say it in one line on stderr
and exit with 1, without a traceback.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import greenprof
from greenprof import Report, exporters
from greenprof._schema import read
from greenprof.exceptions import LoadError, UnsupportedFormatError

from .conftest import greenprof_command, write_jsonl

HEADER = {"format": "greenprof-snapshots", "version": 2}

READERS: dict[str, Callable[[Path], object]] = {
    "load": greenprof.load,
    "Report.from_file": Report.from_file,
}


def snapshot_record(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "type": "snapshot",
        "session_id": "s",
        "sequence": 0,
        "timestamp_ns": 1_000,
        "event": "switch_out",
        "greenlet_id": 7,
        "greenlet_name": "worker",
        "thread_id": 1,
        "stack": [["app.py", "handle", 10]],
        "parent_id": 3,
    }
    record.update(overrides)
    return record


def session_record(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "type": "session",
        "session_id": "s",
        "start_ns": 500,
        "stop_ns": 2_000,
        "mode": "greenlet",
        "dump_period_ns": 10_000_000,
        "max_depth": 128,
        "max_snapshots": 10_000,
        "dropped": 0,
        "running_at_start": [7],
        "bounds": [[7, 500, 2_000]],
        "tags": {},
    }
    record.update(overrides)
    return record


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error line, after checking it is alone and exit code 1."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("greenprof: ")
    assert result.stdout == ""
    return line


# -- a file that is not JSON text -------------------------------------------------------

NOT_JSON_TEXT = {
    # Bytes no UTF-8 text holds (0xff) first, then noise, newlines included.
    "random bytes": b"\xff\xfe" + random.Random(15).randbytes(4096),
    "Latin-1 text": "Événement réseau, durée 12 ms\n".encode("latin-1"),
    "deeply nested JSON": b"[" * 100_000,
}
WHY = {
    "random bytes": "(it is not UTF-8)",
    "Latin-1 text": "(it is not UTF-8)",
    "deeply nested JSON": "(it nests too deep to read)",
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind", NOT_JSON_TEXT)
def test_a_file_that_is_not_json_text_is_a_load_error_naming_its_first_line(
    tmp_path: Path, kind: str, reader: str
) -> None:
    path = tmp_path / "profile.jsonl"
    path.write_bytes(NOT_JSON_TEXT[kind])
    with pytest.raises(LoadError) as info:
        READERS[reader](path)
    assert str(info.value) == (
        f"{path} is not a greenprof snapshot file: line 1 is not JSON text {WHY[kind]}. "
        "Pass a file written by greenprof.sinks.JSONSink or greenprof run."
    )


@pytest.mark.parametrize("kind", NOT_JSON_TEXT)
def test_show_of_a_file_that_is_not_json_text_prints_one_error_line(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "profile.jsonl"
    path.write_bytes(NOT_JSON_TEXT[kind])
    line = one_line_error(greenprof_command("show", str(path)))
    assert f"{path} is not a greenprof snapshot file: line 1 is not JSON text" in line
    assert WHY[kind] in line


def test_lines_not_utf8_or_too_deep_after_the_header_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "profile.jsonl"
    write_jsonl(
        path,
        HEADER,
        snapshot_record(sequence=0),
        NOT_JSON_TEXT["Latin-1 text"].rstrip(b"\n"),
        NOT_JSON_TEXT["deeply nested JSON"],
        snapshot_record(sequence=1, timestamp_ns=2_000),
    )
    with caplog.at_level(logging.WARNING, logger="greenprof"):
        recording = read(path)
    assert [s.sequence for s in recording.snapshots] == [0, 1]
    assert recording.damaged == [3, 4]
    assert caplog.messages == [
        f"greenprof: {path}: skipped 2 damaged line(s) (writes cut short), first at line 3."
    ]


# -- the header's version ---------------------------------------------------------------


@pytest.mark.parametrize("version", [True, False, 2.0, "2", None, [2], 0, -1])
def test_a_header_version_greenprof_never_wrote_is_a_damaged_header(
    tmp_path: Path, version: object
) -> None:
    path = tmp_path / "profile.jsonl"
    write_jsonl(path, {**HEADER, "version": version}, snapshot_record())
    with pytest.raises(LoadError) as info:
        greenprof.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 1: schema version {version!r} is no version")
    assert 'greenprof writes {"format": "greenprof-snapshots", "version": 2}' in message
    assert "Fix that line" in message
    # Not a newer version: upgrading greenprof would not help.
    assert not isinstance(info.value, UnsupportedFormatError)
    assert "Upgrade" not in message


def test_a_header_version_above_this_greenprofs_says_to_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "profile.jsonl"
    write_jsonl(path, {**HEADER, "version": 3})
    with pytest.raises(UnsupportedFormatError, match="Upgrade greenprof to read it"):
        greenprof.load(path)


# -- numbers: whole, not bool, within 64 bits ------------------------------------------

SNAPSHOT_NUMBERS: dict[str, Callable[[object], dict[str, object]]] = {
    "sequence": lambda v: snapshot_record(sequence=v),
    "timestamp_ns": lambda v: snapshot_record(timestamp_ns=v),
    "greenlet_id": lambda v: snapshot_record(greenlet_id=v),
    "thread_id": lambda v: snapshot_record(thread_id=v),
    "parent_id": lambda v: snapshot_record(parent_id=v),
    "stack line": lambda v: snapshot_record(stack=[["app.py", "handle", v]]),
}
SESSION_NUMBERS: dict[str, Callable[[object], dict[str, object]]] = {
    "start_ns": lambda v: session_record(start_ns=v),
    "stop_ns": lambda v: session_record(stop_ns=v),
    "dump_period_ns": lambda v: session_record(dump_period_ns=v),
    "max_depth": lambda v: session_record(max_depth=v),
    "max_snapshots": lambda v: session_record(max_snapshots=v),
    "dropped": lambda v: session_record(dropped=v),
    "running_at_start": lambda v: session_record(running_at_start=[v]),
    "bounds greenlet": lambda v: session_record(bounds=[[v, 500, 2_000]]),
    "bounds stop": lambda v: session_record(bounds=[[7, 500, v]]),
}
NUMBERS = {**SNAPSHOT_NUMBERS, **SESSION_NUMBERS}


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("field", NUMBERS)
def test_true_and_false_are_refused_wherever_a_file_holds_a_number(
    tmp_path: Path, field: str, value: bool
) -> None:
    path = tmp_path / "profile.jsonl"
    write_jsonl(path, HEADER, NUMBERS[field](value))
    kind = "snapshot" if field in SNAPSHOT_NUMBERS else "session"
    with pytest.raises(LoadError) as info:
        Report.from_file(path)
    assert str(info.value) == (
        f"{path}, line 2: not a valid {kind} (expected a whole number, got {value}). "
        "greenprof writes no such line: remove or fix it (or the program that wrote it) "
        "to read the rest of the file."
    )


OUTSIDE_64_BITS = [-(2**70), -(2**64) - 1, -(2**64), -(2**63) - 1, 2**64, 2**70]


@pytest.mark.parametrize("value", OUTSIDE_64_BITS)
@pytest.mark.parametrize("field", NUMBERS)
def test_a_number_outside_64_bits_is_refused_at_load_naming_its_line(
    tmp_path: Path, field: str, value: int
) -> None:
    path = tmp_path / "profile.jsonl"
    write_jsonl(path, HEADER, snapshot_record(), NUMBERS[field](value))
    with pytest.raises(LoadError, match=r"line 3: not a valid \w+ \(") as info:
        Report.from_file(path)
    assert f"{value} does not fit in 64 bits (-2**63 to 2**64 - 1)" in str(info.value)


def test_a_number_too_long_to_show_is_cut_short_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "profile.jsonl"
    write_jsonl(path, HEADER, snapshot_record(greenlet_id=10**4000))
    with pytest.raises(LoadError, match="does not fit in 64 bits") as info:
        greenprof.load(path)
    message = str(info.value)
    assert "0" * 50 not in message
    assert "not a valid snapshot (100000000000000000...0000000000000000000 does not fit" in message


@pytest.mark.parametrize("value", [-(2**63), 2**64 - 1])
@pytest.mark.parametrize("field", SNAPSHOT_NUMBERS)
def test_the_64_bit_extremes_load_and_export_to_pprof(
    tmp_path: Path, field: str, value: int
) -> None:
    path = tmp_path / "profile.jsonl"
    write_jsonl(path, HEADER, snapshot_record(), SNAPSHOT_NUMBERS[field](value))
    report = Report.from_file(path)
    assert len(report.snapshots) == 2
    out = tmp_path / "profile.pb.gz"
    exporters.write(report, "pprof", out)
    assert out.stat().st_size > 0


CONVERT_WITH_THE_API = """
import sys
from greenprof import Report, exporters
from greenprof.exceptions import LoadError
try:
    exporters.write(Report.from_file(sys.argv[1]), "pprof", sys.argv[2])
except LoadError as exc:
    print(exc)
"""


@pytest.mark.parametrize("field", ["greenlet_id", "timestamp_ns", "stack line"])
def test_exporting_a_file_with_a_number_below_minus_2_to_the_64_fails_at_once(
    tmp_path: Path, field: str
) -> None:
    # pprof's encoder used to loop forever on such a number, memory growing:
    # each run is a subprocess whose timeout makes a hang a failure.
    path, out = tmp_path / "profile.jsonl", tmp_path / "profile.pb.gz"
    write_jsonl(path, HEADER, SNAPSHOT_NUMBERS[field](-(2**70)))
    api = subprocess.run(
        [sys.executable, "-c", CONVERT_WITH_THE_API, str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert api.stdout.startswith(f"{path}, line 2: not a valid snapshot ({-(2**70)} does not")
    line = one_line_error(greenprof_command("convert", str(path), "-o", str(out), timeout=60))
    assert f"line 2: not a valid snapshot ({-(2**70)} does not fit in 64 bits" in line
    assert not out.exists()


# -- a path that is no file ---------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS)
def test_a_missing_file_is_a_load_error_from_the_os_error(tmp_path: Path, reader: str) -> None:
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(LoadError) as info:
        READERS[reader](path)
    assert str(info.value) == (
        f"cannot read {path}: there is no such file. Check the path: pass a file "
        "written by greenprof.sinks.JSONSink or greenprof run."
    )
    assert isinstance(info.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize("reader", READERS)
def test_a_folder_is_a_load_error_from_the_os_error(tmp_path: Path, reader: str) -> None:
    with pytest.raises(LoadError) as info:
        READERS[reader](tmp_path)
    assert str(info.value) == (
        f"cannot read {tmp_path}: it is a folder. Pass a file written by "
        "greenprof.sinks.JSONSink or greenprof run, not its folder."
    )
    assert isinstance(info.value.__cause__, IsADirectoryError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_an_unreadable_file_is_a_load_error_that_says_to_make_it_readable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secret.jsonl"
    write_jsonl(path, HEADER)
    path.chmod(0)
    with pytest.raises(LoadError, match=r"permission denied\. Make it readable") as info:
        greenprof.load(path)
    assert isinstance(info.value.__cause__, PermissionError)


def test_show_of_a_missing_file_or_a_folder_prints_one_error_line(tmp_path: Path) -> None:
    missing = one_line_error(greenprof_command("show", str(tmp_path / "nowhere.jsonl")))
    assert missing.endswith(
        "there is no such file. Check the path: pass a file written by "
        "greenprof.sinks.JSONSink or greenprof run."
    )
    folder = one_line_error(greenprof_command("show", str(tmp_path)))
    assert f"cannot read {tmp_path}: it is a folder." in folder
