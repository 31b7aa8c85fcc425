"""Handing snapshots and sessions to sinks: in order, each sink on its own,
failures counted, logged once and retried; the program never waits for a
sink and never sees what one raises.

A delivery belongs to a pipeline (see ``_pipeline``), so a batch that failed
for one request's session is retried with the next request's, not lost
with the session's profiler.

Where sinks are called: one whose class says ``export_never_blocks = True``
(``MemorySink``, ``JSONSink``, ``SkyWalkingSink``) gets its snapshots in
the thread that stops a session, so they are in it when ``stop()``
returns; any other sink is called from a thread of its own
(``_sink_threads``), so one that blocks holds up nothing but itself. A
sink's ``flush`` runs in its own thread too, and ``flush()`` waits for them
cooperatively, never past its timeout; but one whose class also says
``flush_never_blocks = True`` next to its ``flush`` (``MemorySink``,
``JSONSink``) is flushed in the caller, so a flush of such sinks alone
never lets another greenlet run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from ._sink_threads import run_in_sink_thread
from ._threads import RealEvent, allocate_real_lock
from .exceptions import InvalidSinkError, UnknownSinkError
from .snapshot import Session, Snapshot
from .typing import Sink

__all__ = ["Batch", "Delivery", "describe"]

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
    __slots__ = (
        "flushed_here",
        "inline",
        "pending",
        "pending_snapshots",
        "scheduled",
        "sending",
        "sink",
        "thread",
        "watch_slices",
    )

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        #: Whether its export runs in the caller's thread (see the module).
        self.inline = _export_never_blocks(sink)
        #: Whether its flush does too (only for a sink whose export does).
        self.flushed_here = self.inline and _flush_never_blocks(sink)
        #: Its ``watch_slices``, if it looks at run slices as they happen.
        watch_slices = getattr(sink, "watch_slices", None)
        self.watch_slices: Callable[[], None] | None = (
            watch_slices if callable(watch_slices) else None
        )
        #: The name of the thread that calls it otherwise.
        self.thread = f"greenprof's thread for {describe(sink)}"
        #: True while one thread or greenlet hands batches over; another
        #: leaves its batch in ``pending`` for that one to send.
        self.sending = False
        #: True while a hand-over waits in the sink's thread: one is enough.
        self.scheduled = False
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
        #: Sink calls that raised or reported failure, and flushes that did
        #: not finish in time.
        self.failures = 0
        #: Snapshots given up because a sink had too many waiting.
        self.given_up = 0
        #: The sinks that look at run slices as they happen (a
        #: ``BlockingMonitor``): sessions mark their buffers for them.
        self.slice_watchers: tuple[object, ...] = ()
        for sink in sinks:
            self.add(sink)
        _deliveries.add(self)

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
                f"{describe(sink)} is not a sink: it has no callable {', '.join(missing)}. "
                "A sink needs export(batch), flush(timeout) and close(); "
                "see greenprof.sinks.Sink."
            )
            raise InvalidSinkError(msg)
        with self._lock:
            if any(state.sink is sink for state in self._states):
                return
        state = _SinkState(sink)  # reads the sink: not under the lock
        with self._lock:
            if any(known.sink is sink for known in self._states):
                return
            for batch in past:
                self._queue(state, batch)
            self._states.append(state)
            self._find_slice_watchers()
        if state.watch_slices is not None:
            state.watch_slices()

    def remove(self, sink: Sink) -> None:
        with self._lock:
            for index, state in enumerate(self._states):
                if state.sink is sink:
                    del self._states[index]
                    self._find_slice_watchers()
                    return
        msg = f"{describe(sink)} was never added to this profiler; nothing to remove."
        raise UnknownSinkError(msg)

    def _find_slice_watchers(self) -> None:
        # Under self._lock.
        self.slice_watchers = tuple(s.sink for s in self._states if s.watch_slices is not None)

    @property
    def sinks(self) -> list[Sink]:
        return [state.sink for state in self._states]

    def __bool__(self) -> bool:
        return bool(self._states)

    # -- handing over -------------------------------------------------------------

    def hand_over(self, batch: Batch, *, send: bool = True) -> bool:
        """Give ``batch`` to every sink (after what each still had waiting),
        without waiting for any to send it; False if one called here failed
        (its batches wait for the next hand-over or flush). With ``send``
        False, only queue it, for the next hand-over or flush."""
        with self._lock:
            states = list(self._states)
            for state in states:
                self._queue(state, batch)
        if not send:
            return True
        ok = True
        interrupt: KeyboardInterrupt | None = None
        for state in states:
            if not state.inline:
                self._schedule(state)
                continue
            try:
                ok = self._send(state, in_caller=True) and ok
            except KeyboardInterrupt as exc:
                ok = False
                interrupt = exc
        if interrupt is not None:
            # Raised again once every sink had its batch: see _send.
            raise interrupt
        return ok

    def flush(self, timeout: float | None) -> bool:
        """Hand over what is waiting, then flush every sink, waiting for
        them ``timeout`` seconds in all (None: as long as they take; 0: not
        at all). False if one failed or is not done.

        Each sink flushes in its own thread, waited for cooperatively, but
        one whose export and flush never block flushes here: with only
        such sinks, or a timeout of 0, this never lets another greenlet run.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        states = list(self._states)
        requests = [
            _FlushRequest(self, state, timeout, deadline)
            for state in states
            if not state.flushed_here
        ]
        for request in requests:
            self._in_sink_thread(request.state, request.run)
        ok = True
        try:
            for state in states:
                if state.flushed_here:
                    ok = self._flush_here(state, _seconds_left(deadline)) and ok
            for request in requests:
                ok = request.wait() and ok
        except BaseException:
            # Thrown into the waiting caller (a kill, a timeout, Ctrl-C): the
            # program's, not a sink's failure. The sinks go on flushing.
            for request in requests:
                request.abandon()
            raise
        return ok

    def _flush_here(self, state: _SinkState, timeout: float | None) -> bool:
        """Hand over what ``state``'s sink has waiting and flush it, in the
        caller (its export and flush never block); False if it failed.
        Failures are handled as in ``_send``, which this calls in place."""
        sent = self._send(state, in_caller=True)
        sink = state.sink
        try:
            flushed = sink.flush(timeout)
        except BaseException as exc:
            self._failed(sink, "flush", exc)
            if isinstance(exc, KeyboardInterrupt):
                raise  # it may be the program's Ctrl-C: see _send
            return False
        if flushed is False:
            self._failed(sink, "flush", "it returned False")
            return False
        return sent

    def _schedule(self, state: _SinkState) -> None:
        with self._lock:
            if state.scheduled:
                return
            state.scheduled = True
        self._in_sink_thread(state, functools.partial(self._send_scheduled, state))

    def _send_scheduled(self, state: _SinkState) -> None:
        # In the sink's thread. Unmarked first: a batch queued from now on
        # schedules another hand-over, which finds it sent or sends it.
        with self._lock:
            state.scheduled = False
        self._send(state, in_caller=False)

    @staticmethod
    def _in_sink_thread(state: _SinkState, job: Callable[[], None]) -> None:
        if not run_in_sink_thread(state.sink, job, name=state.thread):
            job()  # no thread can start while the interpreter exits: here, then

    def _queue(self, state: _SinkState, batch: Batch) -> None:
        # Under self._lock.
        state.pending.append(batch)
        state.pending_snapshots += len(batch.snapshots)
        while state.pending_snapshots > MAX_PENDING and len(state.pending) > 1:
            dropped = state.pending.popleft()
            state.pending_snapshots -= len(dropped.snapshots)
            self.given_up += len(dropped.snapshots)

    def _send(self, state: _SinkState, *, in_caller: bool) -> bool:
        """Hand ``state``'s waiting batches over, oldest first, in one
        ``export`` (and one ``export_sessions``); False if the sink failed.

        Whatever the sink raises is its failure, even ``SystemExit`` or
        ``GreenletExit``: counted, logged once, its batch kept for the next
        hand-over. One exception: a ``KeyboardInterrupt`` in the program's
        own thread (``in_caller``) is raised again, once the other sinks had
        their batch, since there a Ctrl-C may land while a sink runs and
        greenprof cannot tell it from one the sink raised; swallowing it
        would take the program's Ctrl-C away. (A sink's own thread never
        receives Ctrl-C, and an inline export never switches greenlets, so
        no kill or gevent timeout can be thrown into one.)
        """
        sink = state.sink
        with self._lock:
            if state.sending:
                return True
            state.sending = True
        try:
            while True:
                with self._lock:
                    taken = list(state.pending)
                    if not taken:
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
                except BaseException as exc:
                    if action == "export_sessions":  # the snapshots went: not again
                        with self._lock:
                            self._take(state, len(taken))
                            state.pending.appendleft(Batch((), sessions))
                    self._failed(sink, action, exc)
                    if in_caller and isinstance(exc, KeyboardInterrupt):
                        raise
                    return False
                with self._lock:
                    self._take(state, len(taken))
        finally:
            with self._lock:
                state.sending = False

    def _failed(self, sink: object, action: str, problem: BaseException | str) -> None:
        with self._lock:
            self.failures += 1
        _report_sink_failure(sink, action, problem)

    @staticmethod
    def _take(state: _SinkState, count: int) -> None:
        # Under self._lock: the ``count`` oldest batches went.
        for _ in range(count):
            batch = state.pending.popleft()
            state.pending_snapshots -= len(batch.snapshots)

    def _after_fork_in_child(self) -> None:
        # What waited was the parent's to send (it still does), and a lock or
        # a hand-over in flight may have belonged to a thread that is gone.
        self._lock = allocate_real_lock()
        for state in self._states:
            state.pending.clear()
            state.pending_snapshots = 0
            state.sending = state.scheduled = False


class _FlushRequest:
    """One sink's part of a flush: in the sink's thread, hand over what
    waits and call its ``flush``; the caller waits for it until the
    deadline, and a sink still busy then is a failure (but for a timeout of
    0, which asks not to wait)."""

    __slots__ = ("abandoned", "deadline", "delivery", "done", "lock", "ok", "state", "timeout")

    def __init__(
        self,
        delivery: Delivery,
        state: _SinkState,
        timeout: float | None,
        deadline: float | None,
    ) -> None:
        self.delivery = delivery
        self.state = state
        self.timeout = timeout
        self.deadline = deadline
        self.lock = allocate_real_lock()
        self.done = RealEvent()
        self.ok = False
        #: Set when the caller stopped waiting: what the sink does later is
        #: not this flush's result (and not counted twice).
        self.abandoned = False

    def run(self) -> None:
        """In the sink's thread."""
        if self.abandoned:  # the caller gave up before the sink's turn came
            return
        sent = self.delivery._send(self.state, in_caller=False)
        sink = self.state.sink
        problem: BaseException | str | None = None
        try:
            flushed = sink.flush(_seconds_left(self.deadline))
        except BaseException as exc:
            problem = exc
        else:
            if flushed is False:
                problem = "it returned False"
        with self.lock:
            if self.abandoned:
                return
            self.ok = sent and problem is None
            self.done.set()
        if problem is not None:
            self.delivery._failed(sink, "flush", problem)

    def wait(self) -> bool:
        """In the caller: the sink's result, or False once the deadline passed."""
        if self.done.wait(_seconds_left(self.deadline)):
            return self.ok
        with self.lock:
            if self.done.is_set():
                return self.ok
            self.abandoned = True
        if self.timeout != 0:
            self.delivery._failed(
                self.state.sink, "flush", f"it did not finish within {self.timeout:g} s"
            )
        return False

    def abandon(self) -> None:
        with self.lock:
            self.abandoned = True


def _seconds_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a ``time.monotonic()``), at least 0; None for none."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _joined(parts: list[Sequence[Snapshot]]) -> Sequence[Snapshot]:
    return parts[0] if len(parts) == 1 else [s for part in parts for s in part]


def _export_never_blocks(sink: object) -> bool:
    """Whether ``sink`` says its export returns at once (see the module)."""
    try:
        return getattr(sink, "export_never_blocks", False) is True
    except Exception:  # a property that raises: it says nothing
        return False


def _flush_never_blocks(sink: object) -> bool:
    """Whether the class that defines ``sink``'s ``flush`` says, itself,
    that it returns at once (see the module). A subclass that overrides
    ``flush`` inherits no such promise (its flush may well block), nor
    does a sink given a ``flush`` of its own."""
    try:
        if "flush" in getattr(sink, "__dict__", ()):
            return False
        for klass in type(sink).__mro__:
            namespace = vars(klass)
            if "flush" in namespace:
                return namespace.get("flush_never_blocks", False) is True
    except Exception:  # a class that refuses to be read: it says nothing
        return False
    return False


def describe(value: object) -> str:
    """``repr(value)``, or a stand-in when its ``__repr__`` raises: telling
    of a sink's failure must not fail in turn."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__qualname__} object at {id(value):#x}>"


def _problem_text(problem: BaseException | str) -> str:
    if isinstance(problem, str):
        return problem
    try:
        text = str(problem)
    except Exception:
        text = "<its str() raised>"
    return f"{type(problem).__name__}: {text}" if text else type(problem).__name__


# id(sink) -> a weak (or, for sinks that refuse weak references, strong)
# reference to the sink whose first failure was logged. Identity, not
# equality: two equal sinks are two sinks.
_reported_sinks: dict[int, Callable[[], object]] = {}
_reported_lock = allocate_real_lock()


def _report_sink_failure(sink: object, action: str, problem: BaseException | str) -> None:
    """Log a sink's first failure only; later ones are just counted. Never
    raises, whatever the sink's repr() or the exception's str() do."""
    key = id(sink)
    with _reported_lock:
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
    with contextlib.suppress(Exception):  # a logging handler that raises: the count remains
        _logger.error(
            "greenprof: sink %s failed in %s() (%s). Other sinks still receive "
            "every snapshot, the profiler keeps them, and this sink's batch is "
            "retried at the next flush; further failures are only counted in "
            "Profiler.stats.sink_failures.%s",
            describe(sink),
            action,
            _problem_text(problem),
            _traceback_text(problem),
        )


def _traceback_text(problem: BaseException | str) -> str:
    """``problem``'s traceback as text, on lines of its own after the
    message (empty for a plain description).

    Text, not the exception as ``exc_info``: its traceback reaches the
    frames of the program's code that called ``stop()`` or ``flush()``, and
    a handler that keeps records (a buffering one, a test's log capture)
    would keep those frames alive, and everything their locals refer to."""
    if isinstance(problem, str):
        return ""
    try:
        return "\n" + "".join(traceback.format_exception(problem)).rstrip()
    except Exception:
        return ""  # the message goes out without it


def _same(value: object) -> object:
    return value


_deliveries: weakref.WeakSet[Delivery] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for delivery in list(_deliveries):
        delivery._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
