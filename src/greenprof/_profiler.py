"""The object users hold: profiling sessions over one or more greenlets.

A :class:`Profiler` is a thin handle: its options, sinks and clock live in
a pipeline (``_pipeline``), each ``start()``..``stop()`` is a session
(``_session``), snapshots are built when read or when a sink needs them
(``_build``) and handed over by the pipeline's delivery (``_delivery``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping

import greenlet

from ._delivery import Batch
from ._options import (
    DEFAULT_DUMP_PERIOD,
    DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_SNAPSHOTS,
    Options,
)
from ._pipeline import Pipeline
from ._report import Report
from ._session import Run, new_session_id, recheck_tracer
from ._stats import ProfilerStats, stats_of
from ._validate import Tags
from .exceptions import NotRunningError
from .snapshot import Session, Snapshot
from .typing import Sink

__all__ = [
    "DEFAULT_FLUSH_TIMEOUT",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_SNAPSHOTS",
    "Profiler",
    "ProfilerStats",
]


class Profiler:
    """Records every switch of the greenlets it is started on.

    Usable on its own (``start``/``stop``) or as a context manager. Each
    ``start()``..``stop()`` is a session; the profiler keeps what its
    sessions recorded (:attr:`snapshots`, :attr:`sessions`) and hands it to
    every sink at ``stop()`` (and at :meth:`flush`), without waiting for
    them to send it.
    """

    def __init__(
        self,
        *,
        sinks: Iterable[Sink] = (),
        max_snapshots: int = DEFAULT_MAX_SNAPSHOTS,
        max_depth: int = DEFAULT_MAX_DEPTH,
        flush_timeout: float | None = DEFAULT_FLUSH_TIMEOUT,
        mode: str = "greenlet",
        dump_period: float = DEFAULT_DUMP_PERIOD,
        min_duration: float = 0.0,
        follow_spawned: bool = False,
        follow_all: bool = False,
        only: Callable[[greenlet.greenlet], bool] | None = None,
        keep_snapshots: bool = True,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        options = Options.of(
            max_snapshots=max_snapshots,
            max_depth=max_depth,
            flush_timeout=flush_timeout,
            mode=mode,
            dump_period=dump_period,
            min_duration=min_duration,
            follow_spawned=follow_spawned,
            follow_all=follow_all,
            only=only,
            keep_snapshots=keep_snapshots,
            tags=tags,
        )
        self._setup(Pipeline(options, sinks))

    @classmethod
    def _of(cls, pipeline: Pipeline) -> Profiler:
        """A profiler sharing ``pipeline``'s options, sinks and clock: what
        ``profile()`` and the middleware make for each call, unchecked."""
        profiler = object.__new__(cls)
        profiler._setup(pipeline)
        return profiler

    def _setup(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        # Made when first read (a dropped request never needs them).
        self._session_id: str | None = None
        self._tags: Tags | None = None
        #: True when the last session was shorter than ``min_duration`` and
        #: its snapshots were discarded instead of handed over.
        self.discarded = False
        self._run: Run | None = None
        # The last session started (running, kept or discarded).
        self._last: Run | None = None
        self._kept: list[Run] = []
        # Called with the session's duration in ns as it stops, before its
        # Session is made (the WSGI middleware's ``duration_ms`` tag).
        self._on_stop: Callable[[Profiler, int], None] | None = None

    @property
    def session_id(self) -> str:
        """Identifies the current session (else the last, else the next) in
        every snapshot it records: a new one for each start..stop after the
        first, which keeps an id read before it started."""
        run = self._last
        if run is not None:
            return run.id()
        session_id = self._session_id
        if session_id is None:
            session_id = self._session_id = new_session_id()
        return session_id

    @property
    def tags(self) -> Tags:
        """What the session is about (``{"path": "/checkout"}``): kept in its
        :class:`~greenprof.Session`. May be changed until ``stop()``."""
        tags = self._tags
        if tags is None:
            tags = self._tags = Tags.of_checked(self._pipeline.options.tags)
            run = self._run
            if run is not None:
                run.tags = tags  # its record, while it runs, shows them
        return tags

    @tags.setter
    def tags(self, tags: Mapping[str, str]) -> None:
        self._tags = Tags(tags)
        if self._run is not None:
            self._run.tags = self._tags

    # -- options ----------------------------------------------------------------

    @property
    def options(self) -> Options:
        return self._pipeline.options

    mode = property(lambda self: self._pipeline.options.mode)
    max_snapshots = property(lambda self: self._pipeline.options.max_snapshots)
    max_depth = property(lambda self: self._pipeline.options.max_depth)
    flush_timeout = property(lambda self: self._pipeline.options.flush_timeout)
    dump_period = property(lambda self: self._pipeline.options.dump_period)
    min_duration = property(lambda self: self._pipeline.options.min_duration)
    follow_spawned = property(lambda self: self._pipeline.options.follow_spawned)
    follow_all = property(lambda self: self._pipeline.options.follow_all)
    only = property(lambda self: self._pipeline.options.only)
    keep_snapshots = property(lambda self: self._pipeline.options.keep_snapshots)

    # -- sinks --------------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        """Send this profiler's snapshots to ``sink`` from now on (those
        already handed to the other sinks included, at once)."""
        past = [batch for run in self._runs() for batch in run.handed_over()]
        self._pipeline.delivery.add(sink, past=past)

    def remove_sink(self, sink: Sink) -> None:
        """Stop sending to ``sink``; it is not flushed or closed."""
        self._pipeline.delivery.remove(sink)

    @property
    def sinks(self) -> list[Sink]:
        return self._pipeline.delivery.sinks

    # -- sessions -----------------------------------------------------------------

    def start(self, target: greenlet.greenlet | threading.Thread | None = None) -> None:
        """Profile ``target`` (default: the calling greenlet) until :meth:`stop`.

        Call it from the OS thread that runs ``target``: greenlet tracing is
        per thread. Several targets may be started on one profiler. In
        ``thread`` mode ``target`` may also be a ``threading.Thread``.
        """
        run = self._run
        if run is None:
            # A new start..stop: a new session. (The first keeps an id read
            # before it, which sinks may have been told.)
            session_id = self._session_id if self._last is None else None
            run = Run(self._pipeline, session_id, self._tags)
            self.discarded = False
            try:
                run.start(target, sys._getframe(1))
            except BaseException:
                if run.running:  # an error after its first target: take it down
                    run.stop(None)
                raise
            self._run = self._last = run
            return
        run.start(target, sys._getframe(1))

    def stop(self) -> None:
        """Stop every target, then hand what was recorded to every sink,
        without waiting for them to send it (:meth:`flush` waits).

        What a sink raises is its failure, counted in ``stats.sink_failures``
        and never raised here, but for a ``KeyboardInterrupt`` out of a sink
        called in this thread: it may be the program's Ctrl-C, so it is
        raised again once every sink had the snapshots.

        A session shorter than ``min_duration`` hands nothing to its sinks and
        keeps nothing (``discarded`` tells).
        """
        run = self._run
        if run is None or not run.targets:
            msg = (
                "This profiler is not running: call start() before stop(), "
                "and stop() only once per start()."
            )
            raise NotRunningError(msg)
        self._run = None
        run.stop(sys._getframe(1))
        if run.discarded:
            self.discarded = True
            return
        if self._on_stop is not None:
            self._on_stop(self, run.stop_ns - run.start_ns)
        if self._tags is not None:  # as they were at stop(): the next session may change them
            run.tags = dict(self._tags)
        self._kept.append(run)
        if self._pipeline.delivery:
            self._hand_over(run)

    def _hand_over(self, run: Run, *, send: bool = True) -> bool:
        batch: Batch | None = run.to_hand_over()
        if batch is None:
            return True
        return self._pipeline.delivery.hand_over(batch, send=send)

    @property
    def is_running(self) -> bool:
        return self._run is not None and self._run.running

    def __enter__(self) -> Profiler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.is_running:
            self.stop()

    # -- results ------------------------------------------------------------------

    def _runs(self) -> list[Run]:
        """The kept sessions, and the one running."""
        run = self._run
        return [*self._kept, run] if run is not None else list(self._kept)

    @property
    def snapshots(self) -> list[Snapshot]:
        """Everything recorded so far, in order."""
        kept = self._kept
        if self._run is None and len(kept) == 1:  # a request's, read once it stopped
            return list(kept[0].snapshots())
        return [snapshot for run in self._runs() for snapshot in run.snapshots()]

    @property
    def sessions(self) -> list[Session]:
        """One :class:`~greenprof.Session` per start..stop kept so far, and
        one for the current one while it runs (``stop_ns`` 0)."""
        return [run.record() for run in self._runs()]

    @property
    def bounds(self) -> dict[int, tuple[int, int]]:
        """``greenlet_id`` -> (start, stop) wall-clock ns of its part of the
        current (else the last) session; stop is 0 while it runs."""
        runs = self._runs()
        return dict(runs[-1].bounds) if runs else {}

    @property
    def stats(self) -> ProfilerStats:
        return stats_of(self._runs(), self._pipeline.delivery)

    def _progress(self) -> tuple[int, int]:
        """``(greenlets followed, snapshots recorded)`` so far, from any thread,
        without building anything: cheap enough to call every second."""
        greenlets = snapshots = 0
        for run in self._runs():
            followed, recorded = run.progress()
            greenlets += followed if run.running else 0
            snapshots += recorded
        return greenlets, snapshots

    def report(self) -> Report:
        """Where the time went: on/off-CPU per stack and per greenlet, and the
        longest stretches without a yield (see :class:`greenprof.Report`)."""
        runs = self._runs()
        snapshots = [snapshot for run in runs for snapshot in run.snapshots()]
        return Report(snapshots, sessions=[run.record() for run in runs])

    def flush(self, timeout: float | None = None) -> bool:
        """Hand everything recorded so far to every sink, and wait for them
        to send it, ``timeout`` seconds in all (default: ``flush_timeout``).

        Each sink flushes in a thread of its own, so one stuck in a call does
        not hold this past ``timeout``, and a greenlet waiting here lets the
        others of its thread run; one whose flush never blocks
        (``MemorySink``, ``JSONSink``) flushes here, so with only such sinks,
        or a ``timeout`` of 0, no other greenlet runs. Also re-installs
        greenprof's tracer in the calling thread if other code removed it.
        Returns False if a sink failed or did not finish in time.
        """
        run = self._run
        if run is not None:
            recheck_tracer(list(run.targets.values()))
        if self._pipeline.delivery:
            for kept in self._runs():
                self._hand_over(kept, send=False)  # sent by flush(), once
        return self._pipeline.flush(timeout)
