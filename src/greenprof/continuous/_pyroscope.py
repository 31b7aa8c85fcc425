"""``PyroscopeExporter``: each interval pushed to Pyroscope's ``POST /ingest``
(pprof format), per endpoint, from a sender thread of its own that retries
with backoff; a bounded queue, and what it had to drop counted."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import reprlib
import urllib.parse
from collections import deque
from typing import Final

from .._loop import BackgroundLoop
from .._threads import RealEvent, allocate_real_lock
from .._validate import check_positive_int, check_tags, check_wait, is_number
from ..exceptions import ConfigurationError
from ._encode import interval_pprof
from ._http import post
from ._interval import Endpoint, Interval

__all__ = ["PyroscopeExporter"]

_logger = logging.getLogger("greenprof")

#: Seconds between retries: doubled after each failure, from the first to the last.
FIRST_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 30.0

#: How Pyroscope names each sample type's series: ``APP.on_cpu{...}``.
SAMPLE_TYPE_CONFIG: Final = {
    "on_cpu": {"display-name": "on_cpu", "aggregation": "sum", "sampled": False},
    "off_cpu": {"display-name": "off_cpu", "aggregation": "sum", "sampled": False},
    "snapshots": {"display-name": "snapshots", "aggregation": "sum", "sampled": False},
}

#: What a label name or value may hold in Pyroscope's ``name{key=value}``.
_UNSAFE_KEY: Final = re.compile(r"[^A-Za-z0-9_.]")
_UNSAFE_VALUE: Final = re.compile(r"[{},=\s]")


class _Upload:
    """One endpoint of one interval: one ``POST /ingest``."""

    __slots__ = ("endpoint", "interval")

    def __init__(self, interval: Interval, endpoint: Endpoint) -> None:
        self.interval = interval
        self.endpoint = endpoint


class PyroscopeExporter:
    """Pushes each interval to a Pyroscope server at ``url``.

    One ``POST {url}/ingest?name=APP{labels}&from=&until=&format=pprof``
    per endpoint of the interval, the pprof in the multipart field
    ``profile`` with a ``sample_type_config`` that names the series
    ``APP.on_cpu``, ``APP.off_cpu`` and ``APP.snapshots``; labels are the
    profiler's tags, this exporter's ``tags``, ``method`` and ``path``.

    ``publish`` only queues: a sender thread of its own posts, retrying a
    failed post (no answer, 429 or 5xx) with a backoff from 0.5 s to 30 s.
    At most ``max_queued`` intervals wait; past that the oldest is dropped
    and counted (:attr:`dropped_intervals`). An upload the server refuses
    (another 4xx) is not retried: counted in :attr:`rejected`, logged once.
    """

    def __init__(
        self,
        url: str,
        app_name: str,
        *,
        tags: dict[str, str] | None = None,
        auth_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        tenant_id: str | None = None,
        timeout: float = 10.0,
        max_queued: int = 10,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            msg = (
                "url is the Pyroscope server's address, such as 'http://pyroscope:4040', "
                f"not {reprlib.repr(url)}."
            )
            raise ConfigurationError(msg)
        if not isinstance(app_name, str) or not app_name or _UNSAFE_VALUE.search(app_name):
            msg = (
                "app_name names the application's series ('checkout-service' gives "
                f"checkout-service.on_cpu): a string without spaces or {{}},=, not {app_name!r}."
            )
            raise ConfigurationError(msg)
        if not is_number(timeout) or not 0 < timeout < math.inf:
            msg = f"timeout is the seconds one upload may take: a number > 0, not {timeout!r}."
            raise ConfigurationError(msg)
        check_positive_int("max_queued", max_queued)
        self.url = url.rstrip("/")
        self.app_name = app_name
        self.tags = check_tags(tags)
        self.timeout = float(timeout)
        self.max_queued = max_queued
        self._ca_file = None if ca_file is None else os.fspath(ca_file)
        self._headers = {}
        if auth_token is not None:
            self._headers["Authorization"] = f"Bearer {auth_token}"
        if basic_auth is not None:
            user, password = basic_auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        if tenant_id is not None:
            self._headers["X-Scope-OrgID"] = tenant_id
        self._lock = allocate_real_lock()
        # Intervals waiting, oldest first, each as the uploads it has left.
        self._queue: deque[deque[_Upload]] = deque()
        self._waiters: list[RealEvent] = []
        self._backoff = 0.0
        self._logged: set[str] = set()
        #: Uploads the server took; posts that failed (and were retried);
        #: uploads it refused; intervals dropped from a full queue.
        self.sent = 0
        self.failures = 0
        self.rejected = 0
        self.dropped_intervals = 0
        self._loop = BackgroundLoop(
            self._step, name="greenprof's Pyroscope sender", after_fork=self._after_fork
        )
        self._closed = False

    @property
    def queued(self) -> int:
        """Intervals waiting to be sent (one being sent included)."""
        return len(self._queue)

    def publish(self, interval: Interval) -> None:
        uploads = deque(_Upload(interval, endpoint) for endpoint in interval.stacks)
        if not uploads or self._closed:
            return
        with self._lock:
            self._queue.append(uploads)
            while len(self._queue) > self.max_queued:
                self._queue.popleft()
                self.dropped_intervals += 1
        self._loop.start()  # starts it the first time (in this process), wakes it after

    def flush(self, timeout: float | None = None) -> bool:
        """Send now what waits (a backoff is cut short), waiting at most
        ``timeout`` seconds; False if some is still waiting."""
        check_wait("timeout", timeout)
        with self._lock:
            if not self._queue:
                return True
            done = RealEvent()
            self._waiters.append(done)
        self._loop.start()
        done.wait(timeout)
        with self._lock:
            if done in self._waiters:
                self._waiters.remove(done)
            return not self._queue

    def close(self) -> None:
        """Stop the sender; what was not sent is dropped (``flush`` first)."""
        self._closed = True
        self._loop.stop()

    # -- the sender thread ---------------------------------------------------------

    def _step(self) -> float | None:
        with self._lock:
            if not self._queue:
                for waiter in self._waiters:
                    waiter.set()
                self._waiters.clear()
                return None
            upload = self._queue[0][0]
        outcome = self._send(upload)
        with self._lock:
            if (
                outcome != "retry"
                and self._queue
                and self._queue[0]
                and self._queue[0][0] is upload
            ):
                self._queue[0].popleft()
                if not self._queue[0]:
                    self._queue.popleft()
        if outcome == "retry":
            self._backoff = min(MAX_BACKOFF, self._backoff * 2 or FIRST_BACKOFF)
            return self._backoff
        self._backoff = 0.0
        return 0.0

    def _send(self, upload: _Upload) -> str:
        """``"sent"``, ``"rejected"`` or ``"retry"``."""
        interval, endpoint = upload.interval, upload.endpoint
        query = urllib.parse.urlencode(
            {
                "name": self._series_name(interval, endpoint),
                "from": interval.start_ns // 1_000_000_000,
                "until": -(-interval.end_ns // 1_000_000_000),
                "format": "pprof",
                "spyName": "greenprof",
            }
        )
        boundary = "greenprof-" + os.urandom(8).hex()
        body = _multipart(
            boundary,
            [
                ("profile", "profile.pb.gz", interval_pprof(interval, endpoints=[endpoint])),
                ("sample_type_config", "config.json", json.dumps(SAMPLE_TYPE_CONFIG).encode()),
            ],
        )
        headers = {**self._headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
        try:
            answer = post(
                f"{self.url}/ingest?{query}",
                body,
                headers=headers,
                timeout=self.timeout,
                ca_file=self._ca_file,
            )
        except OSError as exc:
            self.failures += 1
            self._log_once("unreachable", f"cannot reach {self.url} ({exc}); retrying")
            return "retry"
        if 200 <= answer.status < 300:
            self.sent += 1
            return "sent"
        if answer.status == 429 or answer.status >= 500:
            self.failures += 1
            self._log_once("busy", f"{self.url} answered {answer.status}; retrying")
            return "retry"
        self.rejected += 1
        text = answer.body[:200].decode("utf-8", "replace")
        self._log_once("rejected", f"{self.url} refused an upload ({answer.status}: {text})")
        return "rejected"

    def _series_name(self, interval: Interval, endpoint: Endpoint) -> str:
        labels = {**interval.tags, **self.tags, "method": endpoint.method, "path": endpoint.path}
        inside = ",".join(
            f"{_UNSAFE_KEY.sub('_', key)}={_UNSAFE_VALUE.sub('_', value)}"
            for key, value in sorted(labels.items())
            if value
        )
        return f"{self.app_name}{{{inside}}}"

    def _log_once(self, kind: str, message: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            _logger.warning("greenprof: Pyroscope exporter: %s", message)

    def _after_fork(self) -> None:
        # The parent sends what it queued; a child sends its own.
        self._lock = allocate_real_lock()
        self._queue.clear()
        self._waiters = []
        self._backoff = 0.0

    def __repr__(self) -> str:
        return f"PyroscopeExporter({self.url!r}, {self.app_name!r})"


def _multipart(boundary: str, files: list[tuple[str, str, bytes]]) -> bytes:
    parts = []
    for field, filename, data in files:
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()
