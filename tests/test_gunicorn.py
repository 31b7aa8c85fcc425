"""greenprof.integrations.gunicorn: a whole-program profile per gevent worker,
under a real gunicorn serving real HTTP requests on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import greenprof
from greenprof.exceptions import ConfigurationError
from greenprof.integrations.gunicorn import hooks, worker_path

from .conftest import free_port, wait_until_listening

pytest.importorskip("gunicorn")

APP = textwrap.dedent(
    """
    import gevent

    def lookup():
        gevent.sleep(0.002)  # the wait site every request shows
        return b"ok"

    def app(environ, start_response):
        body = lookup()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    """
)


def serve_with_gunicorn(
    folder: Path, config: str, requests: int, app: str = "profiled_app:app", **env: str
) -> Path:
    (folder / "profiled_app.py").write_text(APP)
    (folder / "gunicorn_conf.py").write_text(textwrap.dedent(config))
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn_conf.py",
            "-b",
            f"127.0.0.1:{port}",
            app,
        ],
        cwd=folder,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_listening(port)
        for _ in range(requests):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as reply:
                assert reply.read() == b"ok"
    finally:
        # gunicorn's gevent worker may hang for its graceful timeout when
        # SIGTERM comes right after it booted (without greenprof too): let
        # the workers settle first.
        time.sleep(1.5)
        server.send_signal(signal.SIGTERM)  # what gunicorn's users send to stop it
        _, errors = server.communicate(timeout=60)
    assert server.returncode == 0, errors
    return folder


def waits_in_lookup(path: Path) -> int:
    return sum(
        s.event == "switch_out" and any(f.function == "lookup" for f in s.stack)
        for s in greenprof.load(path)
    )


def test_each_gevent_worker_writes_its_own_profile_of_its_requests(tmp_path: Path) -> None:
    config = """
        from greenprof.integrations.gunicorn import post_fork, worker_exit
        worker_class = "gevent"
        workers = 2
        accesslog = None
    """
    serve_with_gunicorn(
        tmp_path,
        config,
        requests=30,
        GREENPROF_OUTPUT=str(tmp_path / "profile-{pid}.jsonl"),
        GREENPROF_INTERVAL="0.2",
    )
    files = sorted(tmp_path.glob("profile-*.jsonl"))
    assert len(files) == 2  # one per worker, named by its pid
    assert sum(waits_in_lookup(f) for f in files) == 30  # every request, once
    for path in files:
        pid = int(path.stem.split("-")[1])
        report = greenprof.Report.from_file(path)
        (session,) = report.sessions  # the worker's, whole
        assert session.stop_ns > session.start_ns
        assert pid != os.getpid()


def test_hooks_in_code_and_a_path_without_pid(tmp_path: Path) -> None:
    config = f"""
        from greenprof.integrations.gunicorn import hooks
        post_fork, worker_exit = hooks({str(tmp_path / "workers.jsonl")!r}, interval=0.2)
        worker_class = "gevent"
        workers = 1
        accesslog = None
    """
    serve_with_gunicorn(tmp_path, config, requests=5)
    (path,) = tmp_path.glob("workers.*.jsonl")  # .{pid} before the extension
    assert waits_in_lookup(path) == 5


def test_worker_paths() -> None:
    assert worker_path("out/{pid}.pprof", 12) == "out/12.pprof"
    assert worker_path("out/profile.jsonl", 12) == "out/profile.12.jsonl"
    assert worker_path("out/profile.pb.gz", 12) == "out/profile.12.pb.gz"
    assert worker_path("profile", 12) == "profile.12"


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"mode": "thread"}, "mode must be 'greenlet' or 'hybrid'"),
        ({"interval": 0}, "interval is the seconds between two writes"),
        ({"path": ""}, "path is the file each worker writes"),
        ({"max_depth": 0}, "max_depth"),
    ],
)
def test_bad_settings_fail_in_the_master(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        hooks(**kwargs)  # type: ignore[arg-type]


CONTINUOUS_APP = textwrap.dedent(
    """
    import os
    from greenprof.continuous import ContinuousProfiler, FileExporter
    from profiled_app import app

    # Made and started in gunicorn's master (preload_app): each forked
    # worker goes on with it, profiles its own requests, and publishes
    # them when it is told to stop (the interval is far from over).
    profiler = ContinuousProfiler(
        interval=3600, sample_rate=1.0, exporters=[FileExporter(os.environ["PROFILES"])]
    )
    app = profiler.install(app)
    profiler.start()
    with open(os.path.join(os.environ["PROFILES"], "master.pid"), "w") as file:
        file.write(str(os.getpid()))
    """
)


def test_continuous_profiling_in_gevent_workers_forked_from_a_preloading_master(
    tmp_path: Path, profile_pb2: Any
) -> None:
    from .profile_proto import decode_labelled

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (tmp_path / "continuous_app.py").write_text(CONTINUOUS_APP)
    config = """
        worker_class = "gevent"
        workers = 2
        preload_app = True
        accesslog = None
    """
    serve_with_gunicorn(
        tmp_path, config, requests=30, app="continuous_app:app", PROFILES=str(profiles)
    )
    master = int((profiles / "master.pid").read_text())
    files = sorted(profiles.glob("*.pb.gz"))
    pids = {int(f.name.rsplit("-", 1)[1].split(".")[0]) for f in files}
    assert files  # the workers published as they stopped
    assert master not in pids  # the master served nothing: it publishes nothing
    assert len(pids) == len(files)  # one interval each
    waited = 0
    for path in files:
        profile = decode_labelled(profile_pb2, path.read_bytes())
        on_cpu, off_cpu, snapshots = profile.totals(path="/", method="GET")
        assert on_cpu > 0
        assert snapshots > 0
        waited += off_cpu
    # 30 requests, each waiting 2 ms in lookup (and no more than 50 ms).
    assert 30 * 1_800_000 <= waited <= 30 * 50_000_000
