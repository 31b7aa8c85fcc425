"""A file of many requests, read the way a user reads it: `greenprof show`
and `greenprof convert --group-by path` in every format."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest

import greenprof
from greenprof import exporters
from greenprof.integrations.wsgi import ProfilerMiddleware
from greenprof.sinks import JSONSink

from .conftest import function_name, greenprof_command, serve
from .workloads import checkout, search, shop


@pytest.fixture(scope="module")
def shop_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 /checkout and 20 /search requests through the middleware, one file."""
    path = tmp_path_factory.mktemp("shop") / "requests.jsonl"
    app = ProfilerMiddleware(shop, sinks=[JSONSink(path)])
    serve(app, ["/checkout", "/search"] * 20)
    return path


def test_show_summarises_sessions_by_path_then_one_tree_per_path(shop_file: Path) -> None:
    shown = greenprof_command("show", str(shop_file))
    assert shown.returncode == 0, shown.stderr
    report = greenprof.Report.from_file(shop_file)
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("40 sessions over ")
    summary = {line.split()[0]: line.split() for line in lines[2:4]}
    assert set(summary) == {"/checkout", "/search"}
    for path, row in summary.items():
        durations = sorted(s.duration_ns for s in report.sessions if s.tags["path"] == path)
        assert row[1] == "20"
        assert row[2] == f"{sum(durations) / 1e6:,.2f}"
        assert row[3] == f"{durations[9] / 1e6:,.2f}"  # p50: the 10th of 20
        assert row[4] == f"{durations[19] / 1e6:,.2f}"  # p99: the 20th
    # One merged tree per path, not one per greenlet.
    roots = [line for line in lines if re.match(r"^path=/\w+  wall", line)]
    assert [root.split()[0] for root in roots] == ["path=/checkout", "path=/search"]
    assert "[0x" not in shown.stdout
    tree = shown.stdout.split("path=/search")[0]
    assert function_name(checkout) in tree
    assert function_name(search) not in tree.split("path=/checkout  wall")[1]
    assert len(lines) < 80  # readable at a glance


def test_show_filters_by_tag_and_duration_and_keeps_the_top_stacks(shop_file: Path) -> None:
    report = greenprof.Report.from_file(shop_file)
    only = greenprof_command("show", str(shop_file), "--tag", "path=/search")
    assert only.returncode == 0, only.stderr
    assert only.stdout.startswith("20 sessions")
    assert "path=/checkout" not in only.stdout
    slow = sorted(s.duration_ns for s in report.sessions)[-5]
    longest = greenprof_command(
        "show", str(shop_file), "--min-duration", f"{slow / 1e9:.9f}", "--group-by", "greenlet"
    )
    assert longest.returncode == 0, longest.stderr
    assert longest.stdout.startswith("5 sessions")
    top = greenprof_command("show", str(shop_file), "--top", "1")
    assert top.returncode == 0, top.stderr
    tree = top.stdout.split("path=/checkout  wall")[1].split("path=/search")[0]
    rows = [line[23:] for line in tree.splitlines()[2:] if line.strip()]
    depths = [(len(row) - len(row.lstrip())) // 2 for row in rows]
    assert depths == list(range(len(rows)))  # one stack: each line one level deeper
    assert len(rows) > 3
    nothing = greenprof_command("show", str(shop_file), "--tag", "path=/nowhere")
    assert nothing.returncode == 1
    assert nothing.stderr == f"greenprof: no session in {shop_file} is path=/nowhere\n"
    missing = greenprof_command("show", str(shop_file), "--group-by", "tenant")
    assert missing.returncode == 1
    assert "no session has the tag 'tenant'; the sessions have duration_ms," in missing.stderr
    bad = greenprof_command("show", str(shop_file), "--tag", "path")
    assert bad.returncode == 2
    assert "expected KEY=VALUE" in bad.stderr


def convert(shop_file: Path, tmp: Path, format: str, *more: str) -> bytes:
    out = tmp / f"out.{format}"
    done = greenprof_command("convert", str(shop_file), "--format", format, "-o", str(out), *more)
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def test_convert_group_by_path_in_every_format(shop_file: Path, tmp_path: Path) -> None:
    report = greenprof.Report.from_file(shop_file)
    groups = report.group_by("path")

    folded = convert(shop_file, tmp_path, "collapsed", "--group-by", "path").decode()
    totals: dict[str, int] = {}
    for line in folded.splitlines():
        stack, value = line.rsplit(" ", 1)
        totals[stack.split(";")[0]] = totals.get(stack.split(";")[0], 0) + int(value)
    assert totals == {f"path={v}": g.greenlets[0].on_cpu_ns for v, g in groups.items()}

    speedscope = json.loads(convert(shop_file, tmp_path, "speedscope", "--group-by", "path"))
    assert [p["name"] for p in speedscope["profiles"]] == [
        "path=/checkout (on-cpu)",
        "path=/search (on-cpu)",
    ]
    assert [sum(p["weights"]) for p in speedscope["profiles"]] == [
        g.greenlets[0].on_cpu_ns for g in groups.values()
    ]

    chrome = json.loads(convert(shop_file, tmp_path, "chrome", "--group-by", "path"))
    processes = {
        e["pid"]: e["args"]["name"] for e in chrome["traceEvents"] if e["name"] == "process_name"
    }
    assert sorted(processes.values()) == ["path=/checkout", "path=/search"]
    for pid, name in processes.items():
        tracks = {e["tid"] for e in chrome["traceEvents"] if e["pid"] == pid and e["ph"] == "X"}
        # One track per request: a greenlet of each session (a freed
        # greenlet's address may come back in a later request: still two).
        assert len(tracks) == 20
        assert name.startswith("path=/")
        labels = [
            e["args"]["name"]
            for e in chrome["traceEvents"]
            if e["pid"] == pid and e["name"] == "thread_name"
        ]
        assert len(set(labels)) == len(labels) == 20

    raw = gzip.decompress(convert(shop_file, tmp_path, "pprof", "--group-by", "path"))
    assert b"path" in raw
    assert b"/checkout" in raw
    assert b"greenlet_id" not in raw  # merged: no greenlet labels

    text = convert(shop_file, tmp_path, "text", "--group-by", "method").decode()
    assert "method=GET" in text
    default = convert(shop_file, tmp_path, "text").decode()
    assert default.count("[0x") == 10  # 40 greenlets: one merged tree, the 10 heaviest listed


def test_convert_picks_the_format_from_the_output_file_name(
    shop_file: Path, tmp_path: Path
) -> None:
    report = greenprof.Report.from_file(shop_file)
    for name, format in (
        ("p.pb.gz", "pprof"),
        ("p.pprof", "pprof"),
        ("p.collapsed", "collapsed"),
        ("p.trace.json", "chrome"),
        ("p.json", "speedscope"),
        ("p.txt", "text"),
    ):
        out = tmp_path / name
        done = greenprof_command("convert", str(shop_file), "-o", str(out))
        assert done.returncode == 0, done.stderr
        expected: Any = exporters.renderer_for(format).render_bytes(report)
        assert out.read_bytes() == expected, name
    unknown = greenprof_command("convert", str(shop_file), "-o", str(tmp_path / "p.xyz"))
    assert unknown.returncode == 2
    assert "cannot tell the format" in unknown.stderr


def test_show_of_a_file_that_is_not_a_profile_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "profile.pb.gz"
    path.write_bytes(gzip.compress(b"\x00\x01 not a greenprof file"))
    shown = greenprof_command("show", str(path))
    assert shown.returncode == 1
    assert shown.stderr.count("\n") == 1
    assert "is not a greenprof snapshot file" in shown.stderr
    assert "Traceback" not in shown.stderr
