"""install_signal_dump(): real programs, real signals, and the dump they write."""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import greenlet
import pytest

import greenprof
from greenprof import _signal_dump
from greenprof.exceptions import (
    ConfigurationError,
    GreenprofError,
    NotMainThreadError,
    WrongThreadError,
)

from .conftest import run_python

#: gevent's compiled waits (Event.wait, Queue.get, ...) are named from the
#: bytecode of their call, which greenprof reads on 3.11+ only.
NAMED_WAITS = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="wait sites of compiled gevent code are named on 3.11+"
)

HEADER = re.compile(
    r"^Greenlet '(?P<name>[^']*)' id=(?P<id>\d+) thread=(?P<thread>\S+)(?P<marks>.*)$", re.M
)


def greenlet_blocks(dump: str) -> dict[str, str]:
    """Each greenlet's part of ``dump``, by greenlet name; a name seen before
    (each thread has a ``main``) with `` id=<id>`` after it."""
    blocks = {}
    for chunk in dump.split("\n\n"):
        found = HEADER.match(chunk)
        if found is not None:
            key = found["name"]
            if key in blocks:
                key += f" id={found['id']}"
            assert key not in blocks, f"{key} listed twice"
            blocks[key] = chunk
    return blocks


def marked(blocks: dict[str, str], mark: str) -> list[str]:
    return [block for block in blocks.values() if mark in block.splitlines()[0]]


def line_with(source: str, marker: str) -> int:
    """The line number in ``source`` of the only line containing ``marker``."""
    lines = [n for n, text in enumerate(source.splitlines(), 1) if marker in text]
    assert len(lines) == 1, (marker, lines)
    return lines[0]


def start_program(
    path: Path, source: str, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Write ``source`` to ``path``, run it, and wait for its ``ready`` line
    (the rest of that line is returned)."""
    path.write_text(source)
    proc = subprocess.Popen(
        [sys.executable, str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    if not ready.startswith("ready"):
        proc.kill()
        _, stderr = proc.communicate(timeout=60)
        raise AssertionError(f"the program did not get ready: {ready!r}\n{stderr}")
    return proc, ready[len("ready") :].strip()


def signal_and_finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Send SIGUSR1, let the program finish, check it exited 0; its output.

    After a pause: a program that prints ``ready`` and then loops is in its
    loop by then, not in the ``print()`` before it."""
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGUSR1)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"the program did not finish after the dump:\n{stderr}") from None
    assert proc.returncode == 0, stderr
    return stdout, stderr


# -- a program with 50 greenlets waiting in known places ---------------------------

FIFTY = textwrap.dedent(
    """\
    import _thread
    import os
    import signal
    import sys

    MAIN_THREAD = _thread.get_ident()  # the real one, before any patching
    if os.environ.get("PATCH_ALL") == "1":
        from gevent import monkey

        monkey.patch_all()

    import gevent
    import gevent.event
    import gevent.socket

    import greenprof

    DUMP = sys.argv[1].replace("{pid}", str(os.getpid()))
    state = {"chained": 0, "dump_there_before_chaining": None}


    def on_usr1(signum, frame):
        state["chained"] += 1
        state["dump_there_before_chaining"] = os.path.getsize(DUMP) > 0


    def napper():
        gevent.sleep(60)  # WAIT napper


    def waiter(event):
        event.wait()  # WAIT waiter


    def listener(server):
        server.accept()  # WAIT listener


    def spin():
        print("ready", MAIN_THREAD, flush=True)
        while not state["chained"]: pass  # SPIN


    def spawn(name, function, *args):
        glet = gevent.spawn(function, *args)
        glet.name = name
        return glet


    def main():
        signal.signal(signal.SIGUSR1, on_usr1)
        previous = greenprof.install_signal_dump(signal.SIGUSR1, path=sys.argv[1])
        assert previous is on_usr1, previous
        event = gevent.event.Event()
        servers = []
        for _ in range(10):
            server = gevent.socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen()
            servers.append(server)
        greenlets = (
            [spawn(f"napper-{i}", napper) for i in range(20)]
            + [spawn(f"waiter-{i}", waiter, event) for i in range(20)]
            + [spawn(f"listener-{i}", listener, server) for i, server in enumerate(servers)]
        )
        gevent.sleep(0.2)
        assert all(glet.gr_frame is not None for glet in greenlets)
        spin()  # CALL spin
        event.set()
        gevent.killall(greenlets)
        for server in servers:
            server.close()
        ours = signal.signal(signal.SIGUSR1, previous)
        print("done", state["chained"], state["dump_there_before_chaining"], ours.dumps)


    main()
    """
)


@NAMED_WAITS
@pytest.mark.parametrize("patch_all", [False, True], ids=["unpatched", "patch_all"])
def test_dump_names_every_greenlet_with_its_wait_site_hub_and_interrupted_frame(
    tmp_path: Path, patch_all: bool
) -> None:
    program = tmp_path / "fifty.py"
    proc, main_thread = start_program(
        program,
        FIFTY,
        str(tmp_path / "dump-{pid}.txt"),
        env={"PATCH_ALL": "1" if patch_all else "0"},
    )
    stdout, _ = signal_and_finish(proc)
    assert stdout.split() == ["done", "1", "True", "1"]  # chained once, after the dump
    dump = (tmp_path / f"dump-{proc.pid}.txt").read_text()
    blocks = greenlet_blocks(dump)

    expected = {
        "napper": ("gevent.hub.sleep", 20),
        "waiter": ("gevent.event.Event.wait", 20),
        "listener": ("gevent._socket3.socket.accept", 10),
    }
    for function, (gevent_function, count) in expected.items():
        line = line_with(FIFTY, f"# WAIT {function}")
        site = f"{gevent_function}, called from {program}:{line} in {function}"
        assert f"{count:6d}  {site}\n" in dump  # the summary
        for number in range(count):
            block = blocks.pop(f"{function}-{number}")
            assert HEADER.match(block)["thread"] == main_thread  # type: ignore[index]
            assert f"\n  waits in: {site}\n" in block
            assert "suspended for an unknown time (no greenprof session watches it)" in block
            assert f"    {program}:{line} in {function}\n" in block
            assert f"# WAIT {function}" in block  # the source line

    hubs = marked(blocks, "[hub]")
    assert len(hubs) == 1
    assert f"thread={main_thread} [hub]" in hubs[0]
    assert "waits in: gevent.hub.Hub.run (the event loop)" in hubs[0]
    (main,) = marked(blocks, "[main greenlet]")
    assert main.startswith("Greenlet 'main' id=")
    assert "running (interrupted by the signal)" in main
    stack = main.split("stack (outermost first):\n")[1]
    assert stack.index(f"{program}:{line_with(FIFTY, '# CALL spin')} in main") < stack.index(
        f"{program}:{line_with(FIFTY, '# SPIN')} in spin"
    )
    assert stack.rstrip().endswith("# SPIN")  # innermost: where it was interrupted
    assert "greenprof" not in stack  # none of the handler's own frames
    assert len(blocks) == 2  # the hub and the main greenlet: nothing else lives
    assert dump.startswith(f"greenprof dump of process {proc.pid} at ")
    assert "52 live greenlets (1 running, 51 suspended, 0 not started)" in dump
    if patch_all:
        assert "(monkey-patched)" in dump


def test_installed_before_gevent_is_imported_or_patches_anything(tmp_path: Path) -> None:
    # How a launcher (``greenprof run``) would use it: before the program's code.
    result = run_python(
        f"""
        import json, os, signal, sys
        import greenprof
        greenprof.install_signal_dump(signal.SIGUSR1, path={str(tmp_path / "dump.txt")!r})
        assert "gevent" not in sys.modules
        from gevent import monkey
        monkey.patch_all()
        import gevent
        late = gevent.spawn(gevent.sleep, 60)
        late.name = "late"
        gevent.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)
        late.kill()
        print(json.dumps(signal.getsignal(signal.SIGUSR1).dumps))
        """
    )
    assert result == 1
    blocks = greenlet_blocks((tmp_path / "dump.txt").read_text())
    assert "waits in: gevent.hub.sleep\n" in blocks["late"]
    assert len(marked(blocks, "[hub]")) == 1


# -- stderr, while the hub runs the loop ---------------------------------------------

TO_STDERR = textwrap.dedent(
    """\
    import signal

    import gevent
    import gevent.event

    import greenprof

    done = gevent.event.Event()


    def on_usr1(signum, frame):
        # No switch in a signal handler: the loop sets the event later.
        gevent.get_hub().loop.run_callback(done.set)


    def ready():
        print("ready", flush=True)


    def main():
        signal.signal(signal.SIGUSR1, on_usr1)
        greenprof.install_signal_dump()
        napper = gevent.spawn(gevent.sleep, 60)
        # Printed by the hub, once this greenlet waits: the signal lands there.
        gevent.get_hub().loop.run_callback(ready)
        done.wait()  # WAIT main
        napper.kill()
        print("done", signal.getsignal(signal.SIGUSR1).dumps)


    main()
    """
)


@NAMED_WAITS
def test_dump_goes_to_stderr_without_a_path(tmp_path: Path) -> None:
    program = tmp_path / "to_stderr.py"
    proc, _ = start_program(program, TO_STDERR)
    stdout, stderr = signal_and_finish(proc)
    assert stdout.split() == ["done", "1"]
    assert stderr.startswith(f"greenprof dump of process {proc.pid} at ")
    assert "on signal SIGUSR1 (10)" in stderr.splitlines()[0]
    blocks = greenlet_blocks(stderr)
    # Everything waits: the signal lands in the hub, running the loop.
    (hub,) = marked(blocks, "[hub]")
    assert "running (interrupted by the signal)" in hub
    assert "gevent/hub.py" in hub
    (main,) = marked(blocks, "[main greenlet]")
    line = line_with(TO_STDERR, "# WAIT main")
    assert f"waits in: gevent.event.Event.wait, called from {program}:{line} in main\n" in main
    assert len(blocks) == 3


# -- chaining, restoring, and failures --------------------------------------------

CHAINED = textwrap.dedent(
    """\
    import os
    import shutil
    import signal
    import sys

    import greenprof

    calls = []


    def on_usr1(signum, frame):
        calls.append((signum, frame.f_code.co_name))


    def spin():
        print("ready", flush=True)
        while not calls: pass


    signal.signal(signal.SIGUSR1, on_usr1)
    previous = greenprof.install_signal_dump(signal.SIGUSR1, path=sys.argv[1])
    if sys.argv[2] == "remove-folder":
        shutil.rmtree(os.path.dirname(sys.argv[1]))
    spin()
    ours = signal.signal(signal.SIGUSR1, previous)
    print(previous is on_usr1, signal.getsignal(signal.SIGUSR1) is on_usr1, calls, ours.errors)
    """
)


def test_dump_chains_to_the_previous_handler_which_can_be_put_back(tmp_path: Path) -> None:
    proc, _ = start_program(tmp_path / "chained.py", CHAINED, str(tmp_path / "dump.txt"), "-")
    stdout, stderr = signal_and_finish(proc)
    assert stdout.strip() == "True True [(10, 'spin')] 0"
    assert "Greenlet 'main'" in (tmp_path / "dump.txt").read_text()
    assert stderr == ""


def test_a_dump_that_cannot_be_written_is_reported_and_the_program_goes_on(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    proc, _ = start_program(
        tmp_path / "chained.py", CHAINED, str(folder / "dump.txt"), "remove-folder"
    )
    stdout, stderr = signal_and_finish(proc)
    assert stdout.strip() == "True True [(10, 'spin')] 1"  # still chained; counted
    assert stderr.startswith(f"greenprof: the dump on signal 10 to {folder / 'dump.txt'} failed: ")
    assert "FileNotFoundError" in stderr


# -- the program's behaviour is unchanged --------------------------------------------

NAMES = textwrap.dedent(
    """\
    import os
    import signal
    import sys

    import gevent

    import greenprof

    chained = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: chained.append(signum))
    if sys.argv[1] != "-":
        greenprof.install_signal_dump(signal.SIGUSR1, path=sys.argv[1])
    greenlets = [gevent.spawn(gevent.sleep, 60) for _ in range(5)]
    gevent.sleep(0.1)
    print("ready", flush=True)
    while not chained:
        gevent.sleep(0.01)
    # gevent numbers the names it makes up in the order they are first read.
    fresh = gevent.Greenlet(gevent.sleep)
    print(fresh.name)
    print(*[glet.name for glet in greenlets])
    gevent.killall(greenlets)
    print("exit")
    """
)


def test_the_program_goes_on_with_gevent_names_as_in_a_run_without_dump(tmp_path: Path) -> None:
    outputs = []
    for dump in (str(tmp_path / "dump.txt"), "-"):
        proc, _ = start_program(tmp_path / "names.py", NAMES, dump)
        stdout, stderr = signal_and_finish(proc)
        assert stderr == ""
        outputs.append(stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].splitlines() == [
        "Greenlet-0",
        "Greenlet-1 Greenlet-2 Greenlet-3 Greenlet-4 Greenlet-5",
        "exit",
    ]
    dump = (tmp_path / "dump.txt").read_text()
    assert len(re.findall(r"Greenlet 'Greenlet-0x[0-9a-f]+'", dump)) == 5  # greenprof's own names


@NAMED_WAITS
def test_the_example_service_dumps_its_greenlets() -> None:
    example = Path(__file__).parent.parent / "examples" / "live_dump.py"
    proc = subprocess.Popen(
        [sys.executable, str(example)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline().startswith(f"pid {proc.pid}: ")
        gevent.sleep(0.5)  # the greenlets start waiting
        os.kill(proc.pid, signal.SIGUSR1)
        dump = ""
        while "since it switched out" not in dump:  # only slow-request is profiled
            line = proc.stderr.readline()
            assert line, dump
            dump += line
    finally:
        proc.terminate()
        proc.communicate()
        watchdog.cancel()
    assert "     3  gevent.queue.SimpleQueue.get, called from " in dump
    assert "     1  gevent._socket3.socket.accept, called from " in dump
    assert re.search(r"gevent\.hub\.sleep, called from \S+live_dump.py:\d+ in slow_request", dump)
    assert re.search(r"Greenlet 'slow-request' .*\n  suspended for \d+\.\d+ s, since it", dump)


# -- in this process: what a dump says about durations, threads, odd greenlets ------


@pytest.fixture
def restore_sigusr1() -> Iterator[None]:
    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)


def dump_here(path: Path) -> str:
    """Install the dump on SIGUSR1, send it to this process, return what it wrote."""
    greenprof.install_signal_dump(signal.SIGUSR1, path=path)
    handler: Any = signal.getsignal(signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR1)
    for _ in range(1000):  # the handler runs between two bytecodes of this thread
        if handler.dumps:
            break
    assert (handler.dumps, handler.errors) == (1, 0)
    assert gc.isenabled()  # turned off during the dump only
    return path.read_text()


def sleep_profiled() -> None:
    with greenprof.profile():
        gevent.sleep(60)


def sleep_unwatched() -> None:
    gevent.sleep(60)


def test_durations_only_for_greenlets_a_session_watches(
    tmp_path: Path, restore_sigusr1: None
) -> None:
    watched = gevent.spawn(sleep_profiled)
    watched.name = "watched"
    unwatched = gevent.spawn(sleep_unwatched)
    unwatched.name = "unwatched"
    with greenprof.profile():
        gevent.sleep(0.3)
        dump = dump_here(tmp_path / "dump.txt")
    gevent.killall([watched, unwatched])
    blocks = greenlet_blocks(dump)
    found = re.search(r"suspended for (\d+\.\d+) s, since it switched out", blocks["watched"])
    assert found is not None, blocks["watched"]
    assert 0.25 < float(found[1]) < 30
    assert "suspended for an unknown time (no greenprof session watches it)" in blocks["unwatched"]
    running = re.search(
        r"running \(interrupted by the signal\) for (\d+\.\d+) s, since it was switched in",
        blocks["main"],
    )
    assert running is not None, blocks["main"]
    assert float(running[1]) < 0.25  # it was switched in after the 0.3 s sleep


def other_thread_napper(stop: threading.Event) -> None:
    while not stop.is_set():
        gevent.sleep(0.005)


def thread_with_a_hub(stop: threading.Event) -> None:
    glet = gevent.spawn(other_thread_napper, stop)
    glet.name = "other-thread-napper"
    glet.join()
    gevent.get_hub().destroy(destroy_loop=True)


def idle_worker(stop: threading.Event) -> None:
    stop.wait()


def pool_task(stop: threading.Event) -> None:
    stop.wait()


def test_greenlets_of_other_threads_and_threads_without_greenlets(
    tmp_path: Path, restore_sigusr1: None
) -> None:
    stop = threading.Event()
    with_hub = threading.Thread(target=thread_with_a_hub, args=(stop,))
    plain = threading.Thread(target=idle_worker, args=(stop,), name="idle-worker")
    with_hub.start()
    plain.start()
    in_pool = gevent.get_hub().threadpool.spawn(pool_task, stop)
    try:
        gevent.sleep(0.2)
        dump = dump_here(tmp_path / "dump.txt")
    finally:
        stop.set()
        with_hub.join()
        plain.join()
        in_pool.get()
    block = greenlet_blocks(dump)["other-thread-napper"]
    assert f"thread={with_hub.ident}\n" in block
    assert "in other_thread_napper" in block
    assert f"Thread {with_hub.ident} 'Thread-" in dump  # its section, by name
    others = dump.split("OS threads without known greenlets\n")[1]
    plain_part = others.split(f"  Thread {plain.ident} 'idle-worker'\n")[1]
    assert "in idle_worker" in plain_part.split("\n\n")[0]
    # A gevent thread pool's worker: its greenlet runs the task in its thread.
    (worker,) = [b for b in greenlet_blocks(dump).values() if "in pool_task" in b]
    assert worker.startswith("Greenlet '_WorkerGreenlet-0x")
    assert "running (in its thread)" in worker
    assert "thread=unknown" not in worker


def never_started() -> None:
    raise AssertionError("never runs")


def switch_back(parent: greenlet.greenlet) -> None:
    parent.switch()  # WAIT plain


@NAMED_WAITS
def test_plain_and_not_started_greenlets(tmp_path: Path, restore_sigusr1: None) -> None:
    plain = greenlet.greenlet(switch_back)
    plain.switch(greenlet.getcurrent())
    idle = greenlet.greenlet(never_started)
    lazy = gevent.Greenlet(never_started)
    dump = dump_here(tmp_path / "dump.txt")
    blocks = greenlet_blocks(dump)
    here = __file__
    line = switch_back.__code__.co_firstlineno + 1
    (plain_block,) = [b for b in blocks.values() if f"id={id(plain)} " in b]
    assert f"suspended in: greenlet.greenlet.switch, called from {here}:{line} in switch_back" in (
        plain_block
    )
    for glet in (idle, lazy):
        (block,) = [b for b in blocks.values() if f"id={id(glet)} " in b]
        assert "\n  not started\n" in block
        assert f"will run: {__name__}.never_started" in block
    plain.throw(greenlet.GreenletExit)


class Holder:
    reads = 0

    def __init__(self) -> None:
        self._event = gevent.event.Event()

    @property
    def event(self) -> gevent.event.Event:
        Holder.reads += 1
        return self._event


def wait_behind_a_property(holder: Holder) -> None:
    holder.event.wait()


@NAMED_WAITS
def test_naming_a_wait_site_runs_none_of_the_programs_code(
    tmp_path: Path, restore_sigusr1: None
) -> None:
    holder = Holder()
    glet = gevent.spawn(wait_behind_a_property, holder)
    gevent.sleep(0.01)
    assert Holder.reads == 1
    block = greenlet_blocks(dump_here(tmp_path / "dump.txt"))[f"Greenlet-{id(glet):#x}"]
    assert Holder.reads == 1  # the property was not read again
    line = wait_behind_a_property.__code__.co_firstlineno + 1
    # Named as the source spells it: what the property gives is not known.
    assert (
        f"  suspended in: holder.event.wait, called from {__file__}:{line} in "
        "wait_behind_a_property\n"
    ) in block
    glet.kill()


def test_installing_again_replaces_the_dump_and_keeps_the_chain(
    tmp_path: Path, restore_sigusr1: None
) -> None:
    calls = []
    program_handler = lambda signum, frame: calls.append(signum)  # noqa: E731
    signal.signal(signal.SIGUSR1, program_handler)
    first = greenprof.install_signal_dump(signal.SIGUSR1, path=tmp_path / "first.txt")
    second = greenprof.install_signal_dump(signal.SIGUSR1, path=str(tmp_path / "second.txt"))
    assert first is program_handler
    assert type(second) is _signal_dump.SignalDumpHandler
    os.kill(os.getpid(), signal.SIGUSR1)
    for _ in range(1000):
        if calls:
            break
    assert calls == [signal.SIGUSR1]
    assert not (tmp_path / "first.txt").exists()
    assert "Greenlet 'main'" in (tmp_path / "second.txt").read_text()
    signal.signal(signal.SIGUSR1, second)  # the first dump back
    assert signal.getsignal(signal.SIGUSR1) is second


def test_a_failing_dump_never_raises_into_the_program(
    tmp_path: Path, restore_sigusr1: None, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    def broken(frame: object, signum: int) -> str:
        raise RuntimeError("no dump today")

    monkeypatch.setattr(_signal_dump, "render_dump", broken)
    calls = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    greenprof.install_signal_dump(signal.SIGUSR1)
    handler: Any = signal.getsignal(signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR1)
    for _ in range(1000):
        if calls:
            break
    assert calls == [signal.SIGUSR1]
    assert (handler.dumps, handler.errors) == (0, 1)
    assert "greenprof: the dump on signal 10 to stderr failed: RuntimeError: no dump today" in (
        capfd.readouterr().err
    )


# -- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "message"),
    [
        (signal.SIGKILL, "SIGKILL cannot be caught"),
        (signal.SIGSTOP, "SIGSTOP cannot be caught"),
        (0, "0 is not a signal number on this system"),
        (100_000, "100000 is not a signal number on this system"),
        ("SIGUSR1", "takes a signal number such as signal.SIGUSR1, not 'SIGUSR1'"),
        (True, "not True"),
        (None, "not None"),
    ],
)
def test_a_bad_signal_raises_configuration_error(
    signum: Any, message: str, restore_sigusr1: None
) -> None:
    before = {number: signal.getsignal(number) for number in (signal.SIGUSR1, signal.SIGKILL)}
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        greenprof.install_signal_dump(signum)
    assert "Use signal.SIGUSR1" in str(info.value) or "such as signal.SIGUSR1" in str(info.value)
    assert before == {number: signal.getsignal(number) for number in before}


def test_a_bad_path_raises_configuration_error(tmp_path: Path, restore_sigusr1: None) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    missing = tmp_path / "missing" / "dump.txt"
    with pytest.raises(ConfigurationError, match="in a folder that does not exist") as info:
        greenprof.install_signal_dump(signal.SIGUSR1, path=missing)
    assert "Create the folder first" in str(info.value)
    with pytest.raises(ConfigurationError, match="is a folder"):
        greenprof.install_signal_dump(signal.SIGUSR1, path=tmp_path)
    with pytest.raises(ConfigurationError, match="path must be a file name"):
        greenprof.install_signal_dump(signal.SIGUSR1, path=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="path is empty"):
        greenprof.install_signal_dump(signal.SIGUSR1, path="")
    assert signal.getsignal(signal.SIGUSR1) is before


def test_installing_from_another_thread_raises_not_main_thread_error(
    restore_sigusr1: None,
) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    raised: list[BaseException] = []

    def install() -> None:
        try:
            greenprof.install_signal_dump(signal.SIGUSR1)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    (error,) = raised
    assert isinstance(error, NotMainThreadError)
    assert isinstance(error, ConfigurationError)
    assert isinstance(error, WrongThreadError)
    assert isinstance(error, GreenprofError)
    assert "must be called from the main thread" in str(error)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_dump_leaves_no_garbage_cycle_of_frames() -> None:
    from greenprof._dump import render_dump

    render_dump(sys._getframe())  # once: what is made on the first dump only
    gc.collect()
    gc.disable()
    try:
        text = render_dump(sys._getframe())
        left = gc.collect()  # the scan held the frames, and they the scan
    finally:
        gc.enable()
    assert "test_a_dump_leaves_no_garbage_cycle_of_frames" in text
    assert left == 0
