"""greenlet, hybrid and thread modes on a reference gevent workload.

100 request greenlets run at once, each mixing I/O waits (gevent sleeps) and
short CPU bursts (seeded, so every run does the same work). One request is
profiled at a time: when a profiled request ends, the next one to start is
profiled. Every mode samples at a 10 ms dump period. A second workload with
slow I/O (40-80 ms waits) shows how the snapshot counts change when requests
live long. The script prints, from one run with the modes interleaved:

- snapshots per profiled request;
- CPU overhead: process CPU time against the unprofiled run, minus one;
- the fraction of samples that belong to another greenlet than the request.

Targets (issue 4): greenlet mode's CPU overhead at most one third of thread
mode's; no foreign samples in greenlet and hybrid modes.

Run: ``python benchmarks/bench_modes.py [--quick]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable

import gevent
import gevent.pool

import greenprof

CONCURRENCY = 100
DUMP_PERIOD = 0.010
MODES = ("greenlet", "hybrid", "thread")


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def query(wait: float) -> None:
    gevent.sleep(wait)  # an I/O wait


def handle(plan: list[tuple[float, float]]) -> None:
    for cpu, wait in plan:
        burn(cpu)
        query(wait)


class Run:
    """One pass over the workload, profiling one request at a time in ``mode``."""

    def __init__(self, mode: str | None, plans: list[list[tuple[float, float]]]) -> None:
        self.mode = mode
        self.plans = plans
        self.slot_free = True
        self.snapshots: list[int] = []
        self.samples = 0
        self.foreign = 0

    def request(self, plan: list[tuple[float, float]]) -> None:
        if self.mode is None or not self.slot_free:
            handle(plan)
            return
        self.slot_free = False
        me = id(gevent.getcurrent())
        try:
            with greenprof.profile(mode=self.mode, dump_period=DUMP_PERIOD) as profiler:
                handle(plan)
        finally:
            self.slot_free = True
        snapshots = profiler.snapshots
        self.snapshots.append(len(snapshots))
        samples = [s for s in snapshots if s.event == "sample"]
        self.samples += len(samples)
        self.foreign += sum(s.greenlet_id != me for s in samples)

    def __call__(self) -> float:
        pool = gevent.pool.Pool(CONCURRENCY)
        start = time.process_time()
        for plan in self.plans:
            pool.spawn(self.request, plan)
        pool.join()
        return time.process_time() - start


#: Seconds of (CPU burst, I/O wait) ranges per step, four steps a request.
WORKLOADS = {
    "reference": ((0.0001, 0.0004), (0.001, 0.004)),
    "slow-io": ((0.0001, 0.0004), (0.040, 0.080)),
}


def make_plans(
    requests: int, workload: str = "reference", seed: int = 7
) -> list[list[tuple[float, float]]]:
    (cpu_lo, cpu_hi), (io_lo, io_hi) = WORKLOADS[workload]
    rng = random.Random(seed)
    return [
        [(rng.uniform(cpu_lo, cpu_hi), rng.uniform(io_lo, io_hi)) for _ in range(4)]
        for _ in range(requests)
    ]


def measure(
    plans: list[list[tuple[float, float]]], repeats: int
) -> tuple[float, dict[str, float], dict[str, Run]]:
    """Median CPU time unprofiled, overhead per mode, and each mode's last run."""
    cpu: dict[str | None, list[float]] = {mode: [] for mode in (None, *MODES)}
    last: dict[str, Run] = {}
    for _ in range(repeats):
        for mode in (None, *MODES):
            run = Run(mode, plans)
            cpu[mode].append(run())
            if mode is not None:
                last[mode] = run
    base = statistics.median(cpu[None])
    overhead = {mode: statistics.median(cpu[mode]) / base - 1 for mode in MODES}
    return base, overhead, last


def table(
    title: str, base: float, overhead: dict[str, float], last: dict[str, Run]
) -> dict[str, float]:
    print(f"{title}; unprofiled CPU time {base:.3f} s")
    print(f"{'mode':<10} {'snapshots/request':>18} {'CPU overhead':>13} {'foreign samples':>16}")
    foreign: dict[str, float] = {}
    for mode in MODES:
        run = last[mode]
        foreign[mode] = run.foreign / run.samples if run.samples else 0.0
        per_request = statistics.mean(run.snapshots) if run.snapshots else 0.0
        print(f"{mode:<10} {per_request:>18.1f} {overhead[mode]:>12.2%} {foreign[mode]:>15.1%}")
    print()
    return foreign


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (tox -e bench)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    options = parser.parse_args()
    requests, slow_requests, repeats = (600, 200, 3) if options.quick else (3000, 600, 7)

    print(
        f"Python {sys.version.split()[0]}; {CONCURRENCY} requests at once, dump period "
        f"{DUMP_PERIOD * 1000:.0f} ms, medians of {repeats} interleaved runs\n"
    )
    base, overhead, last = measure(make_plans(requests), repeats)
    foreign = table(
        f"reference workload: {requests} requests of 4 x (0.1-0.4 ms CPU + 1-4 ms I/O wait)",
        base,
        overhead,
        last,
    )
    slow = measure(make_plans(slow_requests, "slow-io"), max(1, repeats // 2))
    table(
        f"slow I/O: {slow_requests} requests of 4 x (0.1-0.4 ms CPU + 40-80 ms I/O wait)",
        *slow,
    )
    checks: list[tuple[str, float, str, Callable[[float], bool]]] = [
        (
            "greenlet-mode overhead / thread-mode overhead",
            overhead["greenlet"] / overhead["thread"] if overhead["thread"] > 0 else float("inf"),
            "<= 0.33",
            lambda v: v <= 1 / 3,
        ),
        ("foreign samples, greenlet mode", foreign["greenlet"], "0", lambda v: v == 0),
        ("foreign samples, hybrid mode", foreign["hybrid"], "0", lambda v: v == 0),
        (
            "foreign samples, thread mode (contamination shown)",
            foreign["thread"],
            "> 0",
            lambda v: v > 0,
        ),
    ]
    ok = True
    for label, value, target, test in checks:
        met = test(value)
        ok &= met
        print(f"{label:<52} {value:>7.3f}  target {target:<7} {'met' if met else 'MISSED'}")
    return 0 if ok or not options.check else 1


if __name__ == "__main__":
    sys.exit(main())
