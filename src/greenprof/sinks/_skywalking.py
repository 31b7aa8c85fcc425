"""A sink that streams snapshots to a SkyWalking OAP over gRPC.

Snapshots become ``ThreadSnapshot`` messages sent with ``collectSnapshot``
by one background OS thread through a bounded queue; export never blocks on
the network.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final

from .. import _skywalking_wire as wire
from .._threads import Waker, allocate_real_lock, original
from .._validate import check_positive_int
from ..exceptions import ConfigurationError, MissingDependencyError, SinkClosedError
from ..snapshot import Frame, Snapshot

_logger = logging.getLogger("greenprof")

#: The agent's ``agent_profile_dump_max_stack_depth`` default.
DEFAULT_MAX_DEPTH: Final = 500
DEFAULT_QUEUE_SIZE: Final = 10_000
#: Messages per ``collectSnapshot`` call.
_BATCH: Final = 500
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0

_PACKAGE_DIR = __file__.rsplit("/sinks/", 1)[0] + "/"


def _import_grpc() -> Any:
    try:
        import grpc  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        msg = (
            "SkyWalkingSink needs grpcio, which greenprof installs only as an "
            "extra: pip install 'greenprof[skywalking]'."
        )
        raise MissingDependencyError(msg) from None
    return grpc


def _grpc_in_gevent_mode() -> bool:
    """Whether grpc was switched to gevent (the SkyWalking agent does that
    under ``monkey.patch_all``): then a client-streaming call from a real OS
    thread stalls, and the sender must be a greenlet."""
    try:
        from grpc._cython import cygrpc  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - grpc without its core
        return False
    return bool(getattr(cygrpc, "g_gevent_activated", False))


def _identity(data: bytes) -> bytes:
    return data


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
        grpc = _import_grpc()
        if not isinstance(address, str) or ":" not in address:
            msg = (
                "address must be 'host:port' of the OAP's gRPC endpoint "
                f"(port 11800 by default), not {address!r}."
            )
            raise ConfigurationError(msg)
        check_positive_int("max_depth", max_depth)
        check_positive_int("queue_size", queue_size)
        self.address = address
        self.task_id = task_id
        self.segment_id = segment_id
        #: Service and instance names: not part of a snapshot, kept for the
        #: task poller and finish reports that share this sink's settings.
        self.service = service
        self.instance = instance
        self.max_depth = max_depth
        self.queue_size = queue_size
        self.timeout = timeout
        self._metadata = (("authentication", authentication),) if authentication else ()
        self._grpc = grpc
        self._channel = (
            grpc.secure_channel(address, grpc.ssl_channel_credentials())
            if secure
            else grpc.insecure_channel(address)
        )
        self._collect = self._channel.stream_unary(
            wire.COLLECT_SNAPSHOT,
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        self._lock = allocate_real_lock()
        self._wake = Waker()
        self._queue: deque[bytes] = deque()
        self._in_flight = 0
        self._sequences: dict[tuple[str, str], int] = {}
        self._bindings: dict[str, tuple[str, str]] = {}
        self._thread_started = False
        self._closing = False
        self._closed = False
        self._exited = allocate_real_lock()
        self._nudged = False
        self._accepting = True
        # With grpc in gevent mode (the SkyWalking agent does that under
        # monkey.patch_all) a streaming call from an OS thread stalls: the
        # sender is then a greenlet of the thread that makes the sink, which
        # is the one running the event loop.
        self._sender: Any = None
        if _grpc_in_gevent_mode():
            import gevent  # type: ignore[import-untyped,unused-ignore]

            self._thread_started = True
            self._sender = gevent.spawn(self._run)
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
            start = not self._thread_started and bool(kept)
            if start:
                self._thread_started = True
                self._exited.acquire()
        if start:
            original("start_new_thread")(self._run, ())
        self._nudge()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything exported so far was acknowledged (or ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._queue and not self._in_flight:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._nudge()
            self._pause(0.005)

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
            started = self._thread_started
        self._nudge()
        # A call still in flight ends within ``timeout``; if it fails, the
        # sender counts its messages in ``lost``.
        patience = max(self.timeout, 1.0) + 1.0
        if self._sender is not None:
            self._sender.join(patience)
        elif started and self._exited.acquire(True, patience):
            self._exited.release()
        self._channel.close()
        self._closed = True
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
        self._nudged = True
        self._wake.wake()

    def _pause(self, seconds: float) -> None:
        if self._sender is None:
            time.sleep(seconds)  # gevent's when patched: cooperative either way
        else:
            import gevent  # type: ignore[import-untyped,unused-ignore]

            gevent.sleep(seconds)

    def _wait(self, timeout: float) -> None:
        """Sleep until nudged or ``timeout``; cooperatively for a greenlet sender."""
        if self._sender is None:
            self._wake.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        # An export from another OS thread cannot wake a greenlet: poll.
        while not self._nudged and time.monotonic() < deadline:
            self._pause(0.02)
        self._nudged = False

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        if self._closing:
                            return
                        batch: list[bytes] = []
                    else:
                        batch = [
                            self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))
                        ]
                        self._in_flight = len(batch)
                if not batch:
                    self._wait(0.5)
                    continue
                try:
                    # A list, not a generator: grpc consumes it at once.
                    self._collect(iter(batch), timeout=self.timeout, metadata=self._metadata)
                except Exception:  # RpcError, or a channel closed under us
                    with self._lock:
                        self.failures += 1
                        self._in_flight = 0
                        if self._closing:
                            self.lost += len(batch)
                        else:
                            self._queue.extendleft(reversed(batch))
                    self._wait(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    continue
                with self._lock:
                    self.sent += len(batch)
                    self._in_flight = 0
                backoff = _BACKOFF_MIN
        finally:
            if self._sender is None:
                self._exited.release()
