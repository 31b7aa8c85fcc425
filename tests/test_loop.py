"""BackgroundLoop: greenprof's background threads."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from greenprof._loop import BackgroundLoop


def test_a_started_loop_is_already_running_in_its_thread() -> None:
    # start() returns once the thread runs: a thread left to come up later
    # could do so while the interpreter is still starting (sitecustomize).
    for _ in range(20):
        loop = BackgroundLoop(lambda: None, name="test loop")
        loop.start()
        try:
            assert loop.thread_id is not None
            assert loop.thread_id != threading.get_ident()
            assert loop.thread_id in sys._current_frames()
        finally:
            assert loop.stop(timeout=5.0)
        assert loop.starts == 1


def test_a_loops_thread_blocks_every_signal_and_the_main_thread_none() -> None:
    masks: list[set[int]] = []

    def step() -> float | None:
        masks.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        return None

    loop = BackgroundLoop(step, name="test loop")
    loop.start()
    try:
        deadline = time.monotonic() + 30  # a hang guard, not a time limit
        while not masks:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        assert loop.stop(timeout=5.0)
    wanted = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD}
    assert wanted <= masks[0]
    assert not wanted & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


#: A process whose main thread blocks SIGUSR1 while greenprof's sampler
#: thread runs, then sends itself one: the signal must wait for a thread of
#: the program's own to take it, as it would without greenprof.
SIGNAL_WAITS = """
import os, signal, time
import greenprof

ran = []
signal.signal(signal.SIGUSR1, lambda *args: ran.append(time.monotonic()))
profiler = greenprof.Profiler(mode="hybrid", dump_period=0.001)
profiler.start()  # its sampler: a thread of greenprof's
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
os.kill(os.getpid(), signal.SIGUSR1)
end = time.monotonic() + 0.3
while time.monotonic() < end:  # bytecodes: where a tripped handler would run
    pass
print("while blocked:", len(ran))
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
for _ in range(1000):
    pass
print("once unblocked:", len(ran))
profiler.stop()
"""


def test_a_signal_the_program_blocks_waits_for_it_and_is_not_taken_by_greenprof() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_WAITS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["while blocked: 0", "once unblocked: 1"]
