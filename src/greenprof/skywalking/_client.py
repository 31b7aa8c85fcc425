"""The gRPC calls greenprof makes to a SkyWalking OAP's ``ProfileTask`` service.

grpc is an optional dependency (``greenprof[skywalking]``): it is imported
when a client is made, and its absence is a clear error then.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

from .._validate import is_number
from ..exceptions import ConfigurationError, MissingDependencyError
from . import _wire as wire

__all__ = ["SkyWalkingClient", "grpc_in_gevent_mode"]


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


def grpc_in_gevent_mode() -> bool:
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


def check_address(address: object) -> str:
    """``address`` if it is ``host:port``, else ConfigurationError."""
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        msg = (
            "address must be 'host:port' of the OAP's gRPC endpoint, with a port "
            f"from 1 to 65535 (11800 by default), not {address!r}."
        )
        raise ConfigurationError(msg)
    return address  # type: ignore[return-value]


def check_timeout(timeout: object) -> float:
    """``timeout`` if it is a finite number of seconds > 0, else ConfigurationError."""
    if not is_number(timeout) or not timeout > 0 or math.isinf(timeout):
        msg = (
            "timeout is the seconds a call to the collector may take: a finite "
            f"number > 0, not {timeout!r}."
        )
        raise ConfigurationError(msg)
    return float(timeout)


class SkyWalkingClient:
    """One channel to a collector, and its three calls."""

    def __init__(
        self,
        address: str,
        *,
        authentication: str | None = None,
        timeout: float = 10.0,
        secure: bool = False,
    ) -> None:
        grpc = _import_grpc()
        self.address = check_address(address)
        #: Seconds each call may take.
        self.timeout = check_timeout(timeout)
        #: What a failed call raises.
        self.RpcError: type[Exception] = grpc.RpcError
        self._metadata = (("authentication", authentication),) if authentication else ()
        self._secure = secure
        self._pid = -1
        # Channels a forked child inherited: kept, never closed or used, so
        # the child does not tear down what its parent still uses.
        self._inherited: list[Any] = []
        self._open()

    def _open(self) -> None:
        grpc = _import_grpc()
        self._pid = os.getpid()
        self._channel = (
            grpc.secure_channel(self.address, grpc.ssl_channel_credentials())
            if self._secure
            else grpc.insecure_channel(self.address)
        )
        calls = {"request_serializer": _identity, "response_deserializer": _identity}
        self._collect = self._channel.stream_unary(wire.COLLECT_SNAPSHOT, **calls)
        self._query = self._channel.unary_unary(wire.GET_PROFILE_TASK_COMMANDS, **calls)
        self._finish = self._channel.unary_unary(wire.REPORT_TASK_FINISH, **calls)

    def _in_this_process(self) -> None:
        """A forked child opens a channel of its own: one made before the
        fork belongs to the parent's gRPC threads, which the child lacks."""
        if self._pid != os.getpid():
            self._inherited.append(self._channel)
            self._open()

    def collect(self, messages: Iterable[bytes]) -> None:
        """``collectSnapshot``: encoded ``ThreadSnapshot`` messages."""
        self._in_this_process()
        # A list, not a generator: grpc consumes it at once.
        self._collect(iter(list(messages)), timeout=self.timeout, metadata=self._metadata)

    def task_commands(self, *, service: str, instance: str, last_command_time: int) -> bytes:
        """``getProfileTaskCommands``: the encoded ``Commands``."""
        query = wire.encode_command_query(
            service=service, instance=instance, last_command_time=last_command_time
        )
        self._in_this_process()
        answer: bytes = self._query(query, timeout=self.timeout, metadata=self._metadata)
        return answer

    def report_finish(self, *, service: str, instance: str, task_id: str) -> None:
        """``reportTaskFinish``."""
        report = wire.encode_finish_report(service=service, instance=instance, task_id=task_id)
        self._in_this_process()
        self._finish(report, timeout=self.timeout, metadata=self._metadata)

    def close(self) -> None:
        if self._pid == os.getpid():
            self._channel.close()
