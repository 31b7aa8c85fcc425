"""Where a profiler sends its snapshots: any object with the :class:`Sink` methods."""

from __future__ import annotations

from ..skywalking._sink import SkyWalkingSink
from ..typing import SessionSink, Sink
from ._json import JSONSink
from ._memory import MemorySink

__all__ = ["JSONSink", "MemorySink", "SessionSink", "Sink", "SkyWalkingSink"]
