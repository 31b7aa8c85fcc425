"""``ContinuousProfiler``: profiles requests all the time and hands one
aggregated :class:`Interval` to its exporters every ``interval`` seconds.

Requests are profiled by the WSGI middleware (``install(app)``); each
finished session is folded into the interval as it stops, and a
background loop (a real OS thread, back after ``fork``) closes the
interval and publishes it, so no request ever waits for an exporter.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import reprlib
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from .._entries import runs_the_program
from .._loop import BackgroundLoop
from .._threads import allocate_real_lock
from .._validate import check_positive_int, check_tags, check_wait, is_number
from ..exceptions import ConfigurationError, NotRunningError
from ..integrations.wsgi import Environ, ProfilerMiddleware, WSGIApp
from ..snapshot import Session, Snapshot
from ..typing import IntervalExporter, Sink
from ._blocking import BlockingMonitor
from ._interval import Interval, IntervalTable

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_ENDPOINTS",
    "DEFAULT_MAX_STACKS",
    "DEFAULT_SAMPLE_RATE",
    "ContinuousProfiler",
    "ContinuousStats",
]

_logger = logging.getLogger("greenprof")

DEFAULT_INTERVAL: Final = 60.0
#: The share of requests profiled by default. A profiled request costs
#: about 300 us of CPU on the benchmark workload of about 1 ms a request
#: (its session and folding it in; bench_continuous.py), and while it runs
#: every switch of the other requests pays for greenprof's tracer: on that
#: workload each 1% of requests profiled costs about 1% of CPU. A service
#: of 100 requests a second still profiles 60 a minute per process.
DEFAULT_SAMPLE_RATE: Final = 0.01
DEFAULT_MAX_STACKS: Final = 5_000
DEFAULT_MAX_ENDPOINTS: Final = 100
#: Frames kept per stack: deep enough for a web framework's stacks.
DEFAULT_MAX_DEPTH: Final = 64


@attrs.frozen
class ContinuousStats:
    """What a :class:`ContinuousProfiler` did since it was made."""

    #: Intervals closed and handed to the exporters.
    intervals: int
    #: Requests profiled and folded into an interval.
    requests: int
    #: Stack entries folded into ``<other stacks>`` (the stack cap was reached).
    stacks_folded: int
    #: Requests folded into the ``other`` endpoint (the endpoint cap was reached).
    endpoints_folded: int
    #: Calls of an exporter's ``publish`` that raised.
    exporter_failures: int


class _IntervalSink:
    """The sink the middleware's sessions go to: folds each session, with
    its snapshots, into the profiler's open interval as it stops."""

    #: It folds into memory and never waits: called where a request ends.
    export_never_blocks = True

    def __init__(self, profiler: ContinuousProfiler) -> None:
        self._profiler = profiler
        self._waiting: dict[str, list[Snapshot]] = {}

    def export(self, batch: Sequence[Snapshot]) -> None:
        for snapshot in batch:
            found = self._waiting.get(snapshot.session_id)
            if found is None:
                found = self._waiting[snapshot.session_id] = []
            found.append(snapshot)

    def export_sessions(self, sessions: Sequence[Session]) -> None:
        try:
            for session in sessions:
                snapshots = self._waiting.pop(session.session_id, [])
                self._profiler._fold(session, snapshots)
        finally:
            # A session's snapshots come in the batch that ends with it:
            # what is left would never be folded.
            self._waiting.clear()

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        self._waiting.clear()


class ContinuousProfiler:
    """Always-on profiling of a service's requests, one aggregated profile
    per ``interval`` seconds.

    - ``sample_rate`` (0 to 1): the share of requests profiled.
    - ``mode``: ``"greenlet"`` (switches only) or ``"hybrid"`` (with samples
      inside each run slice); see README.rst, "Modes".
    - ``tags``: static labels of every profile (service, version, host).
    - ``exporters``: where each interval goes (``PyroscopeExporter``,
      ``PprofEndpoint``, ``FileExporter`` or any object with ``publish``,
      ``flush`` and ``close``).
    - ``blocking``: a :class:`BlockingMonitor`, told of each profiled
      request's run slices longer than its threshold.
    - ``max_stacks``, ``max_endpoints``: the caps on one interval's distinct
      stacks and endpoints; past them time goes to ``<other stacks>`` and
      to the ``other`` endpoint, and is counted in :attr:`stats`.

    ``install(app)`` wraps a WSGI app; requests are profiled while the
    profiler runs (``start()``..``stop()``, or a ``with`` block).
    """

    def __init__(
        self,
        *,
        interval: float = DEFAULT_INTERVAL,
        sample_rate: float = DEFAULT_SAMPLE_RATE,
        mode: str = "greenlet",
        tags: Mapping[str, str] | None = None,
        exporters: Iterable[IntervalExporter] = (),
        max_stacks: int = DEFAULT_MAX_STACKS,
        max_endpoints: int = DEFAULT_MAX_ENDPOINTS,
        max_depth: int = DEFAULT_MAX_DEPTH,
        dump_period: float = 0.01,
        blocking: BlockingMonitor | None = None,
    ) -> None:
        if not is_number(interval) or not 0 < interval < math.inf:
            msg = (
                "interval is the seconds each profile covers: a finite number > 0 "
                f"such as 60, not {reprlib.repr(interval)}."
            )
            raise ConfigurationError(msg)
        if not is_number(sample_rate) or not 0 <= sample_rate <= 1:
            msg = f"sample_rate must be a number from 0 to 1, not {reprlib.repr(sample_rate)}."
            raise ConfigurationError(msg)
        if mode not in ("greenlet", "hybrid"):
            msg = (
                "mode must be 'greenlet' or 'hybrid' (a request's own greenlet is "
                f"profiled; thread mode samples whatever runs), not {mode!r}."
            )
            raise ConfigurationError(msg)
        if blocking is not None and not isinstance(blocking, BlockingMonitor):
            msg = f"blocking must be a BlockingMonitor or None, not {blocking!r}."
            raise ConfigurationError(msg)
        check_positive_int("max_stacks", max_stacks)
        check_positive_int("max_endpoints", max_endpoints)
        self.interval = float(interval)
        self.sample_rate = sample_rate
        self.mode = mode
        self.tags = check_tags(tags)
        self.max_stacks = max_stacks
        self.max_endpoints = max_endpoints
        self.exporters = _check_exporters(exporters)
        #: Told of every profiled request's long run slices, if given.
        self.blocking = blocking
        self._middlewares: weakref.WeakSet[ProfilerMiddleware] = weakref.WeakSet()
        # Checked now (mode, max_depth, dump_period): install() must not raise later.
        self._request_options: dict[str, Any] = {
            "mode": mode,
            "max_depth": max_depth,
            "dump_period": dump_period,
            "keep_snapshots": False,
        }
        ProfilerMiddleware(_no_app, **self._request_options)
        self._sink = _IntervalSink(self)
        self._lock = allocate_real_lock()
        self._closing = allocate_real_lock()
        self._table = self._new_table()
        self._next_close = math.inf
        self._running = False
        self._loop = BackgroundLoop(
            self._step, name="greenprof's continuous profiler", after_fork=self._after_fork
        )
        #: The last interval closed, or None.
        self.latest: Interval | None = None
        self._intervals = self._requests = self._stacks_folded = 0
        self._endpoints_folded = self._failures = 0
        self._failed: set[int] = set()

    # -- the program's side ------------------------------------------------------

    def install(self, app: WSGIApp) -> WSGIApp:
        """``app`` with its requests profiled while this profiler runs."""
        sinks: list[Sink] = [self._sink]
        if self.blocking is not None:
            sinks.append(self.blocking)
        middleware = ProfilerMiddleware(
            app, sinks=sinks, sample_rate=self.sample_rate, **self._request_options
        )
        self._middlewares.add(middleware)

        @runs_the_program
        def profiled(environ: Environ, start_response: Any) -> Iterable[bytes]:
            if self._running:
                return middleware(environ, start_response)
            return app(environ, start_response)

        return profiled

    def start(self) -> None:
        """Open an interval and close one every ``interval`` seconds."""
        with self._lock:
            if not self._running:
                self._table = self._new_table()
                self._next_close = time.monotonic() + self.interval
                self._running = True
        _running.add(self)
        self._loop.start()
        if self.blocking is not None:
            self.blocking.watch_slices()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop profiling; the open interval is closed and published, and the
        exporters flushed, ``timeout`` seconds at most."""
        check_wait("timeout", timeout)
        if not self._running:
            msg = "This continuous profiler is not running: call start() before stop()."
            raise NotRunningError(msg)
        self._running = False
        _running.discard(self)
        self._loop.stop(timeout)
        self.flush(timeout)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Close the open interval now, publish it, and wait for the exporters
        to send what they have, ``timeout`` seconds in all. False if one
        could not."""
        check_wait("timeout", timeout)
        return self._flush(timeout, publish_empty=True)

    def _flush(self, timeout: float | None, *, publish_empty: bool) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        # The requests' sinks first (a BlockingMonitor runs in its own thread).
        flushed = True
        for middleware in list(self._middlewares):
            flushed = middleware.flush(_left(deadline)) and flushed
        if publish_empty or self._table.requests:
            self._close_interval()
        for exporter in self.exporters:
            left = _left(deadline)
            try:
                flushed = bool(exporter.flush(left)) and flushed
            except Exception as exc:
                flushed = False
                self._exporter_failed(exporter, exc)
        return flushed

    def close(self) -> None:
        """Stop if running, and close every exporter."""
        if self._running:
            self.stop()
        if self.blocking is not None:
            self.blocking.close()
        for exporter in self.exporters:
            try:
                exporter.close()
            except Exception as exc:
                self._exporter_failed(exporter, exc)

    def __enter__(self) -> ContinuousProfiler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._running:
            self.stop()

    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def stats(self) -> ContinuousStats:
        with self._lock:
            table = self._table
            return ContinuousStats(
                intervals=self._intervals,
                requests=self._requests + table.requests,
                stacks_folded=self._stacks_folded + table.stacks_folded,
                endpoints_folded=self._endpoints_folded + table.endpoints_folded,
                exporter_failures=self._failures,
            )

    # -- intervals -----------------------------------------------------------------

    def _new_table(self) -> IntervalTable:
        return IntervalTable(
            time.time_ns(), max_stacks=self.max_stacks, max_endpoints=self.max_endpoints
        )

    def _fold(self, session: Session, snapshots: Sequence[Snapshot]) -> None:
        with self._lock:
            self._table.add_session(session, snapshots)

    def _step(self) -> float:
        now = time.monotonic()
        if now >= self._next_close:
            self._next_close = now + self.interval
            self._close_interval()
        return max(0.0, min(self._next_close - time.monotonic(), self.interval))

    def _close_interval(self) -> None:
        # One closing at a time (the loop's and a flush()): exporters get
        # intervals in order. Their publish never waits, by contract.
        with self._closing:
            self._close_and_publish()

    def _close_and_publish(self) -> None:
        with self._lock:
            table = self._table
            self._table = self._new_table()
            interval = table.close(self._table.start_ns, self.tags)
            self._intervals += 1
            self._requests += table.requests
            self._stacks_folded += table.stacks_folded
            self._endpoints_folded += table.endpoints_folded
            self.latest = interval
        for exporter in self.exporters:
            try:
                exporter.publish(interval)
            except Exception as exc:
                self._exporter_failed(exporter, exc)

    def _exporter_failed(self, exporter: object, problem: Exception) -> None:
        self._failures += 1
        if id(exporter) not in self._failed:  # logged once per exporter
            self._failed.add(id(exporter))
            _logger.warning(
                "greenprof: exporter %r failed (%s: %s); counted in stats.exporter_failures",
                exporter,
                type(problem).__name__,
                problem,
            )

    def _after_fork(self) -> None:
        # The parent publishes what it profiled; the child starts afresh.
        self._lock = allocate_real_lock()
        self._closing = allocate_real_lock()
        self._table = self._new_table()
        self._next_close = time.monotonic() + self.interval


#: Running profilers, each stopped at the interpreter's exit.
_running: weakref.WeakSet[ContinuousProfiler] = weakref.WeakSet()
#: Seconds the interpreter's exit may wait, in all, for the exporters.
EXIT_SECONDS: Final = 3.0


@atexit.register
def _publish_at_exit() -> None:
    """A process that exits (a gunicorn worker told to stop) publishes the
    interval it was filling, if a request is in it, within EXIT_SECONDS."""
    deadline = time.monotonic() + EXIT_SECONDS
    for profiler in list(_running):
        if not profiler._running:
            continue
        profiler._running = False
        with contextlib.suppress(Exception):  # the program is exiting: nothing to tell
            profiler._loop.stop(_left(deadline))
            profiler._flush(_left(deadline), publish_empty=False)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _no_app(environ: Environ, start_response: Any) -> Iterable[bytes]:  # pragma: no cover
    return []


def _check_exporters(exporters: object) -> list[IntervalExporter]:
    if callable(getattr(exporters, "publish", None)):
        msg = (
            "exporters is a list: pass exporters=[exporter], not the "
            f"{type(exporters).__name__} alone."
        )
        raise ConfigurationError(msg)
    if isinstance(exporters, (str, bytes)) or not isinstance(exporters, Iterable):
        msg = f"exporters must be a list of exporters, not {reprlib.repr(exporters)}."
        raise ConfigurationError(msg)
    found = list(exporters)
    for exporter in found:
        missing = [
            name
            for name in ("publish", "flush", "close")
            if not callable(getattr(exporter, name, None))
        ]
        if missing:
            msg = (
                f"{reprlib.repr(exporter)} is not an interval exporter: it has no callable "
                f"{', '.join(missing)}. See greenprof.typing.IntervalExporter."
            )
            raise ConfigurationError(msg)
    return found
