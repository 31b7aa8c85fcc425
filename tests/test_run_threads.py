"""greenprof run and the program's other OS threads: greenlets of threads
the program starts (each with its own gevent hub, or raw greenlets) are
recorded with their frames and their thread's id; threads that never
switch greenlets, and greenprof's own threads, record nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import greenprof

from .conftest import GREENPROF_DIR, greenprof_command

THREADS = """
import json, sys, threading, time
import gevent, greenlet

def crunch(n):
    total = 0
    for i in range(n):
        total += i * i
    return total

def worker(tag):
    for _ in range(3):
        crunch(100_000)
        gevent.sleep(0.002)  # the worker's wait site

lifetimes = {}
idents = {}
profiles = {}
# Every thread lives until all have started: no two share an ident.
all_started = threading.Barrier(4)

def hub_thread(tag):
    began = time.perf_counter()
    idents[tag] = threading.get_ident()
    profiles[tag] = sys.getprofile() is None
    workers = [gevent.spawn(worker, tag) for _ in range(3)]
    for index, glet in enumerate(workers):
        glet.name = f"{tag}-worker-{index}"
    gevent.joinall(workers)
    all_started.wait()
    lifetimes[tag] = time.perf_counter() - began

def raw_work():
    main = greenlet.getcurrent().parent
    for _ in range(3):
        crunch(20_000)
        main.switch()  # back to the thread's main greenlet

def raw_thread():
    began = time.perf_counter()
    idents["raw"] = threading.get_ident()
    glet = greenlet.greenlet(raw_work)
    glet.name = "raw-worker"
    while not glet.dead:
        glet.switch()
    all_started.wait()
    lifetimes["raw"] = time.perf_counter() - began

def plain_thread():
    idents["plain"] = threading.get_ident()
    crunch(200_000)
    all_started.wait()

gevent.sleep(0.01)  # the run is under way before any thread starts
threads = [
    threading.Thread(target=hub_thread, args=("alpha",)),
    threading.Thread(target=hub_thread, args=("beta",)),
    threading.Thread(target=raw_thread),
    threading.Thread(target=plain_thread),
]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
time.sleep(1.0)  # the threads are over: nothing of theirs runs now
idents["main"] = threading.get_ident()
print(json.dumps({"idents": idents, "lifetimes": lifetimes, "profiles": profiles}))
"""


def run_threads(tmp_path: Path, mode: str) -> tuple[greenprof.Report, dict[str, dict[str, object]]]:
    script = tmp_path / "threads.py"
    script.write_text(THREADS)
    out = str(tmp_path / "threads.jsonl")
    result = greenprof_command(
        "run",
        "--no-progress",
        "--mode",
        mode,
        "--interval",
        "0.002",
        "-o",
        out,
        script.name,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return greenprof.Report.from_file(out), json.loads(result.stdout)


@pytest.mark.parametrize("mode", ["greenlet", "hybrid"])
def test_run_records_the_greenlets_of_every_thread_the_program_starts(
    tmp_path: Path, mode: str
) -> None:
    report, told = run_threads(tmp_path, mode)
    idents = told["idents"]
    snapshots = report.snapshots
    by_name: dict[str, list[greenprof.Snapshot]] = {}
    for snapshot in snapshots:
        by_name.setdefault(snapshot.greenlet_name, []).append(snapshot)
    for tag in ("alpha", "beta"):
        for index in range(3):
            mine = by_name[f"{tag}-worker-{index}"]
            # In its own thread, from its first run to its end.
            assert {s.thread_id for s in mine} == {idents[tag]}
            assert mine[-1].event == "exit"
            waits = [s for s in mine if s.event == "switch_out"]
            assert len(waits) == 3  # each gevent.sleep
            for wait in waits:
                functions = [f.function for f in wait.stack]
                assert "worker" in functions
                assert functions.index("worker") < len(functions) - 1  # in gevent.sleep
    if mode == "hybrid":  # sampled inside their CPU work, in their own threads
        sampled = [s for s in snapshots if s.event == "sample" and "-worker-" in s.greenlet_name]
        assert any("crunch" in [f.function for f in s.stack] for s in sampled)
    raw = by_name["raw-worker"]
    assert {s.thread_id for s in raw} == {idents["raw"]}
    raw_waits = [s for s in raw if s.event == "switch_out"]
    assert len(raw_waits) == 3
    assert all([f.function for f in s.stack][-1] == "raw_work" for s in raw_waits)
    assert raw[-1].event == "exit"
    # Only the threads that switched greenlets: not the plain one, not
    # greenprof's own (its spool and sampler threads).
    assert len(set(idents.values())) == 5
    threads = {s.thread_id for s in snapshots}
    assert threads == {idents["main"], idents["alpha"], idents["beta"], idents["raw"]}
    # Every stack is the program's: no greenprof frame anywhere.
    assert not [s for s in snapshots for f in s.stack if f.filename.startswith(GREENPROF_DIR)]
    # Each thread's main greenlet is in it, and its time ends with its thread:
    # not stretched over the second the main thread slept after them.
    for tag in ("alpha", "beta", "raw"):
        mains = {
            s.greenlet_id
            for s in snapshots
            if s.thread_id == idents[tag] and s.greenlet_name == "main"
        }
        assert len(mains) == 1
        (main_id,) = mains
        lifetime_ns = told["lifetimes"][tag] * 1e9
        assert report.greenlets[main_id].wall_ns < lifetime_ns + 0.5e9
    # The one-shot hook left no profile function in the threads.
    assert told["profiles"] == {"alpha": True, "beta": True}


OWN_HOOK = """
import sys, threading
import gevent

calls = []

def counting(frame, event, arg):
    calls.append(event)

def hub_thread():
    gevent.joinall([gevent.spawn(gevent.sleep, 0.001) for _ in range(2)])

getattr(threading, sys.argv[1])(counting)
thread = threading.Thread(target=hub_thread)
thread.start()
thread.join()
still = threading.getprofile() is counting
getattr(threading, sys.argv[1])(None)
print(len(calls) > 0, still, flush=True)
"""


@pytest.mark.parametrize("setter", ["setprofile", "setprofile_all_threads"])
def test_a_program_that_sets_its_own_thread_profile_function_keeps_it(
    tmp_path: Path, setter: str
) -> None:
    if not hasattr(threading, setter):
        pytest.skip(f"threading.{setter} is new in Python 3.12")
    script = tmp_path / "own_hook.py"
    script.write_text(OWN_HOOK)
    out = tmp_path / "own.jsonl"
    result = greenprof_command(
        "run", "--no-progress", "-o", str(out), str(script), setter, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    # The program's function saw its thread's calls, and stayed until it
    # took it away.
    assert result.stdout == "True True\n"
    # That thread started under the program's hook, not greenprof's: not followed.
    snapshots = greenprof.load(out)
    assert len({s.thread_id for s in snapshots}) == 1


def test_run_follows_no_thread_in_thread_mode(tmp_path: Path) -> None:
    script = tmp_path / "threads.py"
    script.write_text(THREADS)
    out = tmp_path / "threads.jsonl"
    result = greenprof_command(
        "run", "--no-progress", "--mode", "thread", "-o", str(out), str(script), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    idents = json.loads(result.stdout)["idents"]
    assert {s.thread_id for s in greenprof.load(out)} <= {idents["main"]}


MANY = """
import gevent

def short(n):
    gevent.sleep(0)
    return n

kept = []  # held: no greenlet's id (its address) is used twice
for wave in range(15):
    kept += gevent.joinall([gevent.spawn(short, n) for n in range(100)])
"""


def test_a_run_past_a_thousand_greenlets_merges_the_ended_ones_by_kind(tmp_path: Path) -> None:
    script = tmp_path / "many.py"
    script.write_text(MANY)
    result = greenprof_command(
        "run", "--no-progress", "-o", "many.collapsed", script.name, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "many.collapsed").read_text().splitlines()
    roots = {line.rsplit(" ", 1)[0].split(";")[0] for line in lines}
    merged = [root for root in roots if root.startswith("Greenlet (")]
    assert len(merged) == 1
    (root,) = merged
    # The first thousand greenlets (the main one first) are apart; the 501
    # after them, which ended, are merged.
    assert root == "Greenlet (501 greenlets merged)"
    assert len(roots) == 1_000 + 1
    assert sum(r.startswith("main [0x") for r in roots) == 1
    assert any(line.startswith(root + ";") and "short" in line for line in lines)
