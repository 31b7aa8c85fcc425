"""A SkyWalking OAP stand-in for tests: a real gRPC server on 127.0.0.1.

It implements the ``skywalking.v3.ProfileTask`` service with greenprof's own
wire code and keeps what it receives.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Any

import grpc

from greenprof.skywalking import _wire as wire


class FakeOAP:
    """``abort_after``: each ``collectSnapshot`` call stores that many
    messages and then aborts (the first ``aborted_calls`` calls, or all of
    them if None); ``calls`` counts the calls."""

    def __init__(
        self,
        port: int = 0,
        *,
        delay: float = 0.0,
        abort_after: int | None = None,
        aborted_calls: int | None = None,
    ) -> None:
        self.snapshots: list[wire.ThreadSnapshotMessage] = []
        self.calls = 0
        self.abort_after = abort_after
        self.aborted_calls = aborted_calls
        self.queries: list[tuple[str, str, int]] = []
        self.finished: list[tuple[str, str, str]] = []
        self.metadata: list[dict[str, str]] = []
        self.commands: list[wire.Command] = []
        #: Raw ``SegmentObject`` messages an agent reported.
        self.segments: list[bytes] = []
        self.delay = delay
        #: Bytes getProfileTaskCommands answers with instead of ``commands``
        #: (a collector that answers nonsense); None: the commands.
        self.answer: bytes | None = None
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "collectSnapshot": grpc.stream_unary_rpc_method_handler(self._collect),
            "getProfileTaskCommands": grpc.unary_unary_rpc_method_handler(self._commands),
            "reportTaskFinish": grpc.unary_unary_rpc_method_handler(self._finish),
        }
        empty = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler("skywalking.v3.ProfileTask", handlers),
                grpc.method_handlers_generic_handler(
                    "skywalking.v3.TraceSegmentReportService",
                    {"collect": grpc.stream_unary_rpc_method_handler(self._segments)},
                ),
                grpc.method_handlers_generic_handler(
                    "skywalking.v3.ManagementService",
                    {"reportInstanceProperties": empty, "keepAlive": empty},
                ),
            )
        )
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> FakeOAP:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait()

    def __enter__(self) -> FakeOAP:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _collect(self, requests: Any, context: grpc.ServicerContext) -> bytes:
        self.metadata.append(dict(context.invocation_metadata()))
        with self._lock:
            self.calls += 1
            aborts = self.abort_after is not None and (
                self.aborted_calls is None or self.calls <= self.aborted_calls
            )
        for stored, request in enumerate(requests):
            if aborts and stored == self.abort_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "collector going down")
            if self.delay:
                time.sleep(self.delay)
            message = wire.decode_thread_snapshot(request)
            with self._lock:
                self.snapshots.append(message)
        return b""

    def _segments(self, requests: Any, context: grpc.ServicerContext) -> bytes:
        for request in requests:
            with self._lock:
                self.segments.append(request)
        return b""

    def _commands(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.queries.append(wire.decode_command_query(request))
            if self.answer is not None:
                return self.answer
            commands, self.commands = self.commands, []
        return wire.encode_commands(commands)

    def _finish(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.finished.append(wire.decode_finish_report(request))
        return b""

    def unique(self) -> dict[tuple[str, str, int], wire.ThreadSnapshotMessage]:
        """What the OAP stores: the last message per (task, segment, sequence)."""
        with self._lock:
            return {(m.task_id, m.segment_id, m.sequence): m for m in self.snapshots}


def task_command(
    *,
    serial: str,
    task_id: str,
    endpoint: str,
    start_ms: int,
    duration_min: int = 1,
    max_sampling_count: int = 50,
) -> wire.Command:
    return wire.Command(
        "ProfileTaskQuery",
        {
            "SerialNumber": serial,
            "TaskId": task_id,
            "EndpointName": endpoint,
            "Duration": str(duration_min),
            "MinDurationThreshold": "10",
            "DumpPeriod": "10",
            "MaxSamplingCount": str(max_sampling_count),
            "StartTime": str(start_ms),
            "CreateTime": str(start_ms - 5),
        },
    )
