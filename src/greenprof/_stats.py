"""The counters that tell whether a profile is complete."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from ._delivery import Delivery
from ._session import Run

__all__ = ["ProfilerStats", "stats_of"]


@attrs.frozen
class ProfilerStats:
    """Counters that tell whether a profile is complete."""

    #: Snapshots recorded and kept.
    snapshots: int
    #: Snapshots not kept because a greenlet reached ``max_snapshots``.
    dropped: int
    #: ``greenlet_id`` to dropped count, for the greenlets that dropped any.
    dropped_by_greenlet: dict[int, int]
    #: Exceptions greenprof swallowed inside its tracer (should stay 0).
    tracer_errors: int
    #: Times greenprof found its tracer removed by other code and put it back.
    tracer_reinstalls: int
    #: Sink ``export``/``flush`` calls that raised (anything) or reported
    #: failure, and sink flushes not done within the flush's timeout (of
    #: every session sharing the profiler's sinks: one ``profile()``, one
    #: ``ProfilerMiddleware``).
    sink_failures: int


def stats_of(runs: Iterable[Run], delivery: Delivery) -> ProfilerStats:
    """The stats of ``runs`` (a profiler's sessions, kept or running)."""
    snapshots = 0
    dropped: dict[int, int] = {}
    dispatchers = {}
    for run in runs:
        snapshots += run.progress()[1]
        for greenlet_id, count in run.dropped().items():
            dropped[greenlet_id] = dropped.get(greenlet_id, 0) + count
        for dispatcher in run.dispatchers:
            dispatchers[id(dispatcher)] = dispatcher
    return ProfilerStats(
        snapshots=snapshots,
        dropped=sum(dropped.values()),
        dropped_by_greenlet=dropped,
        tracer_errors=sum(d.errors for d in dispatchers.values()),
        tracer_reinstalls=sum(d.reinstalls for d in dispatchers.values()),
        sink_failures=delivery.failures,
    )
