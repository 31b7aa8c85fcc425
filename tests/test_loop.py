"""BackgroundLoop: greenprof's background threads."""

from __future__ import annotations

import sys
import threading

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
