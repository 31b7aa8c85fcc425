"""Shared fixtures: every test must leave no greenprof tracer behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import gevent
import gevent.socket
import greenlet
import pytest
from gevent import pywsgi

import greenprof

#: The installed package's folder: a frame whose file starts with this is
#: greenprof's own (the clone's folder may be called greenprof too).
GREENPROF_DIR = os.path.dirname(os.path.abspath(greenprof.__file__)) + os.sep


@pytest.fixture(autouse=True)
def _no_tracer_left_behind() -> Iterator[None]:
    before = greenlet.gettrace()
    yield
    assert greenlet.gettrace() is before, "a test left a greenlet tracer installed"


@pytest.fixture(scope="session")
def profile_pb2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """google/pprof's ``profile.proto``, compiled for this run (see profile_proto)."""
    from .profile_proto import compile_profile_proto

    return compile_profile_proto(tmp_path_factory.mktemp("profile_pb2"))


def function_name(func: object) -> str:
    """What ``Frame.function`` says for ``func``: qualified on 3.11+."""
    code = func.__code__  # type: ignore[attr-defined]
    return code.co_qualname if sys.version_info >= (3, 11) else code.co_name  # type: ignore[no-any-return]


def line_of(func: object, marker: str) -> int:
    """The line number of the line of ``func``'s source containing ``marker``."""
    import inspect

    lines, start = inspect.getsourcelines(func)  # type: ignore[arg-type]
    for offset, text in enumerate(lines):
        if marker in text:
            return start + offset
    raise AssertionError(f"{marker!r} not in {func!r}")


#: The greenprof command, as a subprocess runs it.
GREENPROF = (sys.executable, "-m", "greenprof")


def greenprof_command(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m greenprof ARGS`` in a real subprocess (text output)."""
    return subprocess.run(
        [*GREENPROF, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def python_command(
    *args: str, cwd: str | os.PathLike[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` in a real subprocess (text output): what a program
    does without greenprof."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def write_jsonl(path: os.PathLike[str], *records: object) -> None:
    """A snapshot file of ``records``, one a line: JSON objects, or lines as
    they are (``str``: text, ``bytes``: raw), for files that are not right."""
    lines = [
        record
        if isinstance(record, bytes)
        else (record if isinstance(record, str) else json.dumps(record)).encode()
        for record in records
    ]
    with open(path, "wb") as file:
        file.write(b"".join(line + b"\n" for line in lines))


def chromium() -> str:
    """Debian's headless Chromium; a missing one skips the test (fails it in CI,
    where .ci/run installs it)."""
    import shutil

    found = shutil.which("chromium")
    if found is None:
        message = "Chromium is needed (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_chromium(
    url: str, profile_dir: str, *, size: str = "1280,900", budget_ms: int = 10000
) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url`` until its scripts are done; ``--dump-dom``
    puts the page in ``stdout``, its log is in ``stderr``."""
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile_dir}",
            f"--window-size={size}",
            f"--virtual-time-budget={budget_ms}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def dump_dom(url: str, profile_dir: str) -> str:
    """The DOM of ``url`` once headless Chromium has run its scripts."""
    result = run_chromium(url, profile_dir)
    assert result.stdout, f"Chromium printed no DOM:\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="session")
def speedscope_package(tmp_path_factory: pytest.TempPathFactory) -> str:
    """speedscope's npm package, unpacked: its folder (``package``)."""
    import shutil
    import tarfile

    if shutil.which("npm") is None:
        message = "npm is needed to fetch speedscope from the npm registry"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("speedscope")
    subprocess.run(
        ["npm", "pack", "speedscope@1.25.0", "--silent"],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=120,
    )
    with tarfile.open(next(folder.glob("speedscope-*.tgz"))) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(folder, filter="data")
        else:  # pragma: no cover - Python before 3.10.12
            archive.extractall(folder)
    return str(folder / "package")


def run_python(code: str, **env: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (a collector that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_listening(port: int, seconds: float = 60.0) -> None:
    """Return once 127.0.0.1:``port`` accepts connections (a server started
    in another process), without sending it a request: a request that a
    loaded machine served late would be retried, and served twice."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def http_get(port: int, path: str) -> bytes:
    """A whole HTTP/1.0 GET of ``path`` from 127.0.0.1:``port``, over a gevent socket."""
    sock = gevent.socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def serve(app: object, paths: Sequence[str]) -> list[bytes]:
    """Serve ``app`` with gevent.pywsgi on 127.0.0.1 for one GET of each of
    ``paths``, all at once; the replies."""
    server = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    try:
        jobs = [gevent.spawn(http_get, server.server_port, path) for path in paths]
        gevent.joinall(jobs, raise_error=True)
        return [job.value for job in jobs]
    finally:
        server.stop()


class SwitchCounter:
    """An independent greenlet tracer that classifies switches of one greenlet
    the way greenprof's events are defined."""

    def __init__(self, watched: greenlet.greenlet) -> None:
        self.watched = watched
        self.counts: Counter[str] = Counter()
        self.stacks: list[list[tuple[str, str, int]]] = []
        self.previous: Any = None

    def __call__(self, event: str, args: Any) -> None:
        if event in ("switch", "throw"):
            origin, target = args
            if origin is not target:
                if target is self.watched:
                    self.counts["switch_in" if event == "switch" else "throw"] += 1
                if origin is self.watched:
                    if origin.gr_frame is None:
                        self.counts["exit"] += 1
                    else:
                        self.counts["switch_out"] += 1
                        self.stacks.append(
                            [
                                (f.filename, f.name, f.lineno)
                                for f in traceback.extract_stack(origin.gr_frame)
                            ]
                        )
        if self.previous is not None:
            self.previous(event, args)

    def install(self) -> None:
        self.previous = greenlet.settrace(self)

    def uninstall(self) -> None:
        greenlet.settrace(self.previous)


def never_called(*args: object) -> None:
    """Stands in for a function a test requires not to be called."""
    raise AssertionError("called, and should not have been")
