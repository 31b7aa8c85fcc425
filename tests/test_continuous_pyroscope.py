"""PyroscopeExporter against a local server implementing Pyroscope's
documented ``POST /ingest`` (pprof format, multipart with ``profile`` and
``sample_type_config``), which decodes every upload with profile.proto."""

from __future__ import annotations

import email.parser
import email.policy
import http.server
import json
import logging
import math
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest

from greenprof import Frame
from greenprof.continuous import ContinuousProfiler, Endpoint, Interval, PyroscopeExporter
from greenprof.continuous._interval import IntervalTable
from greenprof.exceptions import ConfigurationError

from .conftest import free_port
from .profile_proto import LabelledProfile, decode_labelled
from .workloads import slow_shop

MS = 1_000_000
SEARCH = Endpoint("GET", "/search")


@attrs.frozen
class Upload:
    app: str
    labels: dict[str, str]
    start: int
    until: int
    query: dict[str, str]
    headers: dict[str, str]
    profile: LabelledProfile
    config: dict[str, Any]


def parse_name(name: str) -> tuple[str, dict[str, str]]:
    """``app{k=v,...}`` -> ``("app", {"k": "v"})``."""
    app, _, rest = name.partition("{")
    assert rest.endswith("}")
    pairs = [tuple(pair.split("=", 1)) for pair in rest[:-1].split(",") if pair]
    return app, dict(pairs)


class IngestServer:
    """Pyroscope's ``/ingest`` on 127.0.0.1, in a thread of the test."""

    def __init__(self, profile_pb2: ModuleType, port: int = 0, tls: ssl.SSLContext | None = None):
        self.profile_pb2 = profile_pb2
        self.uploads: list[Upload] = []
        self.posts = 0
        #: Status codes to answer the next posts with (then 200).
        self.answers: list[int] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server.posts += 1
                status = server.answers.pop(0) if server.answers else 200
                if status == 200:
                    server.take(self)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def take(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        target = urllib.parse.urlsplit(handler.path)
        assert target.path == "/ingest"
        query = dict(urllib.parse.parse_qsl(target.query))
        assert query["format"] == "pprof"
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        head = f"Content-Type: {handler.headers['Content-Type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        assert message.get_content_type() == "multipart/form-data"
        fields = {
            part.get_param("name", header="content-disposition"): part
            for part in message.iter_parts()
        }  # type: ignore[attr-defined]
        assert set(fields) == {"profile", "sample_type_config"}
        app, labels = parse_name(query["name"])
        self.uploads.append(
            Upload(
                app=app,
                labels=labels,
                start=int(query["from"]),
                until=int(query["until"]),
                query=query,
                headers=dict(handler.headers),
                profile=decode_labelled(self.profile_pb2, fields["profile"].get_content()),
                config=json.loads(fields["sample_type_config"].get_content()),
            )
        )

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(profile_pb2: ModuleType) -> Iterator[IngestServer]:
    server = IngestServer(profile_pb2)
    yield server
    server.stop()


@pytest.fixture
def exporters() -> Iterator[list[PyroscopeExporter]]:
    made: list[PyroscopeExporter] = []
    yield made
    for exporter in made:
        exporter.close()


def interval_at(start_s: int, value: int) -> Interval:
    table = IntervalTable(start_s * 10**9, max_stacks=10, max_endpoints=10)
    table.add(SEARCH, (Frame("app.py", "handler", 3),), [value, 2 * value, 1])
    return table.close((start_s + 10) * 10**9, {"service": "shop"})


def wait_for(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` (a hang guard, not a time limit on the code)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.01)


class Timed:
    """A WSGI wrapper that measures each request as the server sees it:
    from the call to the close of its body."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.wall_ns: dict[str, int] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        started = time.perf_counter_ns()
        body = self.app(environ, start_response)
        timed = self

        class Closing:
            def __iter__(self) -> Iterator[bytes]:
                return iter(body)

            def close(self) -> None:
                getattr(body, "close", lambda: None)()
                path = environ["PATH_INFO"]
                elapsed = time.perf_counter_ns() - started
                timed.wall_ns[path] = timed.wall_ns.get(path, 0) + elapsed

        return Closing()


def test_three_intervals_reach_pyroscope_per_endpoint_with_their_labels_times_and_totals(
    server: IngestServer, exporters: list[PyroscopeExporter]
) -> None:
    from .conftest import serve

    exporter = PyroscopeExporter(server.url, "shop", tags={"env": "test"})
    exporters.append(exporter)
    profiler = ContinuousProfiler(
        interval=3600, sample_rate=1.0, tags={"service": "shop"}, exporters=[exporter]
    )
    # The truth, measured inside the profiling (greenprof's own work is not
    # the app's) and around it (a session cannot last longer than that).
    timed = Timed(slow_shop)
    app = Timed(profiler.install(timed))
    closed: list[Interval] = []
    truths: list[tuple[dict[str, int], dict[str, int]]] = []
    with profiler:
        for number in range(3):
            timed.wall_ns.clear()
            app.wall_ns.clear()
            for path in ["/checkout", "/checkout", "/search"]:
                serve(app, [path])  # one at a time: each waits only in its sleep
            truths.append((dict(timed.wall_ns), dict(app.wall_ns)))
            profiler.flush()
            assert profiler.latest is not None
            closed.append(profiler.latest)
            # Sent and taken in before the next requests: the sender's and the
            # ingest server's threads would hold the GIL for up to a switch
            # interval (5 ms) at a time, in the middle of a request.
            assert exporter.flush(30)
            assert len(server.uploads) == 2 * (number + 1)
    assert exporter.flush(30)
    assert (exporter.sent, exporter.failures, exporter.dropped_intervals) == (6, 0, 0)
    assert len(server.uploads) == 6
    for upload in server.uploads:
        assert upload.app == "shop"
        assert upload.config["on_cpu"]["display-name"] == "on_cpu"
        assert upload.config["off_cpu"]["display-name"] == "off_cpu"
        assert upload.query["spyName"] == "greenprof"
    for number, (interval, truth) in enumerate(zip(closed, truths, strict=True)):
        # In order: the endpoints of the first interval, then the second's...
        for upload in server.uploads[2 * number : 2 * number + 2]:
            assert upload.start == interval.start_ns // 10**9
            assert upload.until == math.ceil(interval.end_ns / 10**9)
            path = upload.labels["path"]
            assert upload.labels == {
                "service": "shop",
                "env": "test",
                "method": "GET",
                "path": path,
            }
            on, off, snapshots = upload.profile.totals()
            assert [on, off, snapshots] == interval.totals(Endpoint("GET", path))
            # The truth, measured outside greenprof: each request's wall time
            # is its on-CPU and off-CPU time, at least what the app took (less
            # 5%) and at most what the middleware's call took, greenprof's
            # own work (and whatever ran meanwhile, a collection) included.
            inside, around = truth
            assert inside[path] * 0.95 <= on + off <= around[path]
            spun, slept = (2 * 20 * MS, 2 * 30 * MS) if path == "/checkout" else (10 * MS, 15 * MS)
            assert on >= spun
            # libev times a sleep from its loop's cached clock, which may
            # be a little behind: a sleep can end up to a loop turn early.
            # And on a loaded machine the OS may take the CPU between a
            # sleep arming its timer and switching out: time the greenlet
            # was running, as greenprof counts it (a run beside valgrind
            # measured 11.2 ms of 15); on + off still covers both (above).
            assert off >= 0.7 * slept


def test_the_server_going_away_and_back_loses_only_what_the_queue_cannot_hold(
    profile_pb2: ModuleType, exporters: list[PyroscopeExporter], caplog: pytest.LogCaptureFixture
) -> None:
    server = IngestServer(profile_pb2)
    exporter = PyroscopeExporter(server.url, "shop", max_queued=2)
    exporters.append(exporter)
    exporter.publish(interval_at(1000, 1))
    assert exporter.flush(30)
    port = server.port
    server.stop()
    with caplog.at_level(logging.WARNING, logger="greenprof"):
        for n in range(4):
            exporter.publish(interval_at(2000 + 100 * n, 10 + n))
        wait_for(lambda: exporter.failures >= 2)  # retried while it is away
        assert not exporter.flush(0)
    assert len([r for r in caplog.records if "cannot reach" in r.getMessage()]) == 1
    assert exporter.dropped_intervals == 2  # the two oldest: the queue holds two
    server = IngestServer(profile_pb2, port=port)
    try:
        assert exporter.flush(30)
    finally:
        server.stop()
    assert [(u.start, u.profile.totals()) for u in server.uploads] == [
        (2200, [12, 24, 1]),
        (2300, [13, 26, 1]),
    ]
    assert (exporter.sent, exporter.dropped_intervals, exporter.queued) == (3, 2, 0)


def test_busy_answers_are_retried_and_refusals_are_not(
    server: IngestServer, exporters: list[PyroscopeExporter], caplog: pytest.LogCaptureFixture
) -> None:
    exporter = PyroscopeExporter(server.url, "shop")
    exporters.append(exporter)
    server.answers = [503, 429]
    exporter.publish(interval_at(3000, 5))
    assert exporter.flush(30)
    assert (server.posts, exporter.failures, exporter.sent) == (3, 2, 1)
    server.answers = [400]
    with caplog.at_level(logging.WARNING, logger="greenprof"):
        exporter.publish(interval_at(3100, 6))
        exporter.publish(interval_at(3200, 7))
        assert exporter.flush(30)
    assert (server.posts, exporter.rejected, exporter.sent) == (5, 1, 2)
    assert [u.start for u in server.uploads] == [3000, 3200]
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1


def test_credentials_go_in_headers(
    server: IngestServer, exporters: list[PyroscopeExporter]
) -> None:
    bearer = PyroscopeExporter(server.url, "shop", auth_token="t0ken", tenant_id="team-a")
    basic = PyroscopeExporter(server.url, "shop", basic_auth=("123", "key"))
    exporters += [bearer, basic]
    bearer.publish(interval_at(4000, 1))
    assert bearer.flush(30)
    basic.publish(interval_at(4100, 1))
    assert basic.flush(30)
    first, second = server.uploads
    assert first.headers["Authorization"] == "Bearer t0ken"
    assert first.headers["X-Scope-OrgID"] == "team-a"
    assert second.headers["Authorization"] == "Basic MTIzOmtleQ=="


def test_publish_never_waits_for_a_server_that_does_not_answer(
    exporters: list[PyroscopeExporter],
) -> None:
    # A listening socket nobody accepts from: connections succeed, no answer comes.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        exporter = PyroscopeExporter(
            f"http://127.0.0.1:{silent.getsockname()[1]}", "shop", timeout=3600
        )
        exporters.append(exporter)
        publishing = threading.Thread(
            target=lambda: [exporter.publish(interval_at(5000 + n, 1)) for n in range(20)]
        )
        publishing.start()
        publishing.join(60)  # a hang guard: publish only queues
        assert not publishing.is_alive()
        assert exporter.queued == 10  # max_queued; the rest dropped and counted
        assert exporter.dropped_intervals == 10
        assert not exporter.flush(0)
    exporter.close()  # the silent server's connection was reset: the sender ends


def test_https_with_a_private_ca(
    profile_pb2: ModuleType, tmp_path: Path, exporters: list[PyroscopeExporter]
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = IngestServer(profile_pb2, tls=context)
    try:
        url = f"https://127.0.0.1:{server.port}"
        trusting = PyroscopeExporter(url, "shop", ca_file=cert)
        untrusting = PyroscopeExporter(url, "shop")  # the system's CAs: not ours
        exporters += [trusting, untrusting]
        trusting.publish(interval_at(6000, 3))
        assert trusting.flush(30)
        untrusting.publish(interval_at(6100, 3))
        wait_for(lambda: untrusting.failures >= 1)
        assert untrusting.sent == 0
    finally:
        server.stop()
    assert [u.start for u in server.uploads] == [6000]


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (("pyroscope:4040", "shop"), {}, "url"),
        (("ftp://pyroscope", "shop"), {}, "url"),
        (("http://pyroscope:4040", ""), {}, "app_name"),
        (("http://pyroscope:4040", "my app"), {}, "app_name"),
        (("http://pyroscope:4040", "shop"), {"timeout": 0}, "timeout"),
        (("http://pyroscope:4040", "shop"), {"max_queued": 0}, "max_queued"),
        (("http://pyroscope:4040", "shop"), {"tags": {"env": 1}}, "tags"),
    ],
)
def test_bad_options_raise_a_clear_error(
    args: tuple[str, str], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PyroscopeExporter(*args, **options)


def test_a_free_port_is_an_unreachable_server(exporters: list[PyroscopeExporter]) -> None:
    exporter = PyroscopeExporter(f"http://127.0.0.1:{free_port()}", "shop")
    exporters.append(exporter)
    exporter.publish(interval_at(7000, 1))
    wait_for(lambda: exporter.failures >= 1)
    assert (exporter.sent, exporter.queued) == (0, 1)
    assert os.getpid()  # the program goes on
