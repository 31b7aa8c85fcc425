"""The WSGI middleware, under gevent.pywsgi and under gunicorn's gevent worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

import greenprof
from greenprof.exceptions import ConfigurationError
from greenprof.integrations.wsgi import ProfilerMiddleware
from greenprof.sinks import MemorySink

from .conftest import free_port, serve, wait_until_listening

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))


def sessions(snapshots: list[greenprof.Snapshot]) -> dict[str, list[greenprof.Snapshot]]:
    out: dict[str, list[greenprof.Snapshot]] = {}
    for snapshot in snapshots:
        out.setdefault(snapshot.session_id, []).append(snapshot)
    return out


def test_flask_example_records_slow_requests_and_drops_fast_ones(tmp_path: Path) -> None:
    import flask_app

    path = tmp_path / "flask.jsonl"
    app = flask_app.create_app(str(path))
    replies = serve(app, ["/slow"] * 4 + ["/fast"] * 4)
    assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies)
    # Read back as a user would: the time of each request, and its tags.
    report = greenprof.Report.from_file(path)
    # The fast ones were dropped by min_duration (20 ms), unless a loaded
    # machine made one last that long.
    fast = [s for s in report.sessions if s.tags["path"] == "/fast"]
    assert all(float(s.tags["duration_ms"]) >= 20 for s in fast)
    middleware = app.wsgi_app
    assert (middleware.kept, middleware.discarded) == (4 + len(fast), 4 - len(fast))
    recorded = sessions(greenprof.load(path))
    assert len(recorded) == 4 + len(fast)
    slow = [s for s in report.sessions if s.tags["path"] == "/slow"]
    assert len(slow) == 4
    for snapshots in (recorded[s.session_id] for s in slow):
        assert len({s.greenlet_id for s in snapshots}) == 1  # one request each
        outs = [s for s in snapshots if s.event == "switch_out"]
        assert outs
        assert all(
            any(f.function == "load_order" for f in s.stack) for s in outs
        )  # its own wait site, never another request's
    for session in slow:
        assert session.tags["route"] == "/slow"
        assert (session.tags["method"], session.tags["path"], session.tags["status"]) == (
            "GET",
            "/slow",
            "200",
        )
        assert float(session.tags["duration_ms"]) >= 50  # load_order's 50 ms
    merged = report.group_by("route")["/slow"]
    assert merged.greenlets[0].off_cpu_ns >= 4 * 50_000_000
    assert merged.greenlets[0].on_cpu_ns > 0  # no longer 0.000 ms read back


def test_paths_and_sample_rate_choose_what_is_profiled() -> None:
    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        gevent.sleep(0.01)
        start_response("200 OK", [])  # type: ignore[operator]
        return [b"ok"]

    sink = MemorySink()
    only_api = ProfilerMiddleware(app, sinks=[sink], paths=["/api/"])
    serve(only_api, ["/api/a", "/api/b", "/static/x"])
    assert only_api.kept == 2
    assert len(sessions(sink.snapshots)) == 2
    none = ProfilerMiddleware(app, sinks=[sink], sample_rate=0.0)
    serve(none, ["/a", "/b"])
    assert none.kept == none.discarded == 0
    half = ProfilerMiddleware(
        app, sample_rate=0.5, random_source=iter([0.1, 0.9, 0.3, 0.7]).__next__
    )
    serve(half, ["/1", "/2", "/3", "/4"])
    assert half.kept == 2
    with pytest.raises(ConfigurationError, match="sample_rate"):
        ProfilerMiddleware(app, sample_rate=1.5)


def test_a_streamed_body_is_profiled_until_the_server_closes_it() -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            gevent.sleep(0.005)
            yield b"x"

    def app(environ: dict[str, object], start_response: object) -> Iterator[bytes]:
        start_response("200 OK", [])  # type: ignore[operator]
        return chunks()

    sink = MemorySink()
    serve(ProfilerMiddleware(app, sinks=[sink]), ["/stream"])
    outs = [s for s in sink.snapshots if s.event == "switch_out"]
    assert len(outs) == 3
    assert all(any(f.function.endswith("chunks") for f in s.stack) for s in outs)


def test_gunicorn_gevent_worker_example(tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    port = free_port()
    env = {
        **os.environ,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GREENPROF_PROFILE_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "examples/gunicorn.conf.py",
            "examples.gunicorn_app:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_listening(port)
        for path in ["/slow", "/fast", "/slow", "/fast", "/slow"]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as reply:
                assert reply.status == 200
    finally:
        time.sleep(1.5)  # a gevent worker just booted may miss SIGTERM (gunicorn's race)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    files = list(tmp_path.glob("gunicorn-profiles-*.jsonl"))
    assert len(files) == 1
    recorded = sessions(greenprof.load(files[0]))
    kept = greenprof.Report.from_file(files[0]).sessions
    slow = [s.session_id for s in kept if s.tags["path"] == "/slow"]
    assert len(slow) == 3
    # The fast ones were dropped by min_duration (20 ms), unless a loaded
    # machine made one last that long.
    fast = [s for s in kept if s.tags["path"] == "/fast"]
    assert all(s.duration_ns >= 20_000_000 for s in fast)
    assert set(recorded) == {s.session_id for s in kept}
    for session_id in slow:
        outs = [s for s in recorded[session_id] if s.event == "switch_out"]
        assert outs
        assert all(any(f.function == "render_report" for f in s.stack) for s in outs)
