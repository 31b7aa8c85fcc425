"""Handing snapshots and sessions to sinks: in order, each sink on its own,
failures counted, logged once and retried, never waiting for the network.

A delivery belongs to a pipeline (see ``_pipeline``), so a batch that failed
for one request's session is retried with the next request's, not lost
with the session's profiler.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from ._threads import allocate_real_lock
from .exceptions import InvalidSinkError, UnknownSinkError
from .snapshot import Session, Snapshot
from .typing import Sink

__all__ = ["Batch", "Delivery"]

_logger = logging.getLogger("greenprof")

#: Snapshots a sink may have waiting for a retry; past it the oldest
#: batches are given up and counted in ``Delivery.given_up``.
MAX_PENDING: Final = 1_000_000


class Batch:
    """Snapshots and the sessions that stopped with them, for every sink."""

    __slots__ = ("cancelled", "sessions", "snapshots")

    def __init__(self, snapshots: Sequence[Snapshot], sessions: Sequence[Session] = ()) -> None:
        self.snapshots = snapshots
        self.sessions = sessions
        #: Set when the run they came from was discarded: never retried.
        self.cancelled = False


class _SinkState:
    __slots__ = ("pending", "pending_snapshots", "sending", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        #: True while one thread or greenlet hands batches over; another
        #: leaves its batch in ``pending`` for that one to send.
        self.sending = False
        #: Batches not handed over yet, oldest first: a failed one holds up
        #: the ones after it, so a sink sees every snapshot in order, and a
        #: session after its snapshots.
        self.pending: deque[Batch] = deque()
        self.pending_snapshots = 0


class Delivery:
    """The sinks of a pipeline and what each still has to receive."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self._lock = allocate_real_lock()
        self._states: list[_SinkState] = []
        #: Sink calls that raised or reported failure.
        self.failures = 0
        #: Snapshots given up because a sink had too many waiting.
        self.given_up = 0
        for sink in sinks:
            self.add(sink)

    def after_fork_in_child(self) -> None:
        """A new lock: a thread of the parent may have held this one at the fork."""
        self._lock = allocate_real_lock()

    # -- sinks --------------------------------------------------------------------

    def add(self, sink: Sink, *, past: Iterable[Batch] = ()) -> None:
        """Deliver to ``sink`` from now on, after ``past`` (batches the
        others had already received); adding a sink twice adds it once."""
        missing = [
            name for name in ("export", "flush", "close") if not callable(getattr(sink, name, None))
        ]
        if missing:
            msg = (
                f"{sink!r} is not a sink: it has no callable {', '.join(missing)}. "
                "A sink needs export(batch), flush(timeout) and close(); "
                "see greenprof.sinks.Sink."
            )
            raise InvalidSinkError(msg)
        with self._lock:
            if any(state.sink is sink for state in self._states):
                return
            state = _SinkState(sink)
            for batch in past:
                self._queue(state, batch)
            self._states.append(state)

    def remove(self, sink: Sink) -> None:
        with self._lock:
            for index, state in enumerate(self._states):
                if state.sink is sink:
                    del self._states[index]
                    return
        msg = f"{sink!r} was never added to this profiler; nothing to remove."
        raise UnknownSinkError(msg)

    @property
    def sinks(self) -> list[Sink]:
        return [state.sink for state in self._states]

    def __bool__(self) -> bool:
        return bool(self._states)

    # -- handing over -------------------------------------------------------------

    def hand_over(self, batch: Batch, *, send: bool = True) -> bool:
        """Give ``batch`` to every sink (after what each still had waiting),
        without waiting for any to send it; False if one failed (its batches
        wait for the next hand-over or flush). With ``send`` False, only
        queue it, for the next hand-over or flush."""
        with self._lock:
            states = list(self._states)
            for state in states:
                self._queue(state, batch)
        ok = True
        if send:
            for state in states:
                ok = self._send(state) and ok
        return ok

    def flush(self, timeout: float | None) -> bool:
        """Hand over what is waiting, then flush every sink, giving them
        ``timeout`` seconds in all (None: as long as they take)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ok = True
        for state in list(self._states):
            ok = self._send(state) and ok
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                flushed = state.sink.flush(left)
            except Exception as exc:
                flushed = False
                _report_sink_failure(state.sink, "flush", exc)
            else:
                if flushed is False:
                    _report_sink_failure(state.sink, "flush", "it returned False")
            if flushed is False:
                ok = False
                with self._lock:
                    self.failures += 1
        return ok

    def _queue(self, state: _SinkState, batch: Batch) -> None:
        # Under self._lock.
        state.pending.append(batch)
        state.pending_snapshots += len(batch.snapshots)
        while state.pending_snapshots > MAX_PENDING and len(state.pending) > 1:
            dropped = state.pending.popleft()
            state.pending_snapshots -= len(dropped.snapshots)
            self.given_up += len(dropped.snapshots)

    def _send(self, state: _SinkState) -> bool:
        """Hand ``state``'s waiting batches over, oldest first, in one
        ``export`` (and one ``export_sessions``); False if the sink failed."""
        sink = state.sink
        with self._lock:
            if state.sending:
                return True
            state.sending = True
        while True:
            with self._lock:
                taken = list(state.pending)
                if not taken:
                    state.sending = False
                    return True
            live = [batch for batch in taken if not batch.cancelled]
            snapshots = _joined([batch.snapshots for batch in live])
            sessions = [session for batch in live for session in batch.sessions]
            action = "export"
            try:
                if snapshots:
                    sink.export(snapshots)
                action = "export_sessions"
                export_sessions = getattr(sink, "export_sessions", None)
                if sessions and export_sessions is not None:
                    export_sessions(sessions)
            except Exception as exc:
                with self._lock:
                    self.failures += 1
                    if action == "export_sessions":  # the snapshots went: not again
                        self._take(state, len(taken))
                        state.pending.appendleft(Batch((), sessions))
                    state.sending = False
                _report_sink_failure(sink, action, exc)
                return False
            except BaseException:
                # GreenletExit, KeyboardInterrupt: not the sink's failure, the
                # caller's to see. What was taken is sent again next time.
                with self._lock:
                    state.sending = False
                raise
            with self._lock:
                self._take(state, len(taken))

    @staticmethod
    def _take(state: _SinkState, count: int) -> None:
        # Under self._lock: the ``count`` oldest batches went.
        for _ in range(count):
            batch = state.pending.popleft()
            state.pending_snapshots -= len(batch.snapshots)


def _joined(parts: list[Sequence[Snapshot]]) -> Sequence[Snapshot]:
    return parts[0] if len(parts) == 1 else [s for part in parts for s in part]


# id(sink) -> a weak (or, for sinks that refuse weak references, strong)
# reference to the sink whose first failure was logged. Identity, not
# equality: two equal sinks are two sinks.
_reported_sinks: dict[int, Callable[[], object]] = {}


def _report_sink_failure(sink: object, action: str, problem: Exception | str) -> None:
    """Log a sink's first failure only; later ones are just counted."""
    key = id(sink)
    seen = _reported_sinks.get(key)
    if seen is not None and seen() is sink:
        return
    if len(_reported_sinks) > 256:
        for stale in [k for k, ref in _reported_sinks.items() if ref() is None]:
            del _reported_sinks[stale]
    try:
        _reported_sinks[key] = weakref.ref(sink)
    except TypeError:
        _reported_sinks[key] = functools.partial(_same, sink)
    if isinstance(problem, str):
        detail, trace = problem, ""
    else:
        detail = f"{type(problem).__name__}: {problem}"
        # Its traceback as text, not the exception: a handler that keeps
        # records (a buffering one, a test's capture) would keep the frames
        # of the program's code that called stop() or flush() alive, with
        # everything their locals refer to.
        trace = "\n" + "".join(traceback.format_exception(problem)).rstrip()
    _logger.error(
        "greenprof: sink %r failed in %s() (%s). Other sinks still receive "
        "every snapshot, the profiler keeps them, and this sink's batch is "
        "retried at the next flush; further failures are only counted in "
        "Profiler.stats.sink_failures.%s",
        sink,
        action,
        detail,
        trace,
    )


def _same(value: object) -> object:
    return value
