"""The file is the session, whole: what is read back equals the live profile,
tags say what each session was, and many sessions merge per tag value."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import gevent
import greenlet
import pytest

import greenprof
from greenprof import Frame, Report, Session, Snapshot
from greenprof.exceptions import ConfigurationError, LoadError
from greenprof.integrations.wsgi import ProfilerMiddleware
from greenprof.sinks import JSONSink, MemorySink

from .conftest import function_name, never_called, serve
from .workloads import checkout, search, shop, spin, spin_until

Cells = dict[tuple[int, tuple[Frame, ...]], tuple[int, int]]


def cells(report: Report) -> Cells:
    """``{(greenlet_id, stack): (on_cpu_ns, off_cpu_ns)}``, zero cells left out."""
    out: Counter[tuple[int, tuple[Frame, ...]]] = Counter()
    offs: Counter[tuple[int, tuple[Frame, ...]]] = Counter()
    for cell in report.stacks:
        out[(cell.greenlet_id, cell.stack)] += cell.on_cpu_ns
        offs[(cell.greenlet_id, cell.stack)] += cell.off_cpu_ns
    return {key: (out[key], offs[key]) for key in out if out[key] or offs[key]}


def assert_same(read_back: Report, live: Report) -> None:
    """The same numbers, per greenlet and per stack, not "close"."""
    assert cells(read_back) == cells(live)
    assert read_back.greenlets == live.greenlets
    assert read_back.slices == live.slices
    assert read_back.waits == live.waits
    assert read_back.sessions == live.sessions


def burn_sleep_burn() -> None:
    """The handler of the issue: 20 ms on-CPU, a 10 ms wait, 20 ms on-CPU."""
    spin(0.020)
    gevent.sleep(0.010)
    spin(0.020)


# -- one session, every mode -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["greenlet", "hybrid", "thread"])
@pytest.mark.parametrize("dump_period", [0.001, 0.004])
def test_a_file_reads_back_the_live_report_exactly(
    tmp_path: Path, mode: str, dump_period: float
) -> None:
    path = tmp_path / "handler.jsonl"
    profilers: list[greenprof.Profiler] = []

    def handler() -> None:
        with greenprof.profile(
            sinks=[JSONSink(path)], mode=mode, dump_period=dump_period, tags={"path": "/x"}
        ) as profiler:
            burn_sleep_burn()
        profilers.append(profiler)

    gevent.spawn(handler).join()
    (profiler,) = profilers
    live = profiler.report()
    read_back = Report.from_file(path)
    assert_same(read_back, live)
    (session,) = read_back.sessions
    assert session.session_id == profiler.session_id
    assert session.mode == mode
    assert session.dump_period_ns == round(dump_period * 1e9)
    assert session.tags == {"path": "/x"}
    assert session.stop_ns > session.start_ns
    # And the numbers are the truth, not zero: 40 ms on-CPU, 10 ms waiting.
    gid = next(iter({s.greenlet_id for s in profiler.snapshots if s.event != "sample"}), None)
    if mode == "thread":
        gid = next(s.greenlet_id for s in read_back.snapshots if s.event == "sample")
        own = [s for s in read_back.snapshots if s.greenlet_id == gid]
        assert read_back.greenlets[gid].on_cpu_ns == len(own) * session.dump_period_ns
        # Samples, each worth its dump period: never more than the session
        # lasted (how many the sampler took depends on the machine's load).
        assert 0 < read_back.greenlets[gid].on_cpu_ns <= session.stop_ns - session.start_ns
    else:
        assert gid is not None
        totals = read_back.greenlets[gid]
        # At least what it spun and slept; a loaded machine only adds to it.
        assert 0.040 <= totals.on_cpu_ns / 1e9 < 0.040 * 5
        assert 0.009 <= totals.off_cpu_ns / 1e9 < 0.010 * 10
        assert totals.wall_ns == session.stop_ns - session.start_ns


def test_many_sessions_appended_to_one_file_read_back_as_their_sum(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    sink = JSONSink(path)
    profilers: list[greenprof.Profiler] = []

    def handler(index: int) -> None:
        with greenprof.profile(sinks=[sink], tags={"n": str(index % 3)}) as profiler:
            spin(0.001 * (1 + index % 3))
            gevent.sleep(0.002)
            spin(0.001)
        profilers.append(profiler)

    gevent.joinall([gevent.spawn(handler, i) for i in range(12)])
    expected: Counter[tuple[int, tuple[Frame, ...]]] = Counter()
    expected_off: Counter[tuple[int, tuple[Frame, ...]]] = Counter()
    for profiler in profilers:
        for cell in profiler.report().stacks:
            expected[(cell.greenlet_id, cell.stack)] += cell.on_cpu_ns
            expected_off[(cell.greenlet_id, cell.stack)] += cell.off_cpu_ns
    read_back = Report.from_file(path)
    assert cells(read_back) == {
        key: (expected[key], expected_off[key])
        for key in expected
        if expected[key] or expected_off[key]
    }
    assert sorted(s.session_id for s in read_back.sessions) == sorted(
        p.session_id for p in profilers
    )
    assert Counter(s.tags["n"] for s in read_back.sessions) == {"0": 4, "1": 4, "2": 4}


def test_a_restarted_profiler_keeps_each_run_as_its_own_session(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    profiler = greenprof.Profiler(sinks=[JSONSink(path)], tags={"kind": "run"})
    first_id = profiler.session_id
    for _ in range(2):
        profiler.start()
        spin(0.002)
        gevent.sleep(0.003)
        profiler.stop()
    read_back = Report.from_file(path)
    assert [s.session_id for s in read_back.sessions] == [first_id, profiler.session_id]
    assert first_id != profiler.session_id
    # Sequences count from 0 in each session; the gap between runs is nobody's time.
    for session in read_back.sessions:
        mine = [s for s in read_back.snapshots if s.session_id == session.session_id]
        assert [s.sequence for s in mine] == list(range(len(mine)))
        assert [s.event for s in mine] == ["start", "switch_out", "switch_in", "stop"]
    assert_same(read_back, profiler.report())
    wall = sum(g.wall_ns for g in read_back.greenlets.values())
    assert wall == sum(s.stop_ns - s.start_ns for s in read_back.sessions)


# -- where a session starts and stops -------------------------------------------------


def test_a_request_that_never_yields_shows_where_its_time_went(tmp_path: Path) -> None:
    path = tmp_path / "cpu.jsonl"

    @greenprof.profile(sinks=[JSONSink(path)])
    def never_yields() -> None:
        spin(0.03)

    def caller() -> None:
        never_yields()  # the decorated call

    gevent.spawn(caller).join()
    read_back = Report.from_file(path)
    assert [s.event for s in read_back.snapshots] == ["start", "stop"]
    (cell,) = [c for c in read_back.stacks if c.on_cpu_ns]
    assert cell.stack[-1].function.endswith("caller")
    assert 0.03 <= cell.on_cpu_ns / 1e9 < 0.03 * 5  # a loaded machine only adds to it
    (session,) = read_back.sessions
    assert cell.on_cpu_ns == session.stop_ns - session.start_ns


def test_start_and_stop_are_recorded_only_in_the_greenlet_the_session_runs_in() -> None:
    worker = gevent.spawn(gevent.sleep, 0.001)
    with greenprof.profile(worker) as profiler:  # started and stopped in another greenlet
        worker.join()
    assert [s.event for s in profiler.snapshots] == ["switch_in", "switch_out", "switch_in", "exit"]


# -- tags ------------------------------------------------------------------------------


def test_tags_must_map_strings_to_strings() -> None:
    with pytest.raises(ConfigurationError, match="tags must map strings to strings"):
        greenprof.Profiler(tags={"status": 200})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="tags must map strings to strings"):
        greenprof.profile(tags=["path"])  # type: ignore[arg-type]


def test_tags_set_until_stop_are_kept_in_the_session() -> None:
    sink = MemorySink()
    with greenprof.profile(sinks=[sink], tags={"service": "shop"}) as profiler:
        profiler.tags["user"] = "42"
    (session,) = sink.sessions
    assert session.tags == {"service": "shop", "user": "42"}
    assert profiler.report().sessions == [session]


@pytest.mark.parametrize("mode", ["greenlet", "hybrid", "thread"])
def test_middleware_sessions_of_fifty_concurrent_requests_read_back_exactly(
    tmp_path: Path, mode: str
) -> None:
    path = tmp_path / "requests.jsonl"
    live: list[Report] = []
    app = ProfilerMiddleware(
        shop,
        sinks=[JSONSink(path)],
        mode=mode,
        dump_period=0.002,
        on_profiled=lambda profiler, environ: live.append(profiler.report()),
        request_tags=lambda environ: {"client": str(environ["QUERY_STRING"] or "none")},
    )
    paths = ["/checkout?a", "/search?b"] * 25
    replies = serve(app, paths)
    assert all(b" 201 " in r or b" 404 " in r for r in replies)
    assert app.kept == 50
    read_back = Report.from_file(path)
    assert len(read_back.sessions) == 50
    expected = Report(
        [s for report in live for s in report.snapshots],
        sessions=[s for report in live for s in report.sessions],
    )
    assert_same(read_back, expected)
    by_path = Counter(
        (s.tags["method"], s.tags["path"], s.tags["status"]) for s in read_back.sessions
    )
    assert by_path == {("GET", "/checkout", "201"): 25, ("GET", "/search", "404"): 25}
    for session in read_back.sessions:
        assert session.tags["duration_ms"] == f"{session.duration_ns / 1e6:.3f}"
        assert session.tags["client"] == ("a" if session.tags["path"] == "/checkout" else "b")
        assert ("route" in session.tags) == (session.tags["path"] == "/checkout")


def test_middleware_tags_a_request_that_raised_with_its_error(tmp_path: Path) -> None:
    sink = MemorySink()
    app = ProfilerMiddleware(shop, sinks=[sink], request_tags=lambda environ: {"bad": 1})  # type: ignore[dict-item,arg-type,return-value]
    (reply,) = serve(app, ["/boom"])
    assert reply.startswith(b"HTTP/1.1 500")
    (session,) = sink.sessions
    assert session.tags["error"] == "RuntimeError"
    assert "status" not in session.tags
    assert "bad" not in session.tags  # a bad tag function is left out, not fatal


# -- merged views ----------------------------------------------------------------------


def test_group_by_path_merges_every_request_of_each_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "shop.jsonl"
    app = ProfilerMiddleware(shop, sinks=[JSONSink(path)])
    began = time.perf_counter_ns()
    serve(app, ["/checkout", "/search"] * 10)
    served_ns = time.perf_counter_ns() - began
    report = Report.from_file(path)
    groups = report.group_by("path")
    assert list(groups) == ["/checkout", "/search"]  # heaviest first
    for value, merged in groups.items():
        sessions = [s for s in report.sessions if s.tags["path"] == value]
        assert merged.sessions == sessions
        alone = report.where({"path": value})
        on = sum(g.on_cpu_ns for g in alone.greenlets.values())
        off = sum(g.off_cpu_ns for g in alone.greenlets.values())
        # One tree: every greenlet folded into one root, named by the value.
        assert set(merged.greenlets) == {0}
        assert merged.greenlets[0].greenlet_name == f"path={value}"
        assert merged.greenlets[0].on_cpu_ns == on == sum(c.on_cpu_ns for c in merged.stacks)
        assert merged.greenlets[0].off_cpu_ns == off == sum(c.off_cpu_ns for c in merged.stacks)
        assert merged.greenlets[0].wall_ns == sum(s.duration_ns for s in sessions)
        # Equal stacks of different requests are one cell.
        assert len(merged.stacks) == len({c.stack for c in merged.stacks})
        assert len(merged.stacks) < len(alone.stacks)
    # Greenlet mode gives a burst to the stack it yields from: in the handler.
    checkout_on = groups["/checkout"].total_ns(0, function_name(checkout))
    search_on = groups["/search"].total_ns(0, function_name(search))
    # At least what they spun (a loaded machine only adds to it).
    assert checkout_on / 1e9 >= 10 * 0.004
    assert search_on / 1e9 >= 10 * 0.001
    # One thread ran them all: their on-CPU time fits in the time they took
    # to serve (greenlet mode gives no burst to two requests).
    assert sum(g.on_cpu_ns for g in report.greenlets.values()) <= served_ns
    # Off-CPU: its 6 ms waits, and the time the other requests then ran.
    waited = groups["/checkout"].greenlets[0].off_cpu_ns
    assert waited / 1e9 >= 10 * 0.006 * 0.95


def test_where_filters_sessions_by_tags_and_duration() -> None:
    def session(session_id: str, duration: int, **tags: str) -> Session:
        return Session(session_id, 1_000, 1_000 + duration, tags=tags)

    report = Report(
        [],
        sessions=[
            session("a", 50, path="/a"),
            session("b", 500, path="/a"),
            session("c", 500, path="/b"),
        ],
    )
    assert [s.session_id for s in report.where({"path": "/a"}).sessions] == ["a", "b"]
    assert [s.session_id for s in report.where(min_duration_ns=100).sessions] == ["b", "c"]
    assert [s.session_id for s in report.where({"path": "/a"}, min_duration_ns=100).sessions] == [
        "b"
    ]
    assert report.group_by("missing") == {}


# -- files that are not whole --------------------------------------------------------


def write(path: Path, *lines: object) -> None:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )


def snapshot_line(sequence: int, event: str, timestamp: int, **more: object) -> dict[str, object]:
    return {
        "type": "snapshot",
        "session_id": "s",
        "sequence": sequence,
        "timestamp_ns": timestamp,
        "event": event,
        "greenlet_id": 7,
        "greenlet_name": "worker",
        "thread_id": 1,
        "stack": [["app.py", "handle", 10]],
        **more,
    }


SESSION = {
    "type": "session",
    "session_id": "s",
    "start_ns": 1_000,
    "stop_ns": 9_000,
    "mode": "greenlet",
    "dump_period_ns": 10_000_000,
    "max_depth": 128,
    "max_snapshots": 10_000,
    "dropped": 0,
    "running_at_start": [7],
    "bounds": [[7, 1_000, 9_000]],
    "tags": {"path": "/x"},
}


def test_a_schema_1_file_loads_without_sessions(tmp_path: Path) -> None:
    path = tmp_path / "v1.jsonl"
    write(
        path,
        {"format": "greenprof-snapshots", "version": 1},
        snapshot_line(0, "switch_out", 2_000),
        snapshot_line(1, "switch_in", 5_000),
    )
    report = Report.from_file(path)
    assert report.sessions == []
    # No bounds: from the first snapshot to the last, 3 us waiting.
    assert report.greenlets[7].off_cpu_ns == 3_000
    assert report.greenlets[7].on_cpu_ns == 0
    assert report.where({"path": "/x"}).snapshots == []


def test_a_schema_2_file_with_its_session_counts_to_the_bounds(tmp_path: Path) -> None:
    path = tmp_path / "v2.jsonl"
    write(
        path,
        {"format": "greenprof-snapshots", "version": 2},
        snapshot_line(0, "switch_out", 2_000),
        snapshot_line(1, "switch_in", 5_000),
        SESSION,
    )
    report = Report.from_file(path)
    (session,) = report.sessions
    assert session.tags == {"path": "/x"}
    assert session.bounds == {7: (1_000, 9_000)}
    # Running from the start (1,000) to the switch-out, waiting, then to the stop.
    assert report.greenlets[7].on_cpu_ns == 1_000 + 4_000
    assert report.greenlets[7].off_cpu_ns == 3_000


def test_a_truncated_file_keeps_everything_before_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    write(
        path,
        {"format": "greenprof-snapshots", "version": 2},
        snapshot_line(0, "switch_out", 2_000),
        snapshot_line(1, "switch_in", 5_000),
    )
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(SESSION)[:40])  # the session line, cut short
    report = Report.from_file(path)
    assert len(report.snapshots) == 2
    assert report.sessions == []  # replayed without bounds, like a schema 1 file
    assert report.greenlets[7].off_cpu_ns == 3_000


def test_a_session_without_snapshots_still_counts_its_time(tmp_path: Path) -> None:
    path = tmp_path / "silent.jsonl"
    write(path, {"format": "greenprof-snapshots", "version": 2}, SESSION)
    report = Report.from_file(path)
    assert report.snapshots == []
    # Greenlet 7 ran the whole session (it was running at its start).
    assert report.greenlets[7].on_cpu_ns == 8_000


def test_an_invalid_session_line_is_refused_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    write(path, {"format": "greenprof-snapshots", "version": 2}, {**SESSION, "stop_ns": "late"})
    with pytest.raises(LoadError, match=r"line 2: not a valid session \(expected a whole"):
        Report.from_file(path)
    write(path, {"format": "greenprof-snapshots", "version": 2}, {**SESSION, "tags": {"a": 1}})
    with pytest.raises(LoadError, match=r"line 2: not a valid session"):
        Report.from_file(path)


def test_a_version_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bool.jsonl"
    write(path, {"format": "greenprof-snapshots", "version": True})
    with pytest.raises(LoadError, match="schema version True"):
        greenprof.load(path)


def test_session_records_survive_the_round_trip() -> None:
    from greenprof._schema import encode_session

    session = Session(
        "id",
        1,
        2,
        mode="hybrid",
        dump_period_ns=5,
        max_depth=3,
        max_snapshots=4,
        dropped=6,
        running_at_start={7},
        bounds={7: (1, 2), 8: (0, 2)},
        tags={"path": "/ü"},
    )
    line = json.loads(encode_session(session))
    assert line["bounds"] == [[7, 1, 2], [8, 0, 2]]
    from greenprof._schema import _decode_session

    assert _decode_session("f", 1, line) == session


def test_start_and_stop_are_snapshot_events() -> None:
    assert greenprof.EVENTS[-2:] == ("start", "stop")
    assert Snapshot(1, "main", 2, "stop", 0, 10, (), "s").event == "stop"


# -- what the review of the file format found ---------------------------------------


def test_a_tag_that_is_not_a_string_is_refused_where_it_is_set() -> None:
    with greenprof.profile() as profiler:
        with pytest.raises(ConfigurationError, match="tags must map strings to strings"):
            profiler.tags["status"] = 200  # type: ignore[assignment]
        with pytest.raises(ConfigurationError, match="tags must map strings to strings"):
            profiler.tags.update(code=404)  # type: ignore[arg-type]
        profiler.tags.setdefault("status", "200")
        profiler.tags |= {"kind": "test"}
    (session,) = profiler.sessions
    assert session.tags == {"status": "200", "kind": "test"}
    assert [s.sequence for s in profiler.snapshots] == list(range(len(profiler.snapshots)))


class FlakySink(MemorySink):
    """A MemorySink whose first ``failures`` exports raise."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def export(self, batch: list[Snapshot]) -> None:  # type: ignore[override]
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        super().export(batch)


def test_a_session_waits_for_its_snapshots_when_their_export_failed() -> None:
    sink = FlakySink(failures=1)
    profiler = greenprof.Profiler(sinks=[sink])
    profiler.start()
    gevent.sleep(0.001)
    profiler.stop()
    # Without its snapshots, the session would read back as other numbers.
    assert sink.snapshots == []
    assert sink.sessions == []
    assert profiler.stats.sink_failures == 1
    assert profiler.flush() is True
    assert sink.snapshots == profiler.snapshots
    assert sink.sessions == profiler.sessions
    assert_same(Report(sink.snapshots, sessions=sink.sessions), profiler.report())


def test_thread_mode_invents_no_time_for_greenlets_it_did_not_sample() -> None:
    import threading

    def work() -> None:
        # On until the thread was sampled (greenlet id 0).
        spin_until(0.05, lambda: any(s.greenlet_id == 0 for s in profiler.snapshots))

    profiler = greenprof.Profiler(mode="thread", dump_period=0.001)
    thread = threading.Thread(target=work)
    thread.start()
    profiler.start()  # the main greenlet, which then only waits for the thread
    profiler.start(thread)
    thread.join()
    profiler.stop()
    report = profiler.report()
    (session,) = report.sessions
    assert session.bounds == {}
    assert session.running_at_start == frozenset()
    # Every greenlet in the report was sampled: nothing stands for a whole
    # session of time nobody saw.
    sampled = {s.greenlet_id for s in report.snapshots}
    assert set(report.greenlets) == sampled
    for totals in report.greenlets.values():
        assert totals.on_cpu_ns == totals.samples * session.dump_period_ns
    assert report.greenlets[0].greenlet_name.startswith("thread ")


def test_views_grouped_by_a_tag_show_the_sessions_without_it(tmp_path: Path) -> None:
    from .conftest import greenprof_command

    path = tmp_path / "mixed.jsonl"
    sink = JSONSink(path)
    for request in ("/a", "/a", "/b", "/b"):
        with greenprof.profile(sinks=[sink], tags={"path": request}):
            gevent.sleep(0.001)

    def background_job() -> None:
        spin(0.02)

    with greenprof.profile(sinks=[sink]):  # no tags: the heaviest session
        background_job()
    report = Report.from_file(path)
    # (Heaviest first: which of /a and /b is depends on the machine's load.)
    assert sorted(report.group_by("path")) == ["/a", "/b"]  # left out by default
    grouped = report.group_by("path", missing="(none)")
    assert sorted(grouped) == ["(none)", "/a", "/b"]
    assert grouped["(none)"].greenlets[0].wall_ns == report.sessions[-1].duration_ns
    shown = greenprof_command("show", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "path=(none)" in shown.stdout
    # It never yields: its time goes to where its session started, this test.
    untagged = shown.stdout.split("path=(none)")[1].split("path=/")[0]
    assert function_name(test_views_grouped_by_a_tag_show_the_sessions_without_it) in untagged
    assert re.search(r"^\(none\) +1 ", shown.stdout, re.MULTILINE)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"mode": "fast"}, "mode 'fast' is not one of greenlet, hybrid, thread"),
        ({"stop_ns": 500}, "it stops (500) before it starts (1000)"),
        ({"dump_period_ns": -5}, "dump_period_ns is -5, not >= 1"),
        ({"max_depth": 0}, "max_depth is 0, not >= 1"),
        ({"dropped": -1}, "dropped is -1, not >= 0"),
    ],
)
def test_a_session_record_no_greenprof_writes_is_refused(
    tmp_path: Path, change: dict[str, object], problem: str
) -> None:
    path = tmp_path / "odd.jsonl"
    write(path, {"format": "greenprof-snapshots", "version": 2}, {**SESSION, **change})
    with pytest.raises(LoadError, match=re.escape(f"line 2: not a valid session ({problem})")):
        Report.from_file(path)


def test_a_session_is_frozen_and_not_hashable() -> None:
    session = Session("s", 1, 2, tags={"a": "b"})
    with pytest.raises(AttributeError):
        session.stop_ns = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="unhashable"):
        hash(session)
    assert session == Session("s", 1, 2, tags={"a": "b"})


@pytest.mark.parametrize("draft", ["draft", "setters"])
def test_a_kept_sessions_record_is_the_session_its_constructor_makes(
    draft: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From 3.12 the record is filled as a draft that becomes a Session;
    # before, and here with the draft taken away, through slot setters.
    from greenprof import _session
    from greenprof.snapshot import SESSION_DRAFT

    assert (SESSION_DRAFT is not None) == (sys.version_info >= (3, 12))
    if draft == "setters":
        monkeypatch.setattr(_session, "SESSION_DRAFT", None)
    elif SESSION_DRAFT is None:
        pytest.skip("CPython before 3.12 refuses the draft's __class__ assignment")
    else:  # the draft must be what makes it
        monkeypatch.setattr(_session, "SESSION_SETTERS", (never_called,) * 11)
    sink = MemorySink()
    with greenprof.profile(sinks=[sink], tags={"service": "shop"}, max_snapshots=7) as profiler:
        gevent.sleep(0)
    (session,) = sink.sessions
    me = id(gevent.getcurrent())
    assert type(session) is Session
    assert session == Session(
        session_id=profiler.snapshots[0].session_id,
        start_ns=session.start_ns,
        stop_ns=session.stop_ns,
        mode="greenlet",
        max_snapshots=7,
        running_at_start=[me],
        bounds={me: (session.start_ns, session.stop_ns)},
        tags={"service": "shop"},
    )
    assert 0 < session.start_ns < session.stop_ns
    assert profiler.report().sessions == [session]
    with pytest.raises(AttributeError):
        session.stop_ns = 3  # type: ignore[misc]


@pytest.mark.parametrize("read_first", [True, False], ids=["read first", "stats first"])
def test_a_request_sessions_drops_still_count_once_its_snapshots_are_read(
    read_first: bool,
) -> None:
    # A request's session, read after it stopped, takes its one buffer's
    # records and lets the buffer go: what the buffer dropped stays counted.
    scope = greenprof.profile(max_snapshots=3)
    main = greenlet.getcurrent()
    seen: list[greenprof.Profiler] = []

    def request() -> None:
        with scope as profiler:
            for _ in range(5):
                main.switch()
        seen.append(profiler)

    glet = greenlet.greenlet(request)
    while not glet.dead:
        glet.switch()
    (profiler,) = seen
    if not read_first:
        assert profiler.stats.dropped == 9
    # start, 5 switch-outs, 5 switch-ins and stop: 12 records, the first 3 kept
    assert [s.event for s in profiler.snapshots] == ["start", "switch_out", "switch_in"]
    assert profiler.stats.dropped == 9
    assert profiler.stats.dropped_by_greenlet == {id(glet): 9}
    assert profiler.sessions[0].dropped == 9
    assert [s.event for s in profiler.snapshots] == ["start", "switch_out", "switch_in"]
