"""Always-on profiling of a service: every ``interval`` seconds, one profile
of its requests' on-CPU and off-CPU time per endpoint and stack, in
bounded memory, handed to exporters (files, pprof over HTTP, Pyroscope).

Two lines turn it on for a WSGI app::

    profiler = ContinuousProfiler(exporters=[FileExporter("profiles")])
    app = profiler.install(app); profiler.start()
"""

from __future__ import annotations

from ._blocking import BlockingMonitor, BlockingSlice
from ._endpoint import PprofEndpoint
from ._files import FileExporter
from ._interval import OTHER, OTHER_STACK, Endpoint, Interval
from ._profiler import ContinuousProfiler, ContinuousStats
from ._pyroscope import PyroscopeExporter

__all__ = [
    "OTHER",
    "OTHER_STACK",
    "BlockingMonitor",
    "BlockingSlice",
    "ContinuousProfiler",
    "ContinuousStats",
    "Endpoint",
    "FileExporter",
    "Interval",
    "PprofEndpoint",
    "PyroscopeExporter",
]
