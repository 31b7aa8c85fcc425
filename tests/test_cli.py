"""The greenprof command: demo, run --only, progress; and Profiler(only=...)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import gevent
import greenlet
import pytest

import greenprof
from greenprof.exceptions import ConfigurationError

from .conftest import greenprof_command


def test_demo_shows_thread_sampling_contaminated_and_greenlet_mode_clean(tmp_path: Path) -> None:
    page = tmp_path / "demo.html"
    result = greenprof_command("demo", "--clients", "30", "-o", str(page))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "served" in out
    header = next(line for line in out.splitlines() if "thread mode" in line)
    assert header.split() == ["thread", "mode", "greenlet", "mode", "hybrid", "mode"]
    rows = {
        label: line.split()[-3:]
        for line in out.splitlines()
        for label in ("snapshots of the request", "taken while another", "showing /search code")
        if line.strip().startswith(label)
    }
    thread_total, greenlet_total, hybrid_total = map(int, rows["snapshots of the request"])
    assert thread_total > 0
    assert greenlet_total >= 4
    assert hybrid_total >= greenlet_total
    other = [int(cell.split()[0]) for cell in re.findall(r"(\d+) \(\d+%\)", out)]
    assert other[1:] == [0, 0]  # greenlet and hybrid modes: none from other greenlets
    assert other[0] > 0  # thread mode: 30 clients share the thread with the request
    assert rows["showing /search code"][1:] == ["0", "0"]
    # The tree shows the profiled request's own functions, and its CPU burst.
    for function in ("checkout", "query_database", "call_payment_api", "render_invoice"):
        assert function in out
    tree = out[out.index("hybrid-mode profile") :]
    assert "rank_results" not in tree
    assert "parse_query" not in tree
    html = page.read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "render_invoice" in html
    assert f"written to {page}" in out


def test_demo_refuses_bad_client_counts() -> None:
    result = greenprof_command("demo", "--clients", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "greenprof: --clients must be at least 1"


FILTERED = """
import gevent

def handle_request(n):
    for _ in range(3):
        gevent.sleep(0.001)
    gevent.spawn(audit, n).join()  # spawned by a recorded greenlet

def audit(n):
    gevent.sleep(0.001)

def housekeeping():
    gevent.spawn(handle_request, 99).join()  # a request spawned by an unrecorded one
    for _ in range(5):
        gevent.sleep(0.001)

workers = [gevent.spawn(handle_request, n) for n in range(3)]
workers.append(gevent.spawn(housekeeping))
named = gevent.spawn(gevent.sleep, 0.001)
named.name = "cron-job"
gevent.joinall([*workers, named])
"""


def test_run_only_records_the_matching_greenlets_and_follows_the_rest(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(FILTERED)
    output = tmp_path / "out.jsonl"
    result = greenprof_command(
        "run", "--only", "handle_*", "--only", "cron-*", "-o", str(output), str(script)
    )
    assert result.returncode == 0, result.stderr
    snapshots = greenprof.load(output)
    functions_per_greenlet: dict[int, set[str]] = {}
    for snapshot in snapshots:
        functions_per_greenlet.setdefault(snapshot.greenlet_id, set()).update(
            f.function for f in snapshot.stack
        )
    # Four handle_request greenlets (one spawned by housekeeping, which is
    # not recorded but still followed) and the greenlet named cron-job.
    assert len(functions_per_greenlet) == 5
    recorded = set().union(*functions_per_greenlet.values())
    assert "handle_request" in recorded
    assert "housekeeping" not in recorded
    assert "audit" not in recorded
    assert "<module>" not in recorded  # the main greenlet does not match either
    assert "cron-job" in {s.greenlet_name for s in snapshots}
    assert "snapshots of 5 greenlets" in result.stderr


def test_run_shows_progress_lines_when_asked(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text("import gevent\nfor _ in range(60):\n    gevent.sleep(0.02)\n")
    output = tmp_path / "out.jsonl"
    result = greenprof_command(
        "run", "--progress", "--progress-interval", "0.1", "-o", str(output), str(script)
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if " s, " in line]
    assert lines, result.stderr
    counts = [int(re.search(r"([\d,]+) snapshots", line)[1].replace(",", "")) for line in lines]  # type: ignore[index]
    assert counts == sorted(counts)
    assert counts[-1] > 0
    assert all(line.endswith("1 greenlets followed") for line in lines)
    # Not a terminal and not asked: no progress.
    quiet = greenprof_command("run", "-o", str(output), str(script))
    assert " s, " not in quiet.stderr
    bad = greenprof_command("run", "--progress-interval", "0", str(script))
    assert bad.returncode == 2
    assert "--progress-interval" in bad.stderr


def test_profiler_only_mutes_greenlets_without_counting_them_as_dropped() -> None:
    def child() -> None:
        gevent.sleep(0.001)

    def parent() -> None:
        gevent.sleep(0.001)
        gevent.spawn(child).join()

    def keep(glet: greenlet.greenlet) -> bool:
        return getattr(glet, "_run", None) is child

    worker = gevent.spawn(parent)
    profiler = greenprof.Profiler(follow_spawned=True, only=keep)
    profiler.start(worker)
    worker.join()
    profiler.stop()
    functions = {f.function.rpartition(".")[2] for s in profiler.snapshots for f in s.stack}
    assert len({s.greenlet_id for s in profiler.snapshots}) == 1
    assert id(worker) not in {s.greenlet_id for s in profiler.snapshots}
    assert "child" in functions
    assert "parent" not in functions
    assert profiler.stats.dropped == 0


def test_a_filter_that_raises_records_the_greenlet() -> None:
    def broken(glet: greenlet.greenlet) -> bool:
        raise RuntimeError("bug in the filter")

    worker = gevent.spawn(gevent.sleep, 0.001)
    profiler = greenprof.Profiler(only=broken)
    profiler.start(worker)
    worker.join()
    profiler.stop()
    assert profiler.snapshots
    assert profiler.stats.tracer_errors == 0


def test_only_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="only must be a function"):
        greenprof.Profiler(only="handle_*")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="thread mode samples"):
        greenprof.Profiler(mode="thread", only=bool)


def test_the_api_demo_example_runs_and_finds_no_foreign_frames(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "examples" / "demo.py"
    result = subprocess.run(
        [sys.executable, str(example), str(tmp_path / "demo.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Frames from other requests' code in this profile: 0" in result.stdout
    assert greenprof.load(tmp_path / "demo.jsonl")


def test_show_colours_only_when_asked_or_on_a_terminal(tmp_path: Path) -> None:
    from greenprof.sinks import JSONSink

    path = tmp_path / "profile.jsonl"
    worker = gevent.spawn(gevent.sleep, 0.001)
    with greenprof.profile(worker, sinks=[JSONSink(path)]):
        worker.join()
    coloured = greenprof_command("show", "--color", str(path))
    plain = greenprof_command("show", str(path))  # stdout is a pipe here
    assert coloured.returncode == plain.returncode == 0
    assert "\033[1m" in coloured.stdout
    assert "\033[" not in plain.stdout
    assert re.sub(r"\033\[\d+m", "", coloured.stdout) == plain.stdout


def test_run_refuses_only_in_thread_mode_in_one_line(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text("print('should not run')\n")
    result = greenprof_command("run", "--mode", "thread", "--only", "x*", str(script))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "greenprof: --only needs --mode greenlet or hybrid (thread mode samples "
        "whichever greenlet runs)"
    )


def test_a_filter_raising_a_base_exception_records_the_greenlet_too() -> None:
    def child() -> None:
        gevent.sleep(0.001)

    def exits(glet: greenlet.greenlet) -> bool:
        if getattr(glet, "_run", None) is child:
            raise SystemExit(3)
        return True

    def parent() -> None:
        gevent.spawn(child).join()

    worker = gevent.spawn(parent)
    profiler = greenprof.Profiler(follow_spawned=True, only=exits)
    profiler.start(worker)
    worker.join()
    profiler.stop()
    assert len({s.greenlet_id for s in profiler.snapshots}) == 2
    assert profiler.stats.tracer_errors == 0


def test_muted_greenlets_walk_no_stack() -> None:
    from greenprof._dispatcher import installed_dispatcher
    from greenprof._threads import thread_ident

    def deep(n: int) -> None:
        if n:
            deep(n - 1)
        else:
            gevent.sleep(0.001)

    worker = gevent.spawn(deep, 30)
    profiler = greenprof.Profiler(only=lambda glet: False)
    profiler.start(worker)
    gevent.sleep(0)  # the worker is now suspended 30 frames deep
    dispatcher = installed_dispatcher(thread_ident())
    assert dispatcher is not None
    watch = dispatcher.watches.get(worker)
    assert watch is not None
    assert watch.depth == 0
    assert watch.last_stack is None  # nothing captured at the switch-out
    worker.join()
    profiler.stop()
    assert profiler.snapshots == []
    assert profiler.stats.dropped == 0
