"""greenprof demo: profile one request among several concurrent ones under gevent.

Eight "requests" run at once in one OS thread, each calling different
functions. greenprof records one of them at every switch: every snapshot is
that request's own stack, never another request's or the hub's.

Run: ``python examples/demo.py [output.jsonl]``
"""

from __future__ import annotations

import sys
from collections import defaultdict

import gevent

import greenprof
from greenprof.sinks import JSONSink


def query_database(user: int) -> dict[str, int]:
    gevent.sleep(0.004)  # waiting for the database
    return {"user": user}


def call_payment_api(user: int) -> bool:
    gevent.sleep(0.010)  # waiting for the payment service
    return True


def render_page(data: dict[str, int]) -> str:
    return ",".join(str(i * data["user"]) for i in range(3000))  # CPU work


def checkout(user: int) -> str:
    data = query_database(user)
    call_payment_api(user)
    return render_page(data)


def browse(user: int) -> str:
    for _ in range(3):
        data = query_database(user)
    return render_page(data)


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "greenprof-demo.jsonl"
    requests = [gevent.spawn(browse if i % 2 else checkout, i) for i in range(8)]
    for i, request in enumerate(requests):
        request.name = f"request-{i}"
    profiled = requests[2]

    with greenprof.profile(profiled, sinks=[JSONSink(path)]) as profiler:
        gevent.joinall(requests)

    snapshots = profiler.snapshots
    print(f"Profiled {profiled.name} among {len(requests)} concurrent requests.")
    print(
        f"{len(snapshots)} snapshots, all of greenlet(s): "
        f"{sorted({s.greenlet_name for s in snapshots})}\n"
    )

    start = snapshots[0].timestamp_ns
    print(f"{'t (ms)':>8}  {'event':<10} where")
    for snapshot in snapshots:
        where = " > ".join(f.function for f in snapshot.stack[-3:]) or "(no stack)"
        mine = [f for f in snapshot.stack if f.filename == __file__]
        line = f"  (demo.py line {mine[-1].lineno})" if mine else ""
        elapsed = (snapshot.timestamp_ns - start) / 1e6
        print(f"{elapsed:8.2f}  {snapshot.event:<10} {where}{line}")

    # Where the time went: off-CPU per wait site, and the longest CPU stretch.
    report = profiler.report()
    waits: dict[str, float] = defaultdict(float)
    for wait in report.waits:
        user_frames = [f for f in wait.stack if f.filename == __file__]
        site = user_frames[-1] if user_frames else wait.stack[-1]
        waits[f"{site.function} (line {site.lineno})"] += wait.duration_ns / 1e6
    print("\nTime spent waiting, by wait site:")
    for site, ms in sorted(waits.items(), key=lambda item: -item[1]):
        print(f"  {ms:7.2f} ms  {site}")
    longest = report.longest_slices(1)[0]
    ended = [f.function for f in longest.end_stack if f.filename == __file__]
    print(
        f"Longest stretch without yielding: {longest.duration_ns / 1e6:.2f} ms, "
        f"ending in {' > '.join(ended) or 'the exit'}"
    )

    own = {"checkout", "query_database", "call_payment_api", "render_page"}
    demo_frames = {f.function for s in snapshots for f in s.stack if f.filename == __file__}
    foreign = demo_frames - own
    print(f"\nFrames from other requests' code in this profile: {len(foreign)}")
    print(f"Wrote {len(snapshots)} snapshots to {path}; read them back with greenprof.load().")
    assert greenprof.load(path)[-len(snapshots) :] == snapshots
    return 0 if not foreign else 1


if __name__ == "__main__":
    sys.exit(main())
