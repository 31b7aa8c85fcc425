"""A sink that streams snapshots to a SkyWalking OAP over gRPC.

Snapshots become ``ThreadSnapshot`` messages sent with ``collectSnapshot``
by one background sender through a bounded queue; ``export`` never waits
for the network.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final

import greenlet

from .._loop import BackgroundLoop
from .._threads import allocate_real_lock, real_sleep
from .._validate import check_positive_int, is_number
from ..exceptions import ConfigurationError, SinkClosedError
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
    or slow), new ones are dropped and counted in ``dropped``. A failed send
    is retried, with backoff, until it succeeds or the sink is closed; the
    collector stores snapshots by (task, segment, sequence), so a retried
    message never counts twice.
    """

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
        self._backoff = _BACKOFF_MIN
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
        #: Failed ``collectSnapshot`` calls (each retried).
        self.failures = 0
        #: Messages given up when the sink closed before the collector took them.
        self.lost = 0

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
        """Wait until everything exported so far was acknowledged (or
        ``timeout`` seconds): the sender goes on at its own pace, backing off
        while the collector fails; a greenlet waiting here lets the others run."""
        if timeout is not None and (not is_number(timeout) or math.isnan(timeout)):
            msg = f"timeout is seconds (or None), not {timeout!r}."
            raise ConfigurationError(msg)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._queue and not self._in_flight:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            _pause(0.01)

    def close(self, timeout: float | None = 5.0) -> None:
        """Send what is queued, retrying until ``timeout``, then stop.

        What the collector has not acknowledged by then is counted in
        ``lost`` and logged.
        """
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
        self.flush(timeout)
        with self._lock:
            self._closing = True  # from now on a failed send is given up
            self.lost += len(self._queue)
            self._queue.clear()
        # Closing the channel ends a call still in flight: the sender counts
        # its messages in ``lost``.
        self.client.close()
        if self._sender is not None:
            self._nudge()
            self._sender.join(1.0)
        elif self._loop is not None:
            self._loop.stop(1.0)
        lost = self.lost
        if lost:
            _logger.warning(
                "greenprof: SkyWalkingSink(%r) closed with %d snapshots the "
                "collector never acknowledged.",
                self.address,
                lost,
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
                self._loop.start()  # wakes it when it runs
        else:
            self._nudged = True

    def _step(self) -> float | None:
        """Send one batch; how long to wait before the next (None: until nudged)."""
        with self._lock:
            if not self._queue:
                return None
            batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            self._in_flight = len(batch)
        try:
            self.client.collect(batch)
        except Exception:  # RpcError, or a channel closed under us
            with self._lock:
                self.failures += 1
                self._in_flight = 0
                if self._closing:
                    self.lost += len(batch)
                else:
                    self._queue.extendleft(reversed(batch))
            wait, self._backoff = self._backoff, min(self._backoff * 2, _BACKOFF_MAX)
            return wait
        with self._lock:
            self.sent += len(batch)
            self._in_flight = 0
        self._backoff = _BACKOFF_MIN
        return 0.0

    def _after_fork_in_child(self) -> None:
        # The parent sends what it had queued and in flight; the child sends
        # only its own (its sender comes back with the BackgroundLoop, its
        # channel with the client). The lock may have been held by the
        # parent's sender, which did not survive the fork.
        self._lock = allocate_real_lock()
        self._queue.clear()
        self._in_flight = 0
        self._backoff = _BACKOFF_MIN
        self.sent = self.dropped = self.unbound = self.failures = self.lost = 0

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


def _pause(seconds: float) -> None:
    """Sleep, letting the other greenlets of this thread run if it has a hub."""
    hub_local = sys.modules.get("gevent._hub_local")
    hub = hub_local.get_hub_if_exists() if hub_local is not None else None
    if hub is not None and greenlet.getcurrent() is not hub:
        import gevent  # type: ignore[import-untyped,unused-ignore]

        gevent.sleep(seconds)
    else:
        real_sleep(seconds)
