"""``PprofEndpoint``: the latest interval over HTTP, for Grafana Alloy's
``pyroscope.scrape`` or ``go tool pprof http://...``."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Final

from .._loop import BackgroundLoop
from .._validate import is_number
from ..exceptions import ConfigurationError
from ..exporters._common import Weight
from ._encode import interval_pprof
from ._http import read_request, real_socket, respond
from ._interval import Interval

__all__ = ["PATHS", "PprofEndpoint"]

#: What each path serves: the latest interval, this weight the default sample type.
PATHS: Final[dict[str, Weight]] = {
    "/debug/pprof/profile": "on_cpu",
    "/debug/pprof/greenlet_off_cpu": "off_cpu",
}
#: Seconds a client may take to send its request.
_CLIENT_TIMEOUT: Final = 5.0
#: Seconds the accept loop waits for a client before it checks for stop().
_ACCEPT_WAIT: Final = 0.2


class PprofEndpoint:
    """Serves the latest interval as gzipped pprof: ``GET
    /debug/pprof/profile`` (on-CPU first) and ``GET
    /debug/pprof/greenlet_off_cpu`` (off-CPU first); both carry on-CPU,
    off-CPU and snapshots per endpoint and stack, labelled ``method`` and
    ``path``. Before the first interval closes, an empty profile.

    It listens on ``host:port`` (127.0.0.1 unless told otherwise; port 0
    picks a free one, see :attr:`port`) from the moment it is made, in a
    real OS thread of its own; ``close()`` stops it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not isinstance(host, str) or not host:
            msg = f"host must be an address to listen on, such as '127.0.0.1', not {host!r}."
            raise ConfigurationError(msg)
        if not is_number(port) or not isinstance(port, int) or not 0 <= port < 65536:
            msg = f"port must be a whole number from 0 (any free port) to 65535, not {port!r}."
            raise ConfigurationError(msg)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = real_socket(family)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(16)
        except OSError as exc:
            listener.close()
            msg = f"PprofEndpoint cannot listen on {host}:{port}: {exc}"
            raise ConfigurationError(msg) from exc
        listener.settimeout(_ACCEPT_WAIT)
        self._listener = listener
        self.host = host
        #: The port it listens on.
        self.port: int = listener.getsockname()[1]
        now = time.time_ns()
        #: The latest interval and its encodings, by weight, made on first request.
        self._latest: tuple[Interval, dict[str, bytes]] = (Interval(now, now, {}, {}), {})
        #: Requests answered, and connections that failed.
        self.served = 0
        self.failed = 0
        self._loop = BackgroundLoop(self._accept, name=f"greenprof's pprof endpoint :{self.port}")
        self._loop.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/debug/pprof/profile"

    def publish(self, interval: Interval) -> None:
        # One assignment: the server thread sees the old pair or the new one.
        self._latest = (interval, {})

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        self._loop.stop()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> float:
        try:
            client, _ = self._listener.accept()
        except TimeoutError:
            return 0.0
        except OSError:  # closed
            return 1.0
        try:
            client.settimeout(_CLIENT_TIMEOUT)
            self._answer(client)
            self.served += 1
        except OSError:
            self.failed += 1
        finally:
            client.close()
        return 0.0

    def _answer(self, client: socket.socket) -> None:
        method, path, _ = read_request(client)
        weight = PATHS.get(path)
        if weight is None or method != "GET":
            body = f"greenprof serves {', '.join(PATHS)}\n".encode()
            respond(client, "404 Not Found", body, "text/plain; charset=utf-8")
            return
        interval, encoded = self._latest
        data = encoded.get(weight)
        if data is None:
            data = encoded[weight] = interval_pprof(interval, weight=weight)
        respond(client, "200 OK", data, "application/octet-stream")

    def __repr__(self) -> str:
        return f"PprofEndpoint({self.host!r}, {self.port})"
