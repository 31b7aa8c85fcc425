"""PprofEndpoint: the latest interval over real HTTP on 127.0.0.1, read by
profile.proto's decoder and by ``go tool pprof``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from greenprof.continuous import ContinuousProfiler, PprofEndpoint
from greenprof.exceptions import ConfigurationError

from .conftest import function_name, http_get, run_python, serve
from .profile_proto import decode_labelled
from .workloads import checkout, shop


@pytest.fixture
def endpoint() -> Iterator[PprofEndpoint]:
    endpoint = PprofEndpoint()
    yield endpoint
    endpoint.close()


def fetch(port: int, path: str) -> tuple[str, bytes]:
    """The status line and body of a GET."""
    head, _, body = http_get(port, path).partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


def test_it_serves_the_latest_interval_with_both_defaults(
    endpoint: PprofEndpoint, profile_pb2: ModuleType
) -> None:
    assert endpoint.host == "127.0.0.1"
    status, body = fetch(endpoint.port, "/debug/pprof/profile")
    assert status == "HTTP/1.1 200 OK"
    assert decode_labelled(profile_pb2, body).samples == {}  # nothing closed yet

    profiler = ContinuousProfiler(interval=3600, sample_rate=1.0, exporters=[endpoint])
    app = profiler.install(shop)
    with profiler:
        serve(app, ["/checkout", "/checkout", "/search"])
    interval = profiler.latest
    assert interval is not None
    for path, default in [
        ("/debug/pprof/profile", "on_cpu"),
        ("/debug/pprof/greenlet_off_cpu", "off_cpu"),
    ]:
        status, body = fetch(endpoint.port, path)
        assert status == "HTTP/1.1 200 OK"
        profile = decode_labelled(profile_pb2, body)
        assert profile.strings[profile.message.default_sample_type] == default
        for endpoint_key in interval.stacks:
            assert profile.totals(path=endpoint_key.path) == interval.totals(endpoint_key)
        assert profile.totals(path="/checkout")[0] > 0
    assert endpoint.served == 3


def test_other_paths_are_not_found(endpoint: PprofEndpoint) -> None:
    status, body = fetch(endpoint.port, "/debug/pprof/heap")
    assert status == "HTTP/1.1 404 Not Found"
    assert b"/debug/pprof/profile" in body


def test_a_client_that_hangs_up_is_counted_and_the_next_one_served(
    endpoint: PprofEndpoint,
) -> None:
    with socket.create_connection(("127.0.0.1", endpoint.port)) as sock:
        sock.sendall(b"GET /debug/pprof/pro")
    status, _ = fetch(endpoint.port, "/debug/pprof/profile")
    assert status == "HTTP/1.1 200 OK"
    assert endpoint.failed == 1


def test_go_tool_pprof_reads_it_over_http(endpoint: PprofEndpoint, tmp_path: Path) -> None:
    go = shutil.which("go")
    if go is None:
        message = "go is needed for go tool pprof (Debian: apt-get install golang-go)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    profiler = ContinuousProfiler(interval=3600, sample_rate=1.0, exporters=[endpoint])
    app = profiler.install(shop)
    with profiler:
        serve(app, ["/checkout"] * 3)
    for path, header in [
        ("profile", "on_cpu/nanoseconds[dflt] off_cpu/nanoseconds snapshots/count"),
        ("greenlet_off_cpu", "on_cpu/nanoseconds off_cpu/nanoseconds[dflt] snapshots/count"),
    ]:
        result = subprocess.run(
            [go, "tool", "pprof", "-raw", f"http://127.0.0.1:{endpoint.port}/debug/pprof/{path}"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PPROF_TMPDIR": str(tmp_path), "HOME": str(tmp_path)},
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert header in result.stdout
        assert f" {function_name(checkout)} " in result.stdout
        assert "method:[GET] path:[/checkout]" in result.stdout


def test_it_serves_under_patch_all_while_the_program_runs() -> None:
    found = run_python(
        """
        from gevent import monkey; monkey.patch_all()
        import gzip, json, gevent
        from gevent import pywsgi
        from greenprof.continuous import ContinuousProfiler, PprofEndpoint
        from tests.conftest import http_get, serve
        from tests.workloads import shop

        endpoint = PprofEndpoint()
        profiler = ContinuousProfiler(interval=3600, sample_rate=1.0, exporters=[endpoint])
        app = profiler.install(shop)
        profiler.start()
        serve(app, ["/checkout", "/search"])
        profiler.flush()
        # A greenlet of this thread fetches from the endpoint's real thread.
        reply = gevent.spawn(http_get, endpoint.port, "/debug/pprof/profile").get()
        body = reply.partition(b"\\r\\n\\r\\n")[2]
        profiler.stop()
        endpoint.close()
        print(json.dumps({
            "status": reply.split(b"\\r\\n", 1)[0].decode(),
            "checkout": b"/checkout" in gzip.decompress(body),
            "requests": profiler.stats.requests,
        }))
        """,
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
        ),
    )
    assert found == {"status": "HTTP/1.1 200 OK", "checkout": True, "requests": 2}


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("", 0, "host"),
        ("127.0.0.1", -1, "port"),
        ("127.0.0.1", "80", "port"),
        ("127.0.0.1", True, "port"),
    ],
)
def test_bad_addresses_raise_a_clear_error(host: str, port: int, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PprofEndpoint(host, port)


def test_a_port_in_use_raises_a_clear_error(endpoint: PprofEndpoint) -> None:
    with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{endpoint.port}"):
        PprofEndpoint("127.0.0.1", endpoint.port)
