"""Where greenprof's cost on the web workload goes, one layer at a time.

The web workload of ``bench_peers.py`` (a ``gevent.pywsgi`` app, a client in
another process, 32 keep-alive connections), run with greenprof switched on
a layer at a time, interleaved, medians compared with the unprofiled run of
this same process:

1. greenprof's tracer installed (one idle greenlet watched all along), no
   session per request: what every switch of the server pays;
2. a ``Profiler`` per request, started and stopped, with ``max_depth=1``
   and ``min_duration`` so long that every session is dropped: the
   session's own cost, with captures as cheap as they get;
3. the same with full stacks: adds the stack captures on the switch path;
4. the same, kept: adds building and formatting the snapshots at ``stop()``
   (row 4 is ``bench_peers.py``'s "greenprof greenlet").

Printed: requests per second against unprofiled, and server CPU per request
added, in microseconds. For information; the targets are in
``bench_peers.py``.

Run: ``python benchmarks/bench_web_cost.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import greenlet

import greenprof
from bench_peers import WEB_CONCURRENCY, WEB_FULL, WEB_QUICK, web_runs
from peers import Greenprof, NoopTracer, Peer, Session, Unprofiled

#: Seconds no request lasts: sessions shorter than this are dropped.
NEVER = 3600.0


class TracerOnly(Peer):
    """greenprof's tracer installed for the whole run, no session per request."""

    name = "tracer, no session"
    per_request = False

    def start_run(self, concurrency: int = 1) -> None:
        self._idle = greenlet.greenlet(_nothing)  # never runs: its watch stays
        self._profiler = greenprof.Profiler()
        self._profiler.start(self._idle)

    def stop_run(self) -> None:
        self._profiler.stop()


def _nothing() -> None:
    return None


class ProfilerPerRequest(Greenprof):
    """A ``greenprof.Profiler()`` made for each request (options checked,
    pipeline built each time): what request profiling cost before it shared
    one pipeline, and what code that makes its own profilers still pays."""

    def begin(self, target: greenlet.greenlet | None = None, keep: bool = False) -> Session:
        profiler = greenprof.Profiler(mode=self.mode, dump_period=self.dump_period, **self.options)
        profiler.start(target)
        return Session(target or greenlet.getcurrent(), profiler)


def layers() -> list[Peer]:
    return [
        Unprofiled(),
        NoopTracer(),
        TracerOnly(),
        Greenprof("greenlet", name="session, dropped, 1 frame", max_depth=1, min_duration=NEVER),
        Greenprof("greenlet", name="session, dropped", min_duration=NEVER),
        Greenprof("greenlet", name="session, kept"),
        ProfilerPerRequest("greenlet", name="Profiler() per request, kept"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (tox -e bench)")
    parser.add_argument(
        "--check", action="store_true", help="accepted like the other benchmarks; no target here"
    )
    options = parser.parse_args()
    runs = web_runs(layers(), options.quick)
    duration, _, repeats = WEB_QUICK if options.quick else WEB_FULL
    print(
        f"Python {sys.version.split()[0]}; web workload, {WEB_CONCURRENCY} connections, "
        f"medians of {repeats} interleaved runs of {duration:g} s"
    )
    medians = {
        name: (
            statistics.median(m["rps"] for m in values),
            statistics.median(m["cpu_per_request_ms"] * 1000 for m in values),
        )
        for name, values in runs.items()
    }
    base_rps, base_cpu = medians["unprofiled"]
    print(f"{'layer':<28} {'rps ratio':>9} {'CPU per request':>16} {'added':>8}")
    for name, (rps, cpu) in medians.items():
        print(f"{name:<28} {rps / base_rps:>9.3f} {cpu:>13.0f} us {cpu - base_cpu:>+6.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
