"""greenprof run and the life of processes: signals delivered to a real
gevent.pywsgi server while it serves, children forked by the program, and
a program that closes stderr. Each process writes its own profile, and
ends as it would have without greenprof."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import greenprof

from .conftest import GREENPROF, greenprof_command, http_get, python_command

SERVER = """
import os, signal, sys
import gevent
from gevent import pywsgi

def slow_part():
    gevent.sleep(120)

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        # Straight to the descriptor: a print's flush runs signal handlers
        # once it wrote, and the handler's own print would then fail as a
        # reentrant call on sys.stdout (with or without greenprof).
        os.write(1, b"slow\\n")
        slow_part()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]

server = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
server.start()

def stop(*args):
    print("handled", flush=True)
    # Through the loop's wakeup: a signal.signal handler may run just as the
    # hub goes back to waiting (here, on the 120 s sleep), and a plain
    # spawn would wait with it (CI saw it on 3.12, with or without greenprof).
    gevent.get_hub().loop.run_callback_threadsafe(
        lambda: gevent.spawn(server.stop, timeout=0))

def tick():
    # A Python signal handler (the program's, or greenprof run's in place of
    # the default action) runs once the hub's wait is interrupted; a signal
    # that lands just as the hub starts waiting wakes nothing (gevent's
    # libev loop sets no wakeup fd), and its handler would wait for the
    # 120 s sleep to end (seen here about once in five runs). A wakeup
    # every half second bounds that (README, "Signals", under greenprof run).
    while True:
        gevent.sleep(0.5)

gevent.spawn(tick)
if sys.argv[1] == "signal.signal":
    signal.signal(signal.SIGTERM, stop)
elif sys.argv[1] == "gevent.signal_handler":
    gevent.signal_handler(signal.SIGTERM, stop)
print(server.server_port, flush=True)
server.serve_forever()
print("stopped", flush=True)
sys.exit(7)
"""


def serve_then_signal(command: list[str], cwd: Path, signum: int) -> tuple[int, str, str]:
    """Start the server, serve three requests and start a fourth that
    waits, send ``signum`` while it waits; the returncode, stdout, stderr."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    slow = None
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        for _ in range(3):
            assert http_get(port, "/").endswith(b"served")
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /slow HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        assert process.stdout.readline() == "slow\n"  # in the middle of a request
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        if slow is not None:
            slow.close()
    return process.returncode, out, err


@pytest.mark.parametrize(
    ("signum", "handler"),
    [
        (signal.SIGTERM, "default"),
        (signal.SIGHUP, "default"),
        (signal.SIGINT, "default"),
        (signal.SIGTERM, "signal.signal"),
        (signal.SIGTERM, "gevent.signal_handler"),
    ],
)
def test_a_signal_to_a_serving_program_writes_the_profile_and_ends_it_as_python_would(
    tmp_path: Path, signum: int, handler: str
) -> None:
    if handler == "signal.signal" and sys.version_info < (3, 11):
        # Python 3.10 alone runs this handler late: the plain server, without
        # greenprof, did not stop within two minutes in CI.
        pytest.skip("a signal.signal handler under gevent on 3.10 runs too late to compare")
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    out = tmp_path / "server.jsonl"
    plain_status, plain_out, plain_err = serve_then_signal(
        [sys.executable, str(script), handler], tmp_path, signum
    )
    status, stdout, stderr = serve_then_signal(
        [*GREENPROF, "run", "-o", str(out), str(script), handler], tmp_path, signum
    )
    assert status == plain_status, stderr
    assert stdout == plain_out
    if handler == "default":
        # Ended by the signal, as without greenprof (SIGINT: after python's
        # KeyboardInterrupt traceback).
        assert status == -signum
        if signum == signal.SIGINT:
            assert plain_err.endswith("KeyboardInterrupt\n")
            assert "\nKeyboardInterrupt\ngreenprof: " in stderr
    else:
        # The program's own handler ran and the program ended its own way.
        assert status == 7
        assert stdout.endswith("handled\nstopped\n")
    assert stderr.endswith(f"written to {out}\n")
    report = greenprof.Report.from_file(out)
    (session,) = report.sessions
    assert session.stop_ns > session.start_ns
    main = [s for s in report.snapshots if s.greenlet_name == "main" and s.stack]
    assert {s.stack[0].function for s in main} == {"<module>"}
    # It waited in serve_forever, where the signal found it.
    assert any(f.function.endswith("serve_forever") for s in main for f in s.stack)


def test_a_sigterm_as_the_program_ends_leaves_a_whole_profile(tmp_path: Path) -> None:
    script = tmp_path / "switches.py"
    script.write_text(
        "import gevent\nfor _ in range(100_000):\n    gevent.sleep(0)\nprint('done', flush=True)\n"
    )
    out = tmp_path / "p.jsonl"
    process = subprocess.Popen(
        [*GREENPROF, "run", "-o", str(out), str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "done\n"
        # Now greenprof builds and writes 200,000 snapshots, for a while.
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGTERM
    assert stderr == f"greenprof: 200002 snapshots of 1 greenlet written to {out}\n"
    assert len(greenprof.load(out)) == 200_002
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "switches.py"]


FORKS = """
import json, multiprocessing, os, sys
import gevent

def before_fork():
    gevent.sleep(0.001)

def exiting_child():
    gevent.sleep(0.001)
    os._exit(0)

def returning_child():
    gevent.sleep(0.001)
    sys.exit(0)

def multiprocessing_child():
    gevent.sleep(0.001)

def late_child(parent):
    while os.getppid() == parent:  # until the parent has ended
        gevent.sleep(0.005)
    gevent.sleep(0.001)

def parent_after():
    gevent.sleep(0.001)

before_fork()
children = {}
for name, work in (("exiting", exiting_child), ("returning", returning_child)):
    pid = os.fork()
    if pid == 0:
        work()
    children[name] = pid
process = multiprocessing.get_context("fork").Process(target=multiprocessing_child)
process.start()
process.join()
children["multiprocessing"] = process.pid
for name in ("exiting", "returning"):
    os.waitpid(children[name], 0)
parent = os.getpid()
pid = os.fork()
if pid == 0:
    late_child(parent)
    sys.exit(0)
children["late"] = pid
parent_after()
print(json.dumps({"parent": parent, "children": children}), flush=True)
"""

CHILD_WORK = {
    "exiting": "exiting_child",
    "returning": "returning_child",
    "multiprocessing": "multiprocessing_child",
    "late": "late_child",
}


def functions(report: greenprof.Report) -> set[str]:
    return {f.function for s in report.snapshots for f in s.stack}


def test_each_forked_child_writes_its_own_profile_of_its_own_time(tmp_path: Path) -> None:
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    # The late child keeps the output pipes open: this returns once it ended too.
    result = greenprof_command("run", "-o", "out.jsonl", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pids = json.loads(result.stdout)
    children = pids["children"]
    expected = ["forks.py", "out.jsonl", *(f"out.{pid}.jsonl" for pid in children.values())]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    parent = greenprof.Report.from_file(tmp_path / "out.jsonl")
    (parent_session,) = parent.sessions
    assert {"before_fork", "parent_after"} <= functions(parent)
    assert not set(CHILD_WORK.values()) & functions(parent)
    session_ids = {parent_session.session_id}
    for name, pid in children.items():
        child = greenprof.Report.from_file(tmp_path / f"out.{pid}.jsonl")
        (session,) = child.sessions
        session_ids.add(session.session_id)
        others = set(CHILD_WORK.values()) - {CHILD_WORK[name]}
        assert CHILD_WORK[name] in functions(child), name
        assert not (others | {"before_fork", "parent_after"}) & functions(child), name
        # Its own time: from the fork, not from its parent's start.
        assert session.start_ns > parent_session.start_ns
        assert all(s.timestamp_ns >= session.start_ns for s in child.snapshots)
        (main,) = child.greenlets.values()
        assert main.wall_ns == session.duration_ns, name
        assert [s.sequence for s in child.snapshots] == list(range(len(child.snapshots)))
    assert len(session_ids) == 5
    # The late child ended after the parent: the parent's file is its own.
    late = greenprof.Report.from_file(tmp_path / f"out.{children['late']}.jsonl")
    assert late.sessions[0].stop_ns > parent_session.stop_ns


def test_pid_in_the_path_names_every_process_file(tmp_path: Path) -> None:
    script = tmp_path / "fork.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import gevent
            pid = os.fork()
            if pid == 0:
                gevent.sleep(0.001)
                os._exit(0)
            os.waitpid(pid, 0)
            print(os.getpid(), pid)
            """
        )
    )
    result = greenprof_command("run", "-o", "p-{pid}.jsonl", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    parent, child = result.stdout.split()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["fork.py", f"p-{parent}.jsonl", f"p-{child}.jsonl"]
    )
    for pid in (parent, child):
        assert greenprof.Report.from_file(tmp_path / f"p-{pid}.jsonl").sessions


def test_a_forked_child_of_stdout_output_writes_nothing_and_says_so(tmp_path: Path) -> None:
    script = tmp_path / "fork.py"
    script.write_text(
        "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n"
    )
    result = greenprof_command("run", "-o", "-", "--format", "text", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("<greenlet start>") == 1  # the parent's tree only
    assert "stdout is its parent's (-o -)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fork.py"]


@pytest.mark.parametrize("how", ["sys.stderr.close()", "os.close(2)"])
def test_a_program_that_closes_stderr_keeps_its_exit_status(tmp_path: Path, how: str) -> None:
    script = tmp_path / "closes.py"
    script.write_text(f"import os, sys\nimport gevent\ngevent.sleep(0.001)\n{how}\nsys.exit(4)\n")
    out = tmp_path / "p.jsonl"
    plain = python_command(str(script))
    profiled = greenprof_command("run", "-o", str(out), str(script))
    assert profiled.returncode == plain.returncode == 4
    assert profiled.stderr == ""
    assert greenprof.Report.from_file(out).sessions


COUNTED_SERVER = """
import sys
import gevent, gevent.event
from gevent import pywsgi

done = gevent.event.Event()
served = 0

def lookup():
    gevent.sleep(0.001)  # each request's wait site
    return b"served"

def app(environ, start_response):
    global served
    body = lookup()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    served += 1
    if served == int(sys.argv[1]):
        done.set()
    return [body]

server = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
server.start()
print(server.server_port, flush=True)
done.wait()
gevent.sleep(0.05)
server.stop()
"""

STREAM_SERVER = """
import sys
import gevent, gevent.event
from gevent.server import StreamServer

done = gevent.event.Event()
served = 0

def lookup():
    gevent.sleep(0.001)  # each request's wait site
    return b"served"

def app(sock, address):  # a connection's greenlet: one request, answered
    global served
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        data += sock.recv(65536)
    body = lookup()
    sock.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\n" + body)
    sock.close()
    served += 1
    if served == int(sys.argv[1]):
        done.set()

server = StreamServer(("127.0.0.1", 0), app)
server.start()
print(server.server_port, flush=True)
done.wait()
gevent.sleep(0.05)
server.stop()
"""

CLIENT = """
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
for _ in range(count):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
        while sock.recv(65536):
            pass
"""


def requests_in(report: greenprof.Report) -> tuple[int, int]:
    """(request greenlets that ended having run the app, waits in lookup
    seen from inside the app)."""
    snapshots = report.snapshots
    serving = {s.greenlet_id for s in snapshots if any(f.function == "app" for f in s.stack)}
    ended = sum(s.event == "exit" and s.greenlet_id in serving for s in snapshots)
    waits = sum(
        s.event == "switch_out"
        and [f.function for f in s.stack][-3:].count("lookup") == 1
        and any(f.function == "app" for f in s.stack)
        for s in snapshots
    )
    return ended, waits


@pytest.mark.parametrize(
    ("kind", "patch"), [("pywsgi", True), ("pywsgi", False), ("StreamServer", True)]
)
def test_run_records_each_request_greenlet_a_server_spawns(
    tmp_path: Path, kind: str, patch: bool
) -> None:
    requests = 15
    script = tmp_path / "server.py"
    script.write_text(COUNTED_SERVER if kind == "pywsgi" else STREAM_SERVER)
    out = tmp_path / "server.jsonl"
    server = subprocess.Popen(
        [
            *GREENPROF,
            "run",
            *(["--patch"] if patch else []),
            "-o",
            str(out),
            str(script),
            str(requests),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        client = subprocess.run(  # another process, as a real client is
            [sys.executable, "-c", CLIENT, port, str(requests)], timeout=120, check=False
        )
        assert client.returncode == 0
        _, err = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    # Each request's greenlet (spawned from gevent's hub) is in the profile,
    # with the app's frames and its wait site.
    assert requests_in(greenprof.Report.from_file(out)) == (requests, requests)


GUNICORN_APP = """
import gevent

def lookup():
    gevent.sleep(0.001)  # each request's wait site
    return b"served"

def app(environ, start_response):
    body = lookup()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def test_run_of_gunicorn_writes_one_profile_per_worker_with_its_requests(tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    (tmp_path / "webapp.py").write_text(GUNICORN_APP)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "gunicorn.jsonl"
    server = subprocess.Popen(
        [
            *GREENPROF,
            "run",
            "-o",
            str(out),
            "-m",
            "gunicorn",
            "-k",
            "gevent",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "webapp:app",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    requests = 20
    try:
        for _ in range(600):  # until a worker answers
            try:
                http_get_blocking(port)
                break
            except OSError:
                time.sleep(0.05)
        for _ in range(requests - 1):
            assert http_get_blocking(port).endswith(b"served")
    finally:
        # gunicorn's gevent worker may hang for its graceful timeout when
        # SIGTERM comes right after it booted (without greenprof too): let
        # both workers settle first.
        time.sleep(1.5)
        server.send_signal(signal.SIGTERM)  # gunicorn stops its workers, then itself
        _, err = server.communicate(timeout=120)
    assert server.returncode == 0, err
    workers = sorted(tmp_path.glob("gunicorn.*.jsonl"))
    assert len(workers) == 2, err  # one per worker, named by its pid
    assert out.exists()  # the master's own
    counts = [requests_in(greenprof.Report.from_file(path)) for path in workers]
    assert sum(ended for ended, _ in counts) == requests
    assert sum(waits for _, waits in counts) == requests


def http_get_blocking(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


WAITING = """
import sys
import gevent

def napper():
    gevent.sleep(60)

nappers = [gevent.spawn(napper) for _ in range(3)]
for glet in nappers:
    glet.name = "napper"
gevent.sleep(0)  # they start, and wait
print("ready", flush=True)
sys.stdin.readline()  # the test signals, then says go on
gevent.killall(nappers)
print("done", flush=True)
"""


def test_run_dump_signal_shows_every_greenlet_and_the_program_goes_on(tmp_path: Path) -> None:
    script = tmp_path / "waiting.py"
    script.write_text(WAITING)
    process = subprocess.Popen(
        [*GREENPROF, "run", "--dump-signal", "USR1", "-o", str(tmp_path / "w.jsonl"), str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdin is not None
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGUSR1)
        time.sleep(0.5)  # the handler writes the dump as soon as the program checks
        process.stdin.write("go\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out == "done\n"
    assert err.count("Greenlet 'napper'") == 3
    assert "napper" in err.split("waits in:")[1]


def test_run_refuses_a_dump_signal_that_is_no_signal(tmp_path: Path) -> None:
    script = tmp_path / "nothing.py"
    script.write_text("")
    result = greenprof_command("run", "--dump-signal", "NOPE", str(script))
    assert result.returncode == 2
    assert "'NOPE' is not a signal" in result.stderr
    result = greenprof_command("run", "--dump-signal", "KILL", str(script))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1


STORM = """
import gevent

def work():
    for _ in range(3):
        gevent.sleep(0)

for wave in range(int(__import__("sys").argv[1])):
    gevent.joinall([gevent.spawn(work) for _ in range(500)])
"""


def test_a_busy_run_spools_everything_and_leaves_no_spool_behind(tmp_path: Path) -> None:
    script = tmp_path / "storm.py"
    script.write_text(STORM)
    spools = tmp_path / "tmp"
    spools.mkdir()
    waves = 12  # a few seconds of hand-overs, the last one under way at the end
    result = subprocess.run(
        [*GREENPROF, "run", "--no-progress", "-o", "storm.jsonl", str(script), str(waves)],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(spools)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    snapshots = greenprof.load(tmp_path / "storm.jsonl")
    ends = sum(s.event == "exit" for s in snapshots)
    assert ends == waves * 500  # every greenlet, to its end: nothing lost on the way
    assert [s.sequence for s in snapshots] == list(range(len(snapshots)))
    assert list(spools.iterdir()) == []  # the spool is gone
