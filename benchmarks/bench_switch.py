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


def wait_deep(main: greenlet.greenlet, depth: int) -> None:
    if depth > 1:
        wait_deep(main, depth - 1)
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
    body = _wait_fresh if fresh else wait_deep
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


def _scenario_extract_stack(rounds: int, fresh: bool = False, switch_in_too: bool = True) -> float:
    """The naive profiler: ``traceback.extract_stack()`` at every switch in
    and out of the worker, the same snapshots greenprof takes (with
    ``switch_in_too=False``, only the switch-out walk)."""
    worker = _make_worker(DEPTH, fresh)

    def tracer(event: str, args: Any) -> None:
        if event == "switch" or event == "throw":
            origin, target = args
            if origin is worker:
                traceback.extract_stack(origin.gr_frame)
            elif target is worker and switch_in_too:
                traceback.extract_stack(sys._getframe(1))  # where it resumes

    previous = greenlet.settrace(tracer)
    try:
        return _time_round_trips(worker, rounds)
    finally:
        greenlet.settrace(previous)


def _scenario_extract_stack_out_only(rounds: int) -> float:
    return _scenario_extract_stack(rounds, switch_in_too=False)


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
    "same, at switch-out only": _scenario_extract_stack_out_only,
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
    none_fresh = best["no tracer, fresh frames"]

    def added(name: str, base: float = none) -> float:
        return best[name] - base

    noop = added("no-op Python tracer")
    unprofiled = added("greenprof, switching greenlets not profiled")
    fifty = added("same, with 50 sessions open in the thread")
    snapshot = added("greenprof, profiled greenlet at depth 30")
    extract = added("traceback.extract_stack() at depth 30")
    extract_out = added("same, at switch-out only")
    fresh = added("greenprof, depth 30, fresh frames", none_fresh)
    extract_fresh = added("traceback.extract_stack(), depth 30, fresh frames", none_fresh)
    stopped = best["greenprof stopped (no session running)"] / none

    print(f"Python {sys.version.split()[0]}, greenlet {greenlet.__version__}")
    print(f"{'scenario':<52} {'ns/switch':>10}")
    for name, value in best.items():
        print(f"{name:<52} {value:>10.0f}")
    print()
    # Each switch of the profiled worker, in or out, is one snapshot; the
    # naive profiler extracts a stack at each of them.
    rows = [
        (
            "unprofiled switch: greenprof / no-op tracer (added ns)",
            unprofiled / noop,
            "<= 1.5",
            unprofiled / noop <= 1.5,
        ),
        (
            "unprofiled switch: 50 sessions / 1 session (added ns)",
            fifty / unprofiled,
            "~1.0",
            fifty / unprofiled <= 1.15,
        ),
        (
            "snapshot at depth 30: extract_stack / greenprof",
            extract / snapshot,
            ">= 10",
            extract / snapshot >= 10,
        ),
        ("  (one extract_stack per round trip / greenprof)", extract_out / snapshot, "info", True),
        (
            "  (every frame new each switch: extract_stack / greenprof)",
            extract_fresh / fresh,
            "info",
            True,
        ),
        ("stopped / no tracer (no cost once stopped)", stopped, "~1.0", stopped <= 1.15),
    ]
    ok = True
    for label, value, target, met in rows:
        ok &= met
        verdict = "" if target == "info" else ("met" if met else "MISSED")
        print(f"{label:<60} {value:>6.2f}  {target:<6} {verdict}")
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
