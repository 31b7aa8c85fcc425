"""Where a profiler sends its snapshots: any object with the :class:`Sink` methods."""

from __future__ import annotations

from ._base import Sink
from ._json import JSONSink
from ._memory import MemorySink
from ._skywalking import SkyWalkingSink

__all__ = ["JSONSink", "MemorySink", "Sink", "SkyWalkingSink"]
