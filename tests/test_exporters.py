"""Exporters: collapsed stacks, speedscope and the text tree agree with the report."""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import re
import threading
from pathlib import Path
from typing import Any

import gevent
import pytest

import greenprof
from greenprof import exporters
from greenprof.exceptions import ConfigurationError
from greenprof.sinks import MemorySink

from .conftest import dump_dom, greenprof_command
from .workloads import record_red_and_blue, recorded_red_work, spin


@pytest.fixture(scope="module")
def report() -> greenprof.Report:
    profiler, _, _ = record_red_and_blue()
    return profiler.report()


def test_collapsed_lines_keep_greenlets_apart_and_add_up(report: greenprof.Report) -> None:
    for weight, attribute in (("on_cpu", "on_cpu_ns"), ("off_cpu", "off_cpu_ns")):
        totals: dict[str, int] = {}
        for line in exporters.collapsed(report, weight=weight).splitlines():
            stack, value = line.rsplit(" ", 1)
            parts = stack.split(";")
            totals[parts[0]] = totals.get(parts[0], 0) + int(value)
            colours = {"red" if "red_" in p else "blue" for p in parts[1:] if "_w" in p}
            assert len(colours) <= 1  # never both greenlets' frames in one stack
        expected = {
            f"{g.greenlet_name} [{g.greenlet_id:#x}]": getattr(g, attribute)
            for g in report.greenlets.values()
            if getattr(g, attribute)
        }
        assert totals == expected


def test_collapsed_snapshot_counts_match_the_snapshots(report: greenprof.Report) -> None:
    counted = sum(
        int(line.rsplit(" ", 1)[1])
        for line in exporters.collapsed(report, weight="snapshots").splitlines()
    )
    assert counted == len(report.snapshots)


def replay_evented(profile: dict[str, Any]) -> tuple[int, list[tuple[int, int, list[int]]]]:
    """Check an evented profile's events nest and move forward in time; the
    time some frame was open, and each ``(open, close, stack)`` of a leaf."""
    stack: list[int] = []
    opened: list[int] = []
    busy, since, last = 0, 0, 0
    leaves: list[tuple[int, int, list[int]]] = []
    for event in profile["events"]:
        assert event["at"] >= last
        last = event["at"]
        if event["type"] == "O":
            if not stack:
                since = event["at"]
            stack.append(event["frame"])
            opened.append(event["at"])
        else:
            assert stack
            assert stack[-1] == event["frame"]  # closes the innermost open frame
            leaves.append((opened[-1], event["at"], list(stack)))
            stack.pop()
            opened.pop()
            if not stack:
                busy += event["at"] - since
    assert stack == []
    assert profile["endValue"] >= last
    return busy, leaves


def test_speedscope_has_a_timeline_per_greenlet_with_the_reports_values(
    report: greenprof.Report,
) -> None:
    document = json.loads(exporters.speedscope(report, weight="on_cpu"))
    assert document["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = document["shared"]["frames"]
    by_name = {p["name"]: p for p in document["profiles"]}
    assert len(by_name) == len(report.greenlets)
    origin = min(s.start_ns for s in report.sessions)
    for totals in report.greenlets.values():
        profile = by_name[f"{totals.greenlet_name} [{totals.greenlet_id:#x}] (on-cpu)"]
        assert profile["type"] == "evented"
        assert profile["unit"] == "nanoseconds"
        busy, _ = replay_evented(profile)
        assert busy == totals.on_cpu_ns
        names = {frames[e["frame"]]["name"] for e in profile["events"]}
        mine = "red" if any("red_work" in n for n in names) else "blue"
        assert not any(n.startswith("blue_" if mine == "red" else "red_") for n in names)
        # The exact moments: each run slice opens when it began.
        slices = [s for s in report.slices if s.greenlet_id == totals.greenlet_id]
        opens = {e["at"] for e in profile["events"] if e["type"] == "O"}
        assert {s.start_ns - origin for s in slices if s.duration_ns} <= opens


def test_speedscope_merged_views_and_counts_are_sampled(report: greenprof.Report) -> None:
    counts = json.loads(exporters.speedscope(report, weight="snapshots"))
    assert {p["type"] for p in counts["profiles"]} == {"sampled"}
    assert sum(sum(p["weights"]) for p in counts["profiles"]) == len(report.snapshots)
    merged = json.loads(exporters.speedscope(report.merged("all"), weight="off_cpu"))
    (profile,) = merged["profiles"]
    assert profile["type"] == "sampled"
    assert profile["name"] == "all (off-cpu)"
    assert sum(profile["weights"]) == sum(g.off_cpu_ns for g in report.greenlets.values())


def test_speedscope_file_follows_speedscopes_published_schema(
    report: greenprof.Report, speedscope_package: str
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = Path(speedscope_package) / "dist" / "release" / "file-format-schema.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    for weight in exporters.WEIGHTS:
        jsonschema.validate(json.loads(exporters.speedscope(report, weight=weight)), schema)
    jsonschema.validate(json.loads(exporters.speedscope(report.merged("all"))), schema)


def test_speedscope_itself_opens_the_file_in_chromium(
    report: greenprof.Report, speedscope_package: str, tmp_path: Path
) -> None:
    """speedscope's own release build, served from 127.0.0.1, loads the file
    (``#profileURL=``) and lists each greenlet's timeline with its total."""
    release = Path(speedscope_package) / "dist" / "release"
    (release / "profile.json").write_text(
        exporters.speedscope(report, weight="on_cpu", name="red and blue"), encoding="utf-8"
    )
    handler = functools.partial(QuietHandler, directory=str(release))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            dom = dump_dom(f"{base}/index.html#profileURL={base}/profile.json", str(tmp_path))
        finally:
            server.shutdown()
    assert "Something went wrong" not in dom
    assert "<title>red and blue - speedscope</title>" in dom
    for totals in report.greenlets.values():
        name = f"{totals.greenlet_name} [{totals.greenlet_id:#x}] (on-cpu)"
        # speedscope's own total for the profile, as it formats nanoseconds.
        row = re.search(re.escape(name) + r"</span></td><td[^>]*>([^<]+)</td>", dom)
        assert row is not None, dom[-2000:]
        assert row.group(1) == f"{totals.on_cpu_ns / 1e6:.2f}ms"
    assert "(1/2)" in dom  # one profile per greenlet


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_text_tree_shows_each_greenlet_with_its_totals(report: greenprof.Report) -> None:
    tree = exporters.text(report)
    for totals in report.greenlets.values():
        assert f"{totals.greenlet_name} [{totals.greenlet_id:#x}]" in tree
        assert f"on-CPU {totals.on_cpu_ns / 1e6:.2f} ms" in tree
    assert "red_work" in tree
    assert "blue_wait" in tree
    assert "\033[" not in tree
    assert "\033[1m" in exporters.text(report, color=True)


def test_an_unknown_weight_is_refused(report: greenprof.Report) -> None:
    with pytest.raises(ConfigurationError, match="weight must be one of"):
        exporters.collapsed(report, weight="wall")  # type: ignore[arg-type]


def test_chrome_trace_has_a_named_track_per_greenlet_with_nested_slices(
    report: greenprof.Report,
) -> None:
    trace = json.loads(exporters.chrome_trace(report))
    events = trace["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert sorted(names.values()) == sorted(
        f"{g.greenlet_name} [{g.greenlet_id:#x}]" for g in report.greenlets.values()
    )
    origin = trace["otherData"]["start_ns"]
    assert origin == min(s.start_ns for s in report.sessions)
    by_track: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        if event["ph"] == "X":
            assert type(event["ts"]) is int  # whole microseconds from the start
            assert type(event["dur"]) is int
            by_track.setdefault(event["tid"], []).append(event)
    for track, track_events in by_track.items():
        totals = next(
            g for g in report.greenlets.values() if f"[{g.greenlet_id:#x}]" in names[track]
        )
        running = [e for e in track_events if e["name"] == "running"]
        waiting = [e for e in track_events if e["name"] == "waiting"]
        # Floored to whole microseconds: within 1 us a slice of the truth.
        assert abs(sum(e["dur"] for e in running) - totals.on_cpu_ns / 1000) <= len(running)
        assert abs(sum(e["dur"] for e in waiting) - totals.off_cpu_ns / 1000) <= len(waiting)
        slices = [s for s in report.slices if s.greenlet_id == totals.greenlet_id]
        assert sorted(e["ts"] for e in running) == [(s.start_ns - origin) // 1000 for s in slices]
        # Run slices and waits of one greenlet follow each other, never overlap.
        timeline = sorted(running + waiting, key=lambda e: e["ts"])
        for before, after in itertools.pairwise(timeline):
            assert before["ts"] + before["dur"] <= after["ts"]
        for event in track_events:  # frames nest inside their slice
            outer = next(
                e
                for e in running + waiting
                if e["ts"] <= event["ts"]
                and e["cat"] == event["cat"]
                and event["ts"] + event["dur"] <= e["ts"] + e["dur"]
            )
            assert outer["ts"] <= event["ts"]


def test_cli_shows_and_converts_a_recorded_file(tmp_path: Path) -> None:

    path = recorded_red_work(tmp_path)
    shown = greenprof_command("show", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "red_work" in shown.stdout
    assert "red_wait" in shown.stdout
    out = tmp_path / "profile.folded"
    converted = greenprof_command(
        "convert", str(path), "--format", "collapsed", "--weight", "off_cpu", "-o", str(out)
    )
    assert converted.returncode == 0, converted.stderr
    expected = exporters.collapsed(greenprof.Report.from_file(path), weight="off_cpu")
    assert out.read_text() == expected
    assert expected
    bad = greenprof_command("show", str(tmp_path / "missing.jsonl"))
    assert bad.returncode == 1
    assert bad.stderr.startswith("greenprof: ")
    assert len(bad.stderr.strip().splitlines()) == 1


PROGRAM = """
import sys, gevent
from gevent import monkey

def fetch(n):
    gevent.sleep(0.002 * n)

def main():
    gevent.joinall([gevent.spawn(fetch, i) for i in range(1, 4)])
    with open(sys.argv[1], "w") as out:
        out.write(" ".join([*sys.argv[2:], str(monkey.is_module_patched("socket"))]))
    sys.exit(3)

main()
"""


def test_cli_run_profiles_a_program_and_keeps_its_exit_code(tmp_path: Path) -> None:

    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    seen = tmp_path / "argv.txt"
    output = tmp_path / "out.jsonl"
    result = greenprof_command(
        "run", "--patch", "-o", str(output), str(script), str(seen), "alpha", "beta"
    )
    assert result.returncode == 3
    assert seen.read_text() == "alpha beta True"  # arguments passed, gevent patched
    snapshots = greenprof.load(output)
    children = {s.greenlet_id for s in snapshots if s.parent_id is not None}
    assert len(children) == 3  # every greenlet the program spawned
    assert {f.function for s in snapshots for f in s.stack} >= {"main", "fetch"}
    assert "snapshots of 4 greenlets" in result.stderr

    folded = tmp_path / "out.folded"
    greenprof_command("run", "--format", "collapsed", "-o", str(folded), str(script), str(seen))
    assert "fetch (" in folded.read_text()
    missing = greenprof_command("run")
    assert missing.returncode == 2
    assert "needs a script or -m module" in missing.stderr


def test_export_and_the_cli_write_pprof_as_bytes_and_html_as_a_page(tmp_path: Path) -> None:
    import gzip

    path = recorded_red_work(tmp_path)
    report = greenprof.Report.from_file(path)
    for format, weight in (("pprof", "off_cpu"), ("html", "on_cpu")):
        out = tmp_path / f"profile.{format}"
        converted = greenprof_command(
            "convert", str(path), "--format", format, "--weight", weight, "-o", str(out)
        )
        assert converted.returncode == 0, converted.stderr
        expected = exporters.export(report, format, weight=weight)
        written = out.read_bytes()
        assert written == (expected if isinstance(expected, bytes) else expected.encode())
    assert gzip.decompress((tmp_path / "profile.pprof").read_bytes())  # a real gzip stream
    assert exporters.export(report, "pprof") != exporters.export(report, "pprof", weight="off_cpu")
    assert "red_wait" in (tmp_path / "profile.html").read_text()
    with pytest.raises(ConfigurationError, match="format must be one of"):
        exporters.export(report, "svg")
    with pytest.raises(ConfigurationError, match="weight must be one of"):
        exporters.write(report, "html", tmp_path / "x.html", weight="wall")


def test_write_escapes_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    frame = greenprof.Frame(filename="/srv/caf\udce9.py", function="handler", lineno=3)
    snapshots = [
        greenprof.Snapshot(
            greenlet_id=1,
            greenlet_name="worker",
            thread_id=1,
            event=event,
            sequence=index,
            timestamp_ns=1_000_000 * (index + 1),
            stack=(frame,) if event == "switch_out" else (),
            session_id="s",
        )
        for index, event in enumerate(("switch_in", "switch_out", "switch_in", "exit"))
    ]
    report = greenprof.Report(snapshots)
    for format in ("collapsed", "text"):
        out = tmp_path / f"profile.{format}"
        exporters.write(report, format, out)
        assert "caf\\udce9.py" in out.read_text(encoding="utf-8")


# -- timelines: one greenlet's time never overlaps itself ----------------------------


def assert_nested(trace: dict[str, Any]) -> int:
    """Every track's complete events nest properly (what Perfetto needs) and
    its top-level slices never overlap; the number of events checked."""
    by_track: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for event in trace["traceEvents"]:
        if event["ph"] == "X":
            by_track.setdefault((event["pid"], event["tid"]), []).append(event)
    for events in by_track.values():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))
        slices = [e for e in events if e["name"] in ("running", "waiting")]
        for before, after in itertools.pairwise(slices):
            assert before["ts"] + before["dur"] <= after["ts"], (before, after)
        open_ends: list[int] = []
        for event in events:
            while open_ends and open_ends[-1] <= event["ts"]:
                open_ends.pop()
            end = event["ts"] + event["dur"]
            if open_ends:
                assert end <= open_ends[-1], (event, open_ends)
            open_ends.append(end)
    return sum(map(len, by_track.values()))


def test_timelines_nest_in_thread_mode_nested_sessions_and_merged_reports() -> None:
    def work() -> None:
        for _ in range(5):
            spin(0.002)
            gevent.sleep(0.001)

    thread_mode = greenprof.Profiler(mode="thread", dump_period=0.001)
    worker = gevent.spawn(work)
    thread_mode.start()
    worker.join()
    thread_mode.stop()

    def nested() -> None:
        with greenprof.profile(sinks=[sink]), greenprof.profile(sinks=[sink]):
            work()

    sink = MemorySink()
    gevent.spawn(nested).join()
    both = greenprof.Report(sink.snapshots, sessions=sink.sessions)
    assert len(both.sessions) == 2
    for report in (
        thread_mode.report(),
        both,
        both.merged("both"),
        *both.group_by("missing", missing="(none)").values(),
    ):
        trace = json.loads(exporters.chrome_trace(report))
        assert assert_nested(trace) > 10
        document = json.loads(exporters.speedscope(report))
        for profile in document["profiles"]:
            if profile["type"] == "evented":
                replay_evented(profile)
    # The nested sessions are two timelines of one greenlet, each whole.
    document = json.loads(exporters.speedscope(both))
    busy = sorted(replay_evented(p)[0] for p in document["profiles"])
    assert len(busy) == 2
    per_session = sorted(
        sum(s.duration_ns for s in both.segments if s.on_cpu and s.session_id == session.session_id)
        for session in both.sessions
    )
    assert busy == per_session


def test_speedscope_always_has_a_profile() -> None:
    def never_waits() -> None:
        spin(0.002)

    glet = gevent.spawn(never_waits)
    with greenprof.profile(glet) as profiler:
        glet.join()
    document = json.loads(exporters.speedscope(profiler.report(), weight="off_cpu"))
    (profile,) = document["profiles"]  # speedscope never opens a file without one
    assert profile["name"] == "no off-cpu recorded"
    assert profile["events"] == []


# -- greenprof's own JSON Lines, and files replaced in one step ----------------------


def test_jsonl_reads_back_as_the_same_report(tmp_path: Path) -> None:
    profiler, _, _ = record_red_and_blue()
    live = profiler.report()
    path = tmp_path / "again.jsonl"
    exporters.write(live, "jsonl", path)
    assert exporters.format_for_path(path) == "jsonl"
    again = greenprof.Report.from_file(path)
    assert again.snapshots == live.snapshots
    assert again.sessions == live.sessions
    assert sorted(again.stacks, key=repr) == sorted(live.stacks, key=repr)
    with pytest.raises(ConfigurationError, match="cannot merge them by 'path'"):
        exporters.export(live, "jsonl", group_by="path")


def test_convert_to_jsonl_keeps_only_the_chosen_sessions(tmp_path: Path) -> None:
    from greenprof.sinks import JSONSink

    path = tmp_path / "two.jsonl"
    sink = JSONSink(path)
    for route in ("/a", "/b", "/a"):
        with greenprof.profile(sinks=[sink], tags={"path": route}):
            gevent.sleep(0.001)
    out = tmp_path / "only-a.jsonl"
    done = greenprof_command("convert", str(path), "--tag", "path=/a", "-o", str(out))
    assert done.returncode == 0, done.stderr
    chosen = greenprof.Report.from_file(out)
    everything = greenprof.Report.from_file(path)
    assert [s.tags["path"] for s in chosen.sessions] == ["/a", "/a"]
    ids = {s.session_id for s in chosen.sessions}
    assert chosen.snapshots == [s for s in everything.snapshots if s.session_id in ids]


def test_write_replaces_the_file_in_one_step(tmp_path: Path) -> None:
    report = greenprof.Report.from_file(recorded_red_work(tmp_path))
    out = tmp_path / "profile.txt"
    out.write_text("the old profile\n")
    old_inode = out.stat().st_ino
    exporters.write(report, "text", out)
    # A new file took the name: a reader holding the old one never saw it
    # truncated or half written.
    assert out.stat().st_ino != old_inode
    assert out.read_text() == exporters.text(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.jsonl", "profile.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    report = greenprof.Report.from_file(recorded_red_work(tmp_path))
    out = tmp_path / "profile.txt"
    out.write_text("the old profile\n")

    def full_disk(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        exporters.write(report, "text", out)
    assert out.read_text() == "the old profile\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.jsonl", "profile.txt"]
