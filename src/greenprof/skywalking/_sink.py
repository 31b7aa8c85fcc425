"""A sink that streams snapshots to a SkyWalking OAP over gRPC.

Snapshots become ``ThreadSnapshot`` messages sent with ``collectSnapshot``
by one background sender through a bounded queue; ``export`` never waits
for the network, and ``flush`` only waits, never sends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final

from .._loop import BackgroundLoop
from .._threads import RealEvent, allocate_real_lock
from .._validate import check_positive_int, check_wait
from ..exceptions import SinkClosedError
from ..snapshot import Frame, Snapshot
from . import _wire as wire
from ._client import SkyWalkingClient, grpc_in_gevent_mode

__all__ = ["SkyWalkingSink"]

_logger = logging.getLogger("greenprof")

#: The agent's ``agent_profile_dump_max_stack_depth`` default.
DEFAULT_MAX_DEPTH: Final = 500
DEFAULT_QUEUE_SIZE: Final = 10_000
#: Messages per ``collectSnapshot`` call.
_BATCH: Final = 500
#: Seconds the sender waits after a failed call: the first time, and at
#: most (each wait drawn between half and all of it; see _Backoff).
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0

#: greenprof's own source files start with this: never sent.
_PACKAGE_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _not_greenprof(frame: Frame) -> bool:
    return not frame.filename.startswith(_PACKAGE_DIR)


class SkyWalkingSink:
    """Sends snapshots to a SkyWalking OAP collector's ``ProfileTask`` service.

    ``task_id`` and ``segment_id`` label every snapshot unless a session was
    bound to its own with :meth:`bind` (one sink can serve many concurrent
    requests). Snapshots with neither are not sent and are counted in
    ``unbound``. Sequences run from 0 without gaps per (task, segment);
    ``time`` is the snapshot's epoch milliseconds; stacks are the agent's
    code signatures, outermost first, capped at ``max_depth``, without
    greenprof's own frames.

    Overflow policy: when ``queue_size`` messages wait (the collector is down
    or slow), new ones are dropped and counted in ``dropped``. A failed call
    is retried, after a wait that doubles with each failure in a row (0.1 s
    to 5 s, with jitter), until it succeeds or the sink is closed; an export
    meanwhile does not cut the wait short. The collector stores snapshots by
    (task, segment, sequence), so a retried message never counts twice.

    What became of every snapshot given to :meth:`export` (once the sink is
    closed and its last call ended, these add up to exactly that number):

    - ``sent``: acknowledged by the collector, that is, in a call that
      succeeded; a message retried after a failed call counts once.
    - ``dropped``: not queued, the queue being full.
    - ``unbound``: not sent, their session having no task and segment.
    - ``lost``: given up by :meth:`close` before any call carried them: the
      collector never got them.
    - ``unconfirmed``: given up by :meth:`close` after a call carrying them
      failed (or was ended by ``close``). A client-streaming call that fails
      does not say how many of its messages the collector had stored, so it
      may have stored some or all of these.

    So the collector holds between ``sent`` and ``sent + unconfirmed`` of
    them, and that plus ``dropped + unbound + lost`` never exceeds what was
    exported. ``failures`` counts failed ``collectSnapshot`` calls.
    """

    #: Its export only encodes and queues: greenprof calls it in the thread
    #: that stops a session.
    export_never_blocks = True

    def __init__(
        self,
        address: str,
        *,
        task_id: str | None = None,
        segment_id: str | None = None,
        service: str | None = None,
        instance: str | None = None,
        authentication: str | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        timeout: float = 10.0,
        secure: bool = False,
    ) -> None:
        check_positive_int("max_depth", max_depth)
        check_positive_int("queue_size", queue_size)
        #: The collector's gRPC calls, shared with a task poller of this sink.
        self.client = SkyWalkingClient(
            address, authentication=authentication, timeout=timeout, secure=secure
        )
        self.address = address
        self.task_id = task_id
        self.segment_id = segment_id
        #: Service and instance names: not part of a snapshot, kept for the
        #: task poller and finish reports that share this sink's settings.
        self.service = service
        self.instance = instance
        self.max_depth = max_depth
        self.queue_size = queue_size
        self.timeout = self.client.timeout
        self._lock = allocate_real_lock()
        self._queue: deque[bytes] = deque()
        self._in_flight = 0
        self._sequences: dict[tuple[str, str], int] = {}
        self._bindings: dict[str, tuple[str, str]] = {}
        self._closing = False
        self._accepting = True
        # Messages at the head of the queue that a failed call carried: if
        # given up, they are ``unconfirmed``, not ``lost``.
        self._tried = 0
        # Events of the flushes waiting for the queue to empty.
        self._drained: list[RealEvent] = []
        self._backoff = _Backoff()
        # No call before this (time.monotonic()): backing off.
        self._retry_at = 0.0
        # With grpc in gevent mode (the SkyWalking agent does that under
        # monkey.patch_all) a streaming call from an OS thread stalls: the
        # sender is then a greenlet of the thread that makes the sink, which
        # is the one running the event loop.
        self._sender: Any = None
        self._loop: BackgroundLoop | None = None
        if grpc_in_gevent_mode():
            import gevent  # type: ignore[import-untyped,unused-ignore]

            self._nudged = False
            self._sender = gevent.spawn(self._run_greenlet)
            _greenlet_senders.add(self)
        else:
            self._loop = BackgroundLoop(
                self._step, name=f"{self!r}'s sender", after_fork=self._after_fork_in_child
            )
        #: Messages the collector acknowledged.
        self.sent = 0
        #: Messages dropped because the queue was full.
        self.dropped = 0
        #: Snapshots not sent: no task and segment for their session.
        self.unbound = 0
        #: Failed ``collectSnapshot`` calls (each retried while the sink is open).
        self.failures = 0
        #: Messages given up by close() before any call carried them.
        self.lost = 0
        #: Messages given up by close() after a failed call carried them: the
        #: collector may have stored them.
        self.unconfirmed = 0

    # -- the Sink protocol ------------------------------------------------------------

    def bind(self, session_id: str, *, task_id: str, segment_id: str) -> None:
        """Send the snapshots of session ``session_id`` under this task and segment."""
        with self._lock:
            self._bindings[session_id] = (task_id, segment_id)

    def unbind(self, session_id: str) -> None:
        """Forget a session's task and segment (and its sequence counter)."""
        with self._lock:
            binding = self._bindings.pop(session_id, None)
            if binding is not None and binding not in self._bindings.values():
                self._sequences.pop(binding, None)

    def export(self, batch: Sequence[Snapshot]) -> None:
        with self._lock:
            if not self._accepting:
                msg = f"{self!r} is closed; create a new sink to send again."
                raise SinkClosedError(msg)
            room = self.queue_size - len(self._queue) - self._in_flight
            kept = self._encode(batch, room)
            self._queue.extend(kept)
        if kept:
            self._nudge()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything exported so far was acknowledged, at most
        ``timeout`` seconds (None: no limit); False if it was not.

        It only waits, on an event the sender sets when the queue empties:
        the sender goes on at its own pace, backing off while the collector
        fails. A greenlet waiting here lets the others of its thread run.
        """
        check_wait("timeout", timeout)
        with self._lock:
            if not self._queue and not self._in_flight:
                return True
            drained = RealEvent()
            self._drained.append(drained)
        try:
            return drained.wait(timeout)
        finally:
            with self._lock:
                if drained in self._drained:
                    self._drained.remove(drained)

    def close(self, timeout: float | None = 5.0) -> None:
        """Send what is queued, retrying until ``timeout``, then stop.

        What the collector has not acknowledged by then is given up, counted
        in ``lost`` or ``unconfirmed`` (see the class), and logged.
        """
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
        self.flush(timeout)
        with self._lock:
            self._closing = True  # from now on a failed call is given up
            tried = min(self._tried, len(self._queue))
            self.unconfirmed += tried
            self.lost += len(self._queue) - tried
            self._tried = 0
            self._queue.clear()
            self._notify_if_drained()
        # Closing the channel ends a call still in flight: the sender counts
        # its messages in ``unconfirmed``.
        self.client.close()
        if self._sender is not None:
            self._nudge()
            self._sender.join(1.0)
        elif self._loop is not None:
            self._loop.stop(1.0)
        lost, unconfirmed = self.lost, self.unconfirmed
        if lost or unconfirmed:
            _logger.warning(
                "greenprof: SkyWalkingSink(%r) closed with %d snapshots the "
                "collector never acknowledged (%d never sent, %d in calls that "
                "failed, which it may have stored in part).",
                self.address,
                lost + unconfirmed,
                lost,
                unconfirmed,
            )

    def __repr__(self) -> str:
        return f"SkyWalkingSink({self.address!r})"

    # -- internals ------------------------------------------------------------------------

    def _encode(self, batch: Iterable[Snapshot], room: int) -> list[bytes]:
        """Messages for ``batch``, at most ``room`` of them (under the lock).

        A dropped snapshot takes no sequence number, so what is sent for a
        (task, segment) still counts 0, 1, 2... without gaps.
        """
        out: list[bytes] = []
        for snapshot in batch:
            task, segment = self._bindings.get(snapshot.session_id, (self.task_id, self.segment_id))
            if not task or not segment:
                self.unbound += 1
                continue
            if len(out) >= room:
                self.dropped += 1
                continue
            key = (task, segment)
            sequence = self._sequences.get(key, 0)
            self._sequences[key] = sequence + 1
            frames = [f for f in snapshot.stack if _not_greenprof(f)][: self.max_depth]
            out.append(
                wire.encode_thread_snapshot(
                    task_id=task,
                    segment_id=segment,
                    time_ms=snapshot.timestamp_ns // 1_000_000,
                    sequence=sequence,
                    signatures=[wire.code_signature(f) for f in frames],
                )
            )
        return out

    def _nudge(self) -> None:
        if self._loop is not None:
            if not self._closing:
                with contextlib.suppress(RuntimeError):  # no thread while the interpreter exits
                    self._loop.start()  # wakes it when it runs
        else:
            self._nudged = True

    def _step(self) -> float | None:
        """Send one batch; how long to wait before the next (None: until nudged).

        While it backs off after a failed call, being woken (by an export)
        sends nothing early: it goes back to waiting out the backoff.
        """
        backing_off = self._retry_at - time.monotonic()
        if backing_off > 0:
            return backing_off
        with self._lock:
            if not self._queue:
                return None
            count = min(_BATCH, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
            self._tried = max(0, self._tried - count)  # the batch is the queue's head
            self._in_flight = count
        try:
            self.client.collect(batch)
        except Exception:  # RpcError, or a channel closed under us
            with self._lock:
                self.failures += 1
                self._in_flight = 0
                if self._closing:
                    self.unconfirmed += count
                else:
                    self._queue.extendleft(reversed(batch))
                    self._tried += count
                self._notify_if_drained()
            wait = self._backoff.next()
            self._retry_at = time.monotonic() + wait
            return wait
        with self._lock:
            self.sent += count
            self._in_flight = 0
            self._notify_if_drained()
        self._backoff.reset()
        self._retry_at = 0.0
        return 0.0

    def _notify_if_drained(self) -> None:
        # Under the lock: wake the flushes once nothing is queued or in flight.
        if not self._queue and not self._in_flight:
            for drained in self._drained:
                drained.set()
            self._drained.clear()

    def _after_fork_in_child(self) -> None:
        # The parent sends what it had queued and in flight; the child sends
        # only its own (its sender comes back with the BackgroundLoop, its
        # channel with the client). The lock may have been held by the
        # parent's sender, which did not survive the fork.
        self._lock = allocate_real_lock()
        self._queue.clear()
        self._in_flight = 0
        self._tried = 0
        self._drained = []  # their flushes wait in the parent
        self._backoff = _Backoff()
        self._retry_at = 0.0
        self.sent = self.dropped = self.unbound = self.failures = self.lost = 0
        self.unconfirmed = 0

    def _run_greenlet(self) -> None:
        # The sender as a greenlet (grpc in gevent mode): an export from another
        # OS thread cannot wake it, so it looks every 20 ms while idle.
        import gevent  # type: ignore[import-untyped,unused-ignore]

        while True:
            with self._lock:
                if self._closing and not self._queue:
                    return
            wait = self._step()
            deadline = time.monotonic() + (0.5 if wait is None else wait)
            while not self._nudged and time.monotonic() < deadline:
                gevent.sleep(0.02)
            self._nudged = False


# Sinks whose sender is a greenlet (it cannot run before the forked child's
# hub does, so it needs no loop to reset it first).
_greenlet_senders: weakref.WeakSet[SkyWalkingSink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sink in list(_greenlet_senders):
        sink._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Backoff:
    """How long the sender waits after each failed call in a row: the
    ceiling doubles from ``_BACKOFF_MIN`` to ``_BACKOFF_MAX``, and each wait
    is drawn between half the ceiling and all of it, so that the many
    processes that lost one collector do not all call it again together."""

    def __init__(self) -> None:
        self._random = random.Random()  # seeded from the OS: differs per process
        self._ceiling = _BACKOFF_MIN

    def next(self) -> float:
        ceiling = self._ceiling
        self._ceiling = min(ceiling * 2, _BACKOFF_MAX)
        return self._random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._ceiling = _BACKOFF_MIN
