"""The sink contract: what a profiler needs from anything it feeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..snapshot import Snapshot


@runtime_checkable
class Sink(Protocol):
    """Receives snapshots from a :class:`~greenprof.Profiler`, never on the switch path.

    - ``export(batch)`` gets snapshots in order. It may raise: the profiler
      logs the first failure, counts every one, keeps the batch and offers it
      again at its next flush; other sinks are not affected.
    - ``flush(timeout)`` makes what was exported durable or sent, waiting at
      most ``timeout`` seconds (``None``: as long as it takes). It returns
      False if it could not.
    - ``close()`` releases the sink's resources; it is idempotent. A profiler
      never closes a sink: whoever made it does.
    """

    def export(self, batch: Sequence[Snapshot]) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self) -> None: ...
