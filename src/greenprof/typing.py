"""The extension points: what greenprof needs from a sink you write.

``greenprof.sinks.Sink`` and ``SessionSink`` are these; they live here so
that the core of greenprof depends on a contract, not on any sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .snapshot import Session, Snapshot

if TYPE_CHECKING:
    from .continuous._interval import Interval

__all__ = ["IntervalExporter", "SessionSink", "Sink"]


@runtime_checkable
class Sink(Protocol):
    """Receives snapshots from a :class:`~greenprof.Profiler`, never on the switch path.

    - ``export(batch)`` gets snapshots in order. It may raise anything, even
      ``SystemExit`` or ``GreenletExit``: the profiler logs the first
      failure, counts every one, keeps the batch and offers it again at its
      next hand-over or flush; other sinks are not affected and the program
      never sees it.
    - ``flush(timeout)`` makes what was exported durable or sent, waiting at
      most ``timeout`` seconds (``None``: as long as it takes). It returns
      False if it could not.
    - ``close()`` releases the sink's resources; it is idempotent. A profiler
      never closes a sink: whoever made it does.

    The profiler calls ``export`` and ``flush`` from a thread of the sink's
    own (a real OS thread, even under ``gevent.monkey.patch_all()``), one
    call at a time, so a sink that blocks holds up nothing but itself; the
    program's ``stop()`` never waits for it and its ``flush()`` waits at
    most its timeout. A sink whose ``export`` never blocks (it appends to
    memory, writes a local file, or queues for a sender of its own) may say
    so with the class attribute ``export_never_blocks = True``: its
    ``export`` is then called in the thread that stops a session, so what a
    session recorded is in the sink when ``stop()`` returns (``flush``
    still runs in the sink's thread, unless the class that defines it also
    says ``flush_never_blocks = True``: a ``flush`` that returns at once is
    called in place too, and a ``flush()`` of such sinks only never lets
    another greenlet run).

    A sink may also have ``export_sessions(sessions)`` (see
    :class:`SessionSink`): it then gets each :class:`~greenprof.Session`
    when it stops, after the session's snapshots.
    """

    def export(self, batch: Sequence[Snapshot]) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self) -> None: ...


@runtime_checkable
class SessionSink(Sink, Protocol):
    """A sink that also keeps sessions: when each started and stopped, its
    mode, dump period and tags. Failures are handled as for ``export``."""

    def export_sessions(self, sessions: Sequence[Session]) -> None: ...


@runtime_checkable
class IntervalExporter(Protocol):
    """Where a :class:`~greenprof.continuous.ContinuousProfiler` sends each
    interval's profile.

    - ``publish(interval)`` is called from the profiler's background thread
      as each interval closes (and at ``flush()``/``stop()`` from the
      caller's); it must not wait for the network: queue, and send from a
      thread of your own. What it raises is counted and logged once.
    - ``flush(timeout)`` sends what was published, waiting at most
      ``timeout`` seconds (None: as long as it takes); False if it could not.
    - ``close()`` releases what the exporter holds; idempotent.
    """

    def publish(self, interval: Interval) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self) -> None: ...
