"""What always-on profiling costs a service: ``ContinuousProfiler`` at its
defaults on the web workload of ``bench_peers.py``.

The ``gevent.pywsgi`` app of ``bench_peers.py`` (a client in another
process, 32 keep-alive connections), served as it is and wrapped by
``ContinuousProfiler.install(app)`` at its defaults (exporting to a
``PprofEndpoint`` and a ``FileExporter``), runs interleaved in this one
process. Printed: requests per second against unprofiled and server CPU
per request added, each run against the unprofiled run of its own round,
medians over the rounds with half their interquartile range, and the
issue's targets: at least 0.97 of unprofiled throughput and at most 3%
more CPU per request at the defaults; ``--check`` exits 1 when one is
missed. For information: intervals of 1 s instead of 60 (one closed,
encoded and written during each run), one request in twenty profiled
(``sample_rate=0.05``), every request (``sample_rate=1``), and the
wrapper alone (``sample_rate=0``: what an unprofiled request pays).

Run: ``python benchmarks/bench_continuous.py [--quick] [--check] [--rounds N]
[--only]`` (``--only``: unprofiled and the defaults alone, for more rounds
in the same time).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any

from bench_peers import WEB_CONCURRENCY, WEB_FULL, WEB_QUICK, WebService, web_runs
from bench_web_cost import layer_table
from greenprof.continuous import ContinuousProfiler, FileExporter, PprofEndpoint
from greenprof.continuous._profiler import DEFAULT_SAMPLE_RATE
from peers import Peer

#: The row the targets are about: every option at its default, two exporters.
DEFAULTS = "defaults"


class Serving(Peer):
    """The service's app as it is, or wrapped by a continuous profiler."""

    per_request = False

    def __init__(self, service: WebService, name: str, **options: Any) -> None:
        self.service = service
        self.name = name
        self.options = options
        self.profiler: ContinuousProfiler | None = None

    def start_run(self, concurrency: int = 1) -> None:
        app = self.service.app
        if self.options:
            self.profiler = ContinuousProfiler(**self.options)
            app = self.profiler.install(app)  # type: ignore[assignment]
            self.profiler.start()
        self.service.server.application = app

    def stop_run(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
        self.service.server.application = self.service.app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds (a noisy machine wants more)"
    )
    parser.add_argument("--only", action="store_true", help="the targets' rows alone")
    options = parser.parse_args()
    duration, _, repeats = WEB_QUICK if options.quick else WEB_FULL
    repeats = options.rounds or repeats
    service = WebService()
    endpoint = PprofEndpoint()
    folder = tempfile.TemporaryDirectory()
    exporters = [endpoint, FileExporter(folder.name, keep=5)]
    peers = [
        Serving(service, "unprofiled"),
        Serving(service, DEFAULTS, exporters=exporters),
        Serving(service, "sample_rate 0.05", sample_rate=0.05, exporters=exporters),
        Serving(service, "1 s intervals", interval=1.0, exporters=exporters),
        Serving(service, "every request", interval=60.0, sample_rate=1.0),
        Serving(service, "wrapper only", sample_rate=0.0),
    ]
    if options.only:
        peers = peers[:2]
    try:
        runs = web_runs(peers, options.quick, service, options.rounds)
    finally:
        endpoint.close()
        folder.cleanup()
    print(
        f"Python {sys.version.split()[0]}; web workload, {WEB_CONCURRENCY} connections, "
        f"{repeats} interleaved rounds of {duration:g} s each; each run against its round's "
        f"unprofiled run, medians ± half the IQR; "
        f"default sample_rate {DEFAULT_SAMPLE_RATE}"
    )
    ratio, added_share = layer_table(runs, "")
    throughput = ratio[DEFAULTS]
    cpu = added_share[DEFAULTS]
    met = throughput >= 0.97 and cpu <= 0.03
    print(
        f"targets at the defaults: throughput {throughput:.3f} (>= 0.97), "
        f"CPU per request {cpu:+.1%} (<= +3%): {'met' if met else 'MISSED'}"
    )
    return 0 if met or not options.check else 1


if __name__ == "__main__":
    sys.exit(main())
