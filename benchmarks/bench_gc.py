"""What a long ``follow_spawned`` session does to the garbage collector.

A server-like program: a long-lived greenlet spawns waves of short
greenlets (each a few frames deep, switching a few times, as requests do),
while a ticker greenlet asks to wake every 5 ms and records how late it
wakes. Measured with no profiler, and under one ``follow_spawned`` session
over the whole run (records kept until the end, as ``greenprof run`` or a
long ``with greenprof.profile()`` does): the run's time, the time spent in
the collector, the longest collection (gen-2 and any), the ticker's worst
lateness, and the objects the collector tracks at the end (greenprof's
records must not be among them: they are kept in untracked forms).

Each round runs both, each in a fresh process, one after the other;
medians over the rounds and their spread (half the interquartile range)
are printed, then profiled / unprofiled ratios.

Run: ``python benchmarks/bench_gc.py [--quick] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import gc, json, sys, time
import gevent
from gevent import sleep

profiled, waves, per_wave = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3])
pauses = {0: [], 1: [], 2: []}
started = [0.0]

def on_gc(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses[info["generation"]].append(time.perf_counter() - started[0])

lateness = []
def ticker():
    while True:
        asked = time.perf_counter()
        sleep(0.005)
        lateness.append(time.perf_counter() - asked - 0.005)

def leaf(n):
    total = 0
    for i in range(200):
        total += i * n
    sleep(0)
    return total

def handler(n, depth=6):
    if depth:
        return handler(n, depth - 1)
    for _ in range(3):
        leaf(n)
    return n

def server():
    for wave in range(waves):
        gevent.joinall([gevent.spawn(handler, i) for i in range(per_wave)])

import greenprof
gc.collect()
gc.callbacks.append(on_gc)
tick = gevent.spawn(ticker)
t0 = time.perf_counter()
if profiled:
    main = gevent.spawn(server)
    with greenprof.profile(main, follow_spawned=True, max_snapshots=10**9) as profiler:
        main.join()
else:
    main = gevent.spawn(server)
    main.join()
elapsed = time.perf_counter() - t0
tick.kill()
gc.callbacks.remove(on_gc)
gc.collect()
tracked = len(gc.get_objects())
print(json.dumps({
    "run_s": elapsed,
    "gc_s": sum(sum(v) for v in pauses.values()),
    "gc2_max_ms": 1000 * max(pauses[2], default=0.0),
    "gc_max_ms": 1000 * max((max(v) for v in pauses.values() if v), default=0.0),
    "collections": sum(len(v) for v in pauses.values()),
    "late_max_ms": 1000 * max(lateness, default=0.0),
    "tracked_k": tracked / 1000,
}))
"""

KEYS = ("run_s", "gc_s", "collections", "gc_max_ms", "gc2_max_ms", "late_max_ms", "tracked_k")


def one(profiled: bool, waves: int, per_wave: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, "1" if profiled else "0", str(waves), str(per_wave)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def spread(values: list[float]) -> float:
    if len(values) < 4:
        return (max(values) - min(values)) / 2
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller rounds")
    parser.add_argument("--rounds", type=int, default=0)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    waves, per_wave = (20, 300) if args.quick else (60, 500)
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(rounds):
        for profiled in (False, True):  # interleaved: the machine's load hits both
            runs[profiled].append(one(profiled, waves, per_wave))
    print(f"{waves} waves of {per_wave} greenlets, {rounds} rounds (median ± half the IQR)")
    print(f"{'':14}{'unprofiled':>18}{'profiled':>18}{'ratio':>9}")
    for key in KEYS:
        cells = []
        medians = []
        for profiled in (False, True):
            values = [r[key] for r in runs[profiled]]
            medians.append(statistics.median(values))
            cells.append(f"{medians[-1]:.3g} ± {spread(values):.2g}")
        ratio = medians[1] / medians[0] if medians[0] else float("inf")
        print(f"{key:14}{cells[0]:>18}{cells[1]:>18}{ratio:>9.2f}")


if __name__ == "__main__":
    main()
