"""Sinks: what each one receives, how failures are contained, and the JSON snapshot file."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import io
import json
import logging
import os
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import greenlet
import pytest

import greenprof
from greenprof import Frame, Snapshot
from greenprof._schema import encode_snapshot, read
from greenprof.exceptions import LoadError, SinkClosedError, UnsupportedFormatError
from greenprof.sinks import JSONSink, MemorySink

from .conftest import function_name, line_of

# -- a deterministic workload -----------------------------------------------------


def wait_in_main(main: greenlet.greenlet) -> None:
    main.switch()  # the worker waits here


def worker(main: greenlet.greenlet, waits: int) -> None:
    for _ in range(waits):
        wait_in_main(main)  # the worker calls here


def snapshots_for(waits: int) -> int:
    """Snapshots ``worker`` yields: first switch_in, a switch_out and a
    switch_in per wait, and the exit."""
    return 2 * waits + 2


def make_worker(waits: int) -> greenlet.greenlet:
    # A partial adds no Python frame: ``worker`` is the greenlet's outermost frame.
    return greenlet.greenlet(functools.partial(worker, greenlet.getcurrent(), waits))


def run(glet: greenlet.greenlet, switches: int | None = None) -> None:
    """Switch into ``glet`` ``switches`` times, or until it finishes."""
    done = 0
    while not glet.dead and (switches is None or done < switches):
        glet.switch()
        done += 1


def profile_worker(waits: int, **options: object) -> greenprof.Profiler:
    glet = make_worker(waits)
    profiler = greenprof.Profiler(**options)  # type: ignore[arg-type]
    profiler.start(glet)
    run(glet)
    profiler.stop()
    return profiler


def wait_stack() -> tuple[Frame, ...]:
    return (
        Frame(__file__, function_name(worker), line_of(worker, "the worker calls here")),
        Frame(__file__, function_name(wait_in_main), line_of(wait_in_main, "the worker waits")),
    )


# -- sinks used by the tests ----------------------------------------------------


class FailingSink(MemorySink):
    """A MemorySink whose first ``failures`` exports raise."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.export_calls = 0

    def export(self, batch: Sequence[Snapshot]) -> None:
        self.export_calls += 1
        if self.failures:
            self.failures -= 1
            raise OSError("the collector is down")
        super().export(batch)


class UnflushableSink(MemorySink):
    def flush(self, timeout: float | None = None) -> bool:
        return False


def sequences(snapshots: list[Snapshot]) -> list[int]:
    return [s.sequence for s in snapshots]


# -- MemorySink and the ways to attach sinks ------------------------------------


def test_memory_sink_receives_exactly_the_profilers_snapshots() -> None:
    sink = MemorySink()
    profiler = profile_worker(3, sinks=[sink])
    assert len(profiler.snapshots) == snapshots_for(3)
    assert sink.snapshots == profiler.snapshots
    assert [s.event for s in sink.snapshots] == [
        "switch_in",
        "switch_out",
        "switch_in",
        "switch_out",
        "switch_in",
        "switch_out",
        "switch_in",
        "exit",
    ]
    assert sequences(sink.snapshots) == list(range(8))
    assert sink.snapshots[1].stack == wait_stack()


def test_sink_added_with_add_sink_receives_snapshots_recorded_before_it_was_added() -> None:
    glet = make_worker(2)
    profiler = greenprof.Profiler()
    profiler.start(glet)
    run(glet, switches=2)
    sink = MemorySink()
    profiler.add_sink(sink)
    run(glet)
    profiler.stop()
    assert profiler.sinks == [sink]
    assert len(sink.snapshots) == snapshots_for(2)
    assert sink.snapshots == profiler.snapshots


def test_profile_context_manager_delivers_to_its_sinks() -> None:
    sink = MemorySink()
    glet = make_worker(2)
    with greenprof.profile(glet, sinks=[sink]) as profiler:
        run(glet)
    assert not profiler.is_running
    assert len(sink.snapshots) == snapshots_for(2)
    assert sink.snapshots == profiler.snapshots


def test_profile_decorator_delivers_every_call_to_its_sinks() -> None:
    sink = MemorySink()

    @greenprof.profile(sinks=[sink])
    def waits_twice(main: greenlet.greenlet) -> str:
        wait_in_main(main)
        wait_in_main(main)
        return "done"

    main = greenlet.getcurrent()
    results = []
    for _ in range(2):
        glet = greenlet.greenlet(lambda: results.append(waits_twice(main)))
        run(glet)
    assert results == ["done", "done"]
    # Each call profiles the greenlet running it from entry to return: where
    # it started, two (switch_out, switch_in) pairs and where it stopped; no
    # first switch_in and no exit.
    per_call = ["start", "switch_out", "switch_in", "switch_out", "switch_in", "stop"]
    assert [s.event for s in sink.snapshots] == per_call + per_call
    first, second = sink.snapshots[:6], sink.snapshots[6:]
    assert sequences(first) == sequences(second) == list(range(6))
    assert len({s.session_id for s in first}) == 1
    assert len({s.session_id for s in second}) == 1
    assert first[0].session_id != second[0].session_id
    # One session record per call, after its snapshots.
    assert [s.session_id for s in sink.sessions] == [first[0].session_id, second[0].session_id]
    for session, snapshots in zip(sink.sessions, (first, second), strict=True):
        assert session.start_ns == snapshots[0].timestamp_ns
        assert session.stop_ns == snapshots[-1].timestamp_ns


def test_removed_sink_receives_nothing_after_removal() -> None:
    kept, removed = MemorySink(), MemorySink()
    glet = make_worker(3)
    profiler = greenprof.Profiler(sinks=[kept, removed])
    profiler.start(glet)
    run(glet, switches=2)
    assert profiler.flush() is True
    delivered_before_removal = list(profiler.snapshots)
    assert len(delivered_before_removal) == 4
    profiler.remove_sink(removed)
    run(glet)
    profiler.stop()
    assert profiler.sinks == [kept]
    assert removed.snapshots == delivered_before_removal
    assert kept.snapshots == profiler.snapshots
    assert len(kept.snapshots) == snapshots_for(3)


def test_sink_added_twice_receives_each_snapshot_once() -> None:
    sink = MemorySink()
    glet = make_worker(2)
    profiler = greenprof.Profiler(sinks=[sink, sink])
    profiler.add_sink(sink)
    profiler.start(glet)
    run(glet)
    profiler.stop()
    assert profiler.sinks == [sink]
    assert sink.snapshots == profiler.snapshots
    assert sequences(sink.snapshots) == list(range(snapshots_for(2)))


def test_profile_scope_with_same_sink_twice_delivers_once() -> None:
    sink = MemorySink()
    glet = make_worker(1)
    with greenprof.profile(glet, sinks=[sink, sink]) as profiler:
        run(glet)
    assert sink.snapshots == profiler.snapshots
    assert len(sink.snapshots) == snapshots_for(1)


# -- failing sinks -----------------------------------------------------------------


def test_failing_sink_does_not_affect_other_sinks_or_the_profiler() -> None:
    failing = FailingSink(failures=10)
    healthy = MemorySink()
    glet = make_worker(3)
    profiler = greenprof.Profiler(sinks=[failing, healthy])
    profiler.start(glet)
    run(glet, switches=2)
    assert profiler.flush() is False
    run(glet)
    profiler.stop()
    assert failing.snapshots == []
    assert failing.export_calls == 2
    assert healthy.snapshots == profiler.snapshots
    assert len(profiler.snapshots) == snapshots_for(3)
    assert profiler.stats.sink_failures == 2
    assert profiler.stats.snapshots == snapshots_for(3)


def test_sink_failure_is_logged_once_across_flushes_and_profilers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = FailingSink(failures=10)
    caplog.set_level(logging.ERROR, logger="greenprof")
    first = profile_worker(1, sinks=[failing])
    assert first.flush() is False
    second = profile_worker(1, sinks=[failing])
    assert first.stats.sink_failures == 2
    assert second.stats.sink_failures == 1
    assert failing.export_calls == 3
    records = [r for r in caplog.records if r.name == "greenprof"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    message = records[0].getMessage()
    assert "failed in export()" in message
    assert "OSError: the collector is down" in message
    assert "retried at the next flush" in message


@dataclasses.dataclass(frozen=True)
class EqualBrokenSink:
    """Equal to any other with the same url."""

    url: str

    def export(self, batch: Sequence[Snapshot]) -> None:
        raise OSError(f"{self.url} is down")

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        return None


class UnhashableBrokenSink(EqualBrokenSink):
    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize("sink_type", [EqualBrokenSink, UnhashableBrokenSink])
def test_equal_but_distinct_sinks_each_get_their_first_failure_logged(
    caplog: pytest.LogCaptureFixture, sink_type: type[EqualBrokenSink]
) -> None:
    caplog.set_level(logging.ERROR, logger="greenprof")
    first, second = sink_type("http://collector"), sink_type("http://collector")
    assert first == second
    # Not inline sinks: they are called in threads of their own, and flush()
    # waits for those.
    assert profile_worker(1, sinks=[first]).flush() is False
    assert profile_worker(1, sinks=[first]).flush() is False
    assert profile_worker(1, sinks=[second]).flush() is False
    records = [r for r in caplog.records if r.name == "greenprof"]
    assert len(records) == 2


def test_a_sink_whose_flush_returns_false_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="greenprof")
    sink = UnflushableSink()
    # stop() hands over without waiting; flush() is what waits for sinks.
    assert profile_worker(1, sinks=[sink]).flush() is False
    assert profile_worker(1, sinks=[sink]).flush() is False
    records = [r.getMessage() for r in caplog.records if r.name == "greenprof"]
    assert len(records) == 1
    assert "failed in flush() (it returned False)" in records[0]


class Local:
    def __init__(self, freed: list[str]) -> None:
        self.freed = freed

    def __del__(self) -> None:
        self.freed.append("freed")


def test_a_kept_record_of_a_sink_failure_holds_none_of_the_programs_objects() -> None:
    records: list[logging.LogRecord] = []
    keeper = logging.Handler()
    keeper.emit = records.append  # type: ignore[method-assign]
    freed: list[str] = []

    def request() -> None:
        local = Local(freed)  # noqa: F841 - freed as this call returns
        with greenprof.profile(sinks=[FailingSink(failures=1)]):
            pass  # the sink fails as the block ends: logged from this frame

    logger = logging.getLogger("greenprof")
    logger.addHandler(keeper)
    try:
        request()
        freed.append("returned")
    finally:
        logger.removeHandler(keeper)
    assert freed == ["freed", "returned"]  # not held by the record a handler keeps
    [record] = records
    assert record.exc_info is None
    assert "OSError: the collector is down" in record.getMessage()
    assert "Traceback (most recent call last)" in record.getMessage()


def test_export_failure_is_retried_at_next_flush() -> None:
    recovering = FailingSink(failures=1)
    glet = make_worker(3)
    profiler = greenprof.Profiler(sinks=[recovering])
    profiler.start(glet)
    run(glet, switches=2)
    assert profiler.flush() is False
    assert recovering.snapshots == []
    run(glet)
    profiler.stop()
    assert recovering.export_calls == 2
    assert recovering.snapshots == profiler.snapshots
    assert sequences(recovering.snapshots) == list(range(snapshots_for(3)))
    assert profiler.stats.sink_failures == 1


class BatchRecordingSink(MemorySink):
    """Records the size of every batch; the exports numbered in ``fail`` raise."""

    def __init__(self, fail: set[int]) -> None:
        super().__init__()
        self.fail = fail
        self.batches: list[int] = []

    def export(self, batch: Sequence[Snapshot]) -> None:
        self.batches.append(len(batch))
        if len(self.batches) in self.fail:
            raise OSError("the collector is down")
        super().export(batch)


def test_a_failed_batch_of_a_discarded_run_is_not_retried() -> None:
    sink = BatchRecordingSink(fail={3})
    glet = make_worker(20)
    profiler = greenprof.Profiler(sinks=[sink], min_duration=3600)
    profiler.start(glet)
    run(glet, switches=2)
    assert profiler.flush() is True  # export 1
    run(glet, switches=2)
    assert profiler.flush() is True  # export 2
    run(glet, switches=2)
    assert profiler.flush() is False  # export 3 fails: retried later...
    profiler.stop()  # ...but the run is too short: it is all dropped
    assert profiler.discarded is True
    assert profiler.snapshots == []
    assert profiler.flush() is True
    assert 0 not in sink.batches  # nothing left to retry: no empty batch
    assert profiler.stats.sink_failures == 1


def test_a_batch_failing_while_another_thread_discards_its_run_is_not_retried() -> None:
    entered, release = threading.Event(), threading.Event()

    class Blocking(BatchRecordingSink):
        def export(self, batch: Sequence[Snapshot]) -> None:
            if not self.batches:
                entered.set()  # the first export is in flight...
                release.wait(10)
            super().export(batch)

    sink = Blocking(fail={1})
    glet = make_worker(20)
    profiler = greenprof.Profiler(sinks=[sink], min_duration=3600)
    profiler.start(glet)
    run(glet, switches=3)
    flusher = threading.Thread(target=profiler.flush)
    flusher.start()
    assert entered.wait(10)
    profiler.stop()  # ...when this thread drops the run it came from
    release.set()
    flusher.join(10)
    assert profiler.discarded is True
    assert profiler.flush() is True
    assert sink.batches == [6]  # failed, and not retried (it was empty)
    assert profiler.stats.sink_failures == 1


def test_batch_that_failed_at_stop_is_delivered_by_a_later_flush() -> None:
    recovering = FailingSink(failures=1)
    profiler = profile_worker(2, sinks=[recovering])
    assert recovering.snapshots == []
    assert profiler.flush() is True
    assert profiler.flush() is True
    assert recovering.snapshots == profiler.snapshots
    assert sequences(recovering.snapshots) == list(range(snapshots_for(2)))
    assert recovering.export_calls == 2
    assert profiler.stats.sink_failures == 1


def test_sink_flush_returning_false_makes_profiler_flush_return_false() -> None:
    unflushable, healthy = UnflushableSink(), MemorySink()
    glet = make_worker(1)
    profiler = greenprof.Profiler(sinks=[unflushable, healthy])
    profiler.start(glet)
    run(glet, switches=1)
    assert profiler.flush() is False
    run(glet)
    profiler.stop()  # hands over, and does not wait: no flush, no failure
    assert unflushable.snapshots == healthy.snapshots == profiler.snapshots
    assert profiler.stats.sink_failures == 1
    assert profiler.flush() is False
    assert profiler.stats.sink_failures == 2


def test_profiler_flush_returns_true_when_every_sink_flushes() -> None:
    sink = MemorySink()
    glet = make_worker(1)
    profiler = greenprof.Profiler(sinks=[sink])
    profiler.start(glet)
    run(glet, switches=1)
    assert profiler.flush() is True
    run(glet)
    profiler.stop()
    assert profiler.flush() is True
    assert profiler.stats.sink_failures == 0


# -- the JSON snapshot file -------------------------------------------------------


def test_json_file_loads_back_equal_to_the_profilers_snapshots(tmp_path: Path) -> None:
    path = tmp_path / "profile.jsonl"
    sink = JSONSink(path)
    profiler = profile_worker(3, sinks=[sink])
    loaded = greenprof.load(path)
    assert len(loaded) == snapshots_for(3)
    assert loaded == profiler.snapshots
    assert loaded[1].stack == wait_stack()
    assert {s.session_id for s in loaded} == {profiler.session_id}


def test_json_file_starts_with_the_format_header(tmp_path: Path) -> None:
    path = tmp_path / "profile.jsonl"
    profile_worker(1, sinks=[JSONSink(path)])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"format": "greenprof-snapshots", "version": 2}
    assert len(lines) == 1 + snapshots_for(1) + 1
    assert all(json.loads(line)["type"] == "snapshot" for line in lines[1:-1])
    assert json.loads(lines[-1])["type"] == "session"


def test_json_file_written_over_several_flushes_has_one_header(tmp_path: Path) -> None:
    path = tmp_path / "profile.jsonl"
    glet = make_worker(2)
    profiler = greenprof.Profiler(sinks=[JSONSink(path)])
    profiler.start(glet)
    run(glet, switches=1)
    assert profiler.flush() is True
    run(glet)
    profiler.stop()
    lines = path.read_text(encoding="utf-8").splitlines()
    headers = [line for line in lines if "format" in json.loads(line)]
    assert len(headers) == 1
    assert greenprof.load(path) == profiler.snapshots


def test_two_sessions_appended_to_one_file_load_back_as_both(tmp_path: Path) -> None:
    path = tmp_path / "profile.jsonl"
    first = profile_worker(1, sinks=[JSONSink(path)])
    second = profile_worker(2, sinks=[JSONSink(path)])
    loaded = greenprof.load(path)
    assert loaded == first.snapshots + second.snapshots
    assert first.session_id != second.session_id
    by_session = {
        session: [s.sequence for s in loaded if s.session_id == session]
        for session in (first.session_id, second.session_id)
    }
    assert by_session == {
        first.session_id: list(range(snapshots_for(1))),
        second.session_id: list(range(snapshots_for(2))),
    }


def test_closed_json_sink_refuses_to_export(tmp_path: Path) -> None:
    path = tmp_path / "profile.jsonl"
    sink = JSONSink(path)
    profiler = profile_worker(1)
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(SinkClosedError, match="is closed; create a new one"):
        sink.export(profiler.snapshots)
    assert not path.exists()


def test_closed_json_sink_counts_as_a_failing_sink(tmp_path: Path) -> None:
    sink = JSONSink(tmp_path / "profile.jsonl")
    sink.close()
    profiler = profile_worker(1, sinks=[sink])
    assert profiler.stats.sink_failures == 1  # its export (its session waits for it)
    assert len(profiler.snapshots) == snapshots_for(1)


def write_lines(path: Path, *objects: object) -> None:
    path.write_text(
        "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects),
        encoding="utf-8",
    )


HEADER = {"format": "greenprof-snapshots", "version": 1}


def snapshot_line(**overrides: object) -> dict[str, object]:
    line: dict[str, object] = {
        "type": "snapshot",
        "session_id": "abc",
        "sequence": 0,
        "timestamp_ns": 1_700_000_000_000_000_000,
        "event": "switch_out",
        "greenlet_id": 7,
        "greenlet_name": "worker",
        "thread_id": 11,
        "stack": [["app.py", "serve", 10], ["app.py", "handle", 20]],
    }
    line.update(overrides)
    return line


EXPECTED = Snapshot(
    greenlet_id=7,
    greenlet_name="worker",
    thread_id=11,
    event="switch_out",
    sequence=0,
    timestamp_ns=1_700_000_000_000_000_000,
    stack=(Frame("app.py", "serve", 10), Frame("app.py", "handle", 20)),
    session_id="abc",
)


def test_load_rejects_a_newer_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "future.jsonl"
    write_lines(path, {"format": "greenprof-snapshots", "version": 3}, snapshot_line())
    with pytest.raises(UnsupportedFormatError, match=r"line 1: schema version 3") as info:
        greenprof.load(path)
    assert "Upgrade greenprof" in str(info.value)
    assert isinstance(info.value, LoadError)


def test_load_rejects_another_format(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    write_lines(path, {"format": "someone-else", "version": 1})
    with pytest.raises(UnsupportedFormatError, match="'someone-else' is not"):
        greenprof.load(path)


def test_load_skips_a_line_cut_short_and_reads_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "torn.jsonl"
    later = snapshot_line(sequence=1)
    write_lines(path, HEADER, snapshot_line(), '{"type": "snapsh', later)
    with caplog.at_level("WARNING", logger="greenprof"):
        assert greenprof.load(path) == [EXPECTED, attrs.evolve(EXPECTED, sequence=1)]
    assert "skipped 1 damaged line(s)" in caplog.text
    assert "first at line 3" in caplog.text


def test_load_refuses_a_file_whose_first_line_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(LoadError, match=r"is not a greenprof snapshot file: line 1 is not JSON"):
        greenprof.load(path)


def test_load_names_the_line_of_an_invalid_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "invalid.jsonl"
    write_lines(path, HEADER, snapshot_line(), snapshot_line(sequence="one"), snapshot_line())
    with pytest.raises(LoadError, match=r"line 3: not a valid snapshot") as info:
        greenprof.load(path)
    assert "'one'" in str(info.value)


def test_load_names_the_line_of_a_snapshot_missing_a_field(tmp_path: Path) -> None:
    line = snapshot_line()
    del line["event"]
    path = tmp_path / "missing.jsonl"
    write_lines(path, HEADER, line)
    with pytest.raises(LoadError, match=r"line 2: not a valid snapshot \(missing field 'event'\)"):
        greenprof.load(path)


def test_load_rejects_a_file_without_header(tmp_path: Path) -> None:
    path = tmp_path / "headless.jsonl"
    write_lines(path, snapshot_line())
    with pytest.raises(LoadError, match="does not start with a greenprof header line"):
        greenprof.load(path)


def test_load_rejects_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(LoadError, match="is empty"):
        greenprof.load(path)


def test_a_snapshot_with_an_unknown_format_key_is_not_taken_for_a_header(
    tmp_path: Path,
) -> None:
    path = tmp_path / "extra-format-key.jsonl"
    write_lines(path, HEADER, snapshot_line(format="v2-frames"))
    assert greenprof.load(path) == [EXPECTED]


def test_load_ignores_unknown_keys_and_unknown_line_types(tmp_path: Path) -> None:
    path = tmp_path / "newer.jsonl"
    write_lines(
        path,
        {**HEADER, "writer": "greenprof 9.9"},
        {"type": "comment", "text": "ignore me"},
        snapshot_line(cpu_ns=12345, labels={"route": "/"}),
        "",
        {"type": "metadata", "hostname": "box"},
    )
    assert greenprof.load(path) == [EXPECTED]


# -- the decorator and the file ----------------------------------------------------


def test_decorator_with_json_sink_writes_one_session_per_call(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"

    @greenprof.profile(sinks=[JSONSink(path)])
    def handle(main: greenlet.greenlet) -> None:
        wait_in_main(main)

    for _ in range(3):
        run(greenlet.greenlet(functools.partial(handle, greenlet.getcurrent())))
    loaded = greenprof.load(path)
    sessions: dict[str, list[str]] = {}
    for snapshot in loaded:
        sessions.setdefault(snapshot.session_id, []).append(snapshot.event)
    assert len(sessions) == 3
    assert list(sessions.values()) == [["start", "switch_out", "switch_in", "stop"]] * 3
    assert sequences(loaded) == [0, 1, 2, 3] * 3
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 3 * (4 + 1)  # the header, then each call's snapshots and session
    report = greenprof.Report.from_file(path)
    assert [s.session_id for s in report.sessions] == list(sessions)


# -- a full disk ---------------------------------------------------------------------


class Disk:
    """A pretend disk that is full after ``lines`` more lines and then
    ``then`` more bytes, whatever their lengths (``lines`` None: never)."""

    def __init__(self, lines: int | None, then: int = 0) -> None:
        self.lines = lines
        self.then = then

    def take(self, data: bytes) -> int:
        """How much of ``data`` fits; that much is taken."""
        if self.lines is None:
            return len(data)
        fits = 0
        while self.lines:
            newline = data.find(b"\n", fits)
            if newline < 0:
                return len(data)
            fits = newline + 1
            self.lines -= 1
        more = min(self.then, len(data) - fits)
        self.then -= more
        return fits + more


class FillingFile(io.FileIO):
    """FAULT INJECTION: a real file whose writes stop when ``disk`` is full.

    As on a real disk filling up, the write that reaches the limit writes
    what fits and says so, and the next raises ENOSPC. ``truncate_fails``
    makes undoing it fail too (an I/O error).
    """

    def __init__(self, path: str, disk: Disk, *, truncate_fails: bool = False) -> None:
        super().__init__(path, "a+")
        self.disk = disk
        self.truncate_fails = truncate_fails

    def write(self, data: Any) -> int:
        fits = self.disk.take(bytes(data))
        if not fits:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data[:fits])

    def truncate(self, size: int | None = None) -> int:
        if self.truncate_fails:
            raise OSError(errno.EIO, "Input/output error")
        return super().truncate(size)


class JSONSinkOnDisk(JSONSink):
    """A JSONSink whose file is a :class:`FillingFile` (fault injection)."""

    def __init__(self, path: Path, disk: Disk, *, truncate_fails: bool = False) -> None:
        super().__init__(path)
        self.disk = disk
        self.truncate_fails = truncate_fails

    def _open(self) -> io.FileIO:
        return FillingFile(self.path, self.disk, truncate_fails=self.truncate_fails)


def whole_lines(path: Path) -> list[bytes]:
    """The file's lines, each checked to be whole JSON; the file ends a line."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.splitlines()
    for line in lines:
        json.loads(line)
    return lines


# The header, 8 snapshot lines, the session line: a disk full at the start,
# in the header, right after it, in the first snapshot, in the last one, right
# after the snapshots (the session's export fails alone), in the session.
@pytest.mark.parametrize(
    ("lines", "then"), [(0, 0), (0, 1), (0, 20), (1, 0), (1, 50), (8, 100), (9, 0), (9, 100)]
)
def test_a_batch_cut_short_by_a_full_disk_is_undone_and_written_once_space_is_back(
    tmp_path: Path, lines: int, then: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "profile.jsonl"
    disk = Disk(lines, then)
    glet = make_worker(3)
    profiler = greenprof.Profiler(sinks=[JSONSinkOnDisk(path, disk)])
    with caplog.at_level(logging.ERROR, logger="greenprof"):
        profiler.start(glet)
        run(glet)
        profiler.stop()
        # What failed was cut off: the file is empty, or holds the header and
        # the snapshots when only the session's export failed.
        if lines == 1 + snapshots_for(3):
            assert len(whole_lines(path)) == 1 + snapshots_for(3)
        else:
            assert path.read_bytes() == b""
        assert profiler.stats.sink_failures == 1
        assert profiler.flush() is False  # still full: retried, and failed again
        assert profiler.stats.sink_failures == 2
        disk.lines = None  # space is back
        assert profiler.flush() is True
    assert len(whole_lines(path)) == 1 + snapshots_for(3) + 1
    recording = read(path)
    assert recording.snapshots == profiler.snapshots
    assert recording.sessions == profiler.sessions
    assert recording.damaged == []
    failures = [r for r in caplog.records if "No space left on device" in r.getMessage()]
    assert len(failures) == 1  # logged once


def test_a_full_disk_in_a_file_already_written_cuts_back_to_its_last_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "profile.jsonl"
    first = profile_worker(1, sinks=[JSONSink(path)])
    before = path.read_bytes()
    disk = Disk(1, 50)  # one snapshot line and part of the next
    second = profile_worker(2, sinks=[JSONSinkOnDisk(path, disk)])
    assert second.stats.sink_failures == 1
    assert path.read_bytes() == before
    disk.lines = None
    assert second.flush() is True
    assert greenprof.load(path) == first.snapshots + second.snapshots
    assert read(path).damaged == []


def test_a_torn_line_that_cannot_be_cut_off_costs_that_line_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "profile.jsonl"
    first = profile_worker(1, sinks=[JSONSink(path)])
    lines_before = len(whole_lines(path))
    disk = Disk(0, 100)  # inside the first snapshot line, and no undoing it
    second = profile_worker(2, sinks=[JSONSinkOnDisk(path, disk, truncate_fails=True)])
    assert not path.read_bytes().endswith(b"\n")  # torn
    disk.lines = None
    assert second.flush() is True
    with caplog.at_level(logging.WARNING, logger="greenprof"):
        recording = read(path)
    # The retried batch began on a line of its own: only the torn line is lost.
    assert recording.snapshots == first.snapshots + second.snapshots
    assert recording.damaged == [lines_before + 1]
    assert "skipped 1 damaged line(s)" in caplog.text


def test_a_torn_line_left_by_a_killed_writer_does_not_swallow_the_next_batch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "profile.jsonl"
    first = profile_worker(1, sinks=[JSONSink(path)])
    with path.open("ab") as file:
        file.write(encode_snapshot(first.snapshots[0]).encode()[:70])  # killed mid-line
    second = profile_worker(1, sinks=[JSONSink(path)])
    recording = read(path)
    assert recording.snapshots == first.snapshots + second.snapshots
    assert recording.damaged == [1 + snapshots_for(1) + 1 + 1]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs, mounted for the test (root only) and unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill it needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path, leave: int) -> Path:
    """A file taking all of ``folder``'s disk but about ``leave`` bytes."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(b"x" * 4096)
    filler.write_bytes(b"x" * (filler.stat().st_size - leave))
    return filler


def test_a_real_full_disk_leaves_whole_lines_and_space_coming_back_completes_the_file(
    small_disk: Path,
) -> None:
    path = small_disk / "profile.jsonl"
    first = profile_worker(1, sinks=[JSONSink(path)])
    before = path.read_bytes()
    filler = fill(small_disk, leave=4096)  # a page: less than the 30 snapshots' lines
    sink = JSONSink(path)
    glet = make_worker(14)
    profiler = greenprof.Profiler(sinks=[sink])
    profiler.start(glet)
    run(glet)
    profiler.stop()
    assert profiler.stats.sink_failures == 1
    assert path.read_bytes() == before  # the batch's part that fitted was cut off
    assert greenprof.load(path) == first.snapshots
    assert profiler.flush() is False
    filler.unlink()  # space is back
    assert profiler.flush() is True
    recording = read(path)
    assert recording.snapshots == first.snapshots + profiler.snapshots
    assert recording.sessions == first.sessions + profiler.sessions
    assert recording.damaged == []
