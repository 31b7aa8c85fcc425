"""Cost of one greenlet switch under greenprof, against the floor and the naive way.

Two greenlets ping-pong; the worker waits 30 frames deep. Every scenario runs
in the same process, interleaved, best of several rounds, and the script prints
ratios measured in this run only (absolute numbers on a shared machine mean
little). Targets (issue 3):

- greenprof installed, switching greenlets not profiled: added cost at most
  1.5x the added cost of a no-op Python tracer;
- snapshotting a greenlet at depth 30: at least 10x cheaper than
  ``traceback.extract_stack()`` on the same stack;
- no session running: no tracer installed, the cost of a bare switch.

Run: ``python benchmarks/bench_switch.py [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import greenlet

import greenprof

DEPTH = 30


def _wait_deep(main: greenlet.greenlet, depth: int) -> None:
    if depth > 1:
        _wait_deep(main, depth - 1)
        return
    while True:
        main.switch()


def _switch_deep(main: greenlet.greenlet, depth: int) -> None:
    if depth > 1:
        _switch_deep(main, depth - 1)
        return
    main.switch()


def _wait_fresh(main: greenlet.greenlet, depth: int) -> None:
    while True:
        _switch_deep(main, depth - 1)


def _make_worker(depth: int, fresh: bool = False) -> greenlet.greenlet:
    """A greenlet suspended ``depth`` frames deep. ``fresh``: each switch-out
    happens in newly created frames (it recurses anew every round), so no
    part of the stack but the outermost frame is the same as last time."""
    main = greenlet.getcurrent()
    body = _wait_fresh if fresh else _wait_deep
    worker = greenlet.greenlet(lambda: body(main, depth))
    worker.switch()
    return worker


def _time_round_trips(worker: greenlet.greenlet, rounds: int) -> float:
    """Nanoseconds per switch (a round trip is two switches)."""
    switch = worker.switch
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(rounds):
            switch()
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / (2 * rounds)


def _noop_tracer(event: str, args: Any) -> None:
    return None


def _scenario_none(rounds: int) -> float:
    return _time_round_trips(_make_worker(DEPTH), rounds)


def _scenario_noop_tracer(rounds: int) -> float:
    worker = _make_worker(DEPTH)
    previous = greenlet.settrace(_noop_tracer)
    try:
        return _time_round_trips(worker, rounds)
    finally:
        greenlet.settrace(previous)


def _scenario_greenprof_unprofiled(rounds: int) -> float:
    worker = _make_worker(DEPTH)
    bystander = greenlet.greenlet(lambda: None)  # watched, never switches
    profiler = greenprof.Profiler()
    profiler.start(bystander)
    try:
        return _time_round_trips(worker, rounds)
    finally:
        profiler.stop()


def _scenario_greenprof_fifty_sessions(rounds: int) -> float:
    worker = _make_worker(DEPTH)
    bystanders = [greenlet.greenlet(lambda: None) for _ in range(50)]
    profilers = [greenprof.Profiler() for _ in bystanders]
    for profiler, bystander in zip(profilers, bystanders, strict=True):
        profiler.start(bystander)
    try:
        return _time_round_trips(worker, rounds)
    finally:
        for profiler in profilers:
            profiler.stop()


def _scenario_greenprof_snapshot(rounds: int, fresh: bool = False) -> float:
    worker = _make_worker(DEPTH, fresh)
    profiler = greenprof.Profiler(max_snapshots=2 * rounds + 10, max_depth=DEPTH + 10)
    profiler.start(worker)
    try:
        return _time_round_trips(worker, rounds)
    finally:
        profiler.stop()
        assert profiler.stats.dropped == 0
        assert len(profiler.snapshots[-1].stack) == DEPTH + 1  # + the lambda


def _scenario_greenprof_snapshot_fresh(rounds: int) -> float:
    return _scenario_greenprof_snapshot(rounds, fresh=True)


def _scenario_extract_stack(rounds: int, fresh: bool = False) -> float:
    worker = _make_worker(DEPTH, fresh)

    def tracer(event: str, args: Any) -> None:
        if event == "switch" or event == "throw":
            origin, _target = args
            if origin is worker:
                traceback.extract_stack(origin.gr_frame)

    previous = greenlet.settrace(tracer)
    try:
        return _time_round_trips(worker, rounds)
    finally:
        greenlet.settrace(previous)


def _scenario_extract_stack_fresh(rounds: int) -> float:
    return _scenario_extract_stack(rounds, fresh=True)


def _scenario_none_fresh(rounds: int) -> float:
    return _time_round_trips(_make_worker(DEPTH, fresh=True), rounds)


def _scenario_after_stop(rounds: int) -> float:
    bystander = greenlet.greenlet(lambda: None)
    profiler = greenprof.Profiler()
    profiler.start(bystander)
    profiler.stop()
    assert greenlet.gettrace() is None, "greenprof left a tracer installed"
    return _time_round_trips(_make_worker(DEPTH), rounds)


SCENARIOS: dict[str, Callable[[int], float]] = {
    "no tracer": _scenario_none,
    "no-op Python tracer": _scenario_noop_tracer,
    "greenprof, switching greenlets not profiled": _scenario_greenprof_unprofiled,
    "same, with 50 sessions open in the thread": _scenario_greenprof_fifty_sessions,
    "greenprof, profiled greenlet at depth 30": _scenario_greenprof_snapshot,
    "traceback.extract_stack() at depth 30": _scenario_extract_stack,
    "no tracer, fresh frames": _scenario_none_fresh,
    "greenprof, depth 30, fresh frames": _scenario_greenprof_snapshot_fresh,
    "traceback.extract_stack(), depth 30, fresh frames": _scenario_extract_stack_fresh,
    "greenprof stopped (no session running)": _scenario_after_stop,
}


def run(rounds: int, repeats: int) -> dict[str, float]:
    best = dict.fromkeys(SCENARIOS, float("inf"))
    for _ in range(repeats):
        for name, scenario in SCENARIOS.items():
            # extract_stack is ~100x slower; fewer rounds keep the run short.
            n = rounds // 20 if "extract_stack" in name else rounds
            best[name] = min(best[name], scenario(n))
    return best


def report(best: dict[str, float]) -> bool:
    none = best["no tracer"]
    noop_added = best["no-op Python tracer"] - none
    unprofiled_added = best["greenprof, switching greenlets not profiled"] - none
    # One snapshot per round trip, i.e. per two switches.
    snapshot_cost = 2 * (best["greenprof, profiled greenlet at depth 30"] - none)
    extract_cost = 2 * (best["traceback.extract_stack() at depth 30"] - none)
    none_fresh = best["no tracer, fresh frames"]
    fresh_cost = 2 * (best["greenprof, depth 30, fresh frames"] - none_fresh)
    extract_fresh = 2 * (best["traceback.extract_stack(), depth 30, fresh frames"] - none_fresh)
    stopped_ratio = best["greenprof stopped (no session running)"] / none

    print(f"Python {sys.version.split()[0]}, greenlet {greenlet.__version__}")
    print(f"{'scenario':<52} {'ns/switch':>10}")
    for name, value in best.items():
        print(f"{name:<52} {value:>10.0f}")
    print()
    checks = [
        (
            "unprofiled-switch overhead / no-op tracer overhead",
            unprofiled_added / noop_added,
            "<= 1.5",
            unprofiled_added / noop_added <= 1.5,
        ),
        (
            "50 sessions / 1 session, unprofiled switch (O(1))",
            best["same, with 50 sessions open in the thread"]
            / best["greenprof, switching greenlets not profiled"],
            "~1.0",
            best["same, with 50 sessions open in the thread"]
            / best["greenprof, switching greenlets not profiled"]
            <= 1.15,
        ),
        (
            "extract_stack cost / greenprof snapshot cost (depth 30)",
            extract_cost / snapshot_cost,
            ">= 10",
            extract_cost / snapshot_cost >= 10,
        ),
        (
            "stopped / no tracer (no cost once stopped)",
            stopped_ratio,
            "~1.0",
            stopped_ratio <= 1.15,
        ),
    ]
    print(f"snapshot at depth 30: {snapshot_cost:.0f} ns; extract_stack: {extract_cost:.0f} ns")
    print(
        f"worst case, every frame new since the last switch: {fresh_cost:.0f} ns; "
        f"extract_stack: {extract_fresh:.0f} ns ({extract_fresh / fresh_cost:.1f}x)"
    )
    ok = True
    for label, value, target, met in checks:
        ok &= met
        print(f"{label:<58} {value:>6.2f}  target {target:<6} {'met' if met else 'MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (for tox -e bench)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    options = parser.parse_args()
    rounds, repeats = (20_000, 5) if options.quick else (100_000, 9)
    ok = report(run(rounds, repeats))
    return 0 if ok or not options.check else 1


if __name__ == "__main__":
    sys.exit(main())
