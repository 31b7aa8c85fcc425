"""greenprof: a profiler that records each greenlet at the moment it switches.

Every snapshot belongs to the greenlet it names, however many greenlets share
the OS thread, and the number of snapshots follows switches, not wall time.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._profiler import Profiler, ProfilerStats
from ._report import GreenletTime, Report, RunSlice, Segment, StackTime, Wait
from ._schema import load
from ._scope import ProfileScope, profile
from ._signal_dump import install_signal_dump
from .snapshot import EVENTS, MODES, Frame, Session, Snapshot

try:
    __version__ = version("greenprof")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "EVENTS",
    "MODES",
    "Frame",
    "GreenletTime",
    "ProfileScope",
    "Profiler",
    "ProfilerStats",
    "Report",
    "RunSlice",
    "Segment",
    "Session",
    "Snapshot",
    "StackTime",
    "Wait",
    "__version__",
    "install_signal_dump",
    "load",
    "profile",
]
