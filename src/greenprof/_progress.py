"""Progress lines on stderr while ``greenprof run`` profiles a long program."""

from __future__ import annotations

import sys
import time

from ._profiler import Profiler
from ._threads import Waker, allocate_real_lock, block_signals, original

__all__ = ["Progress"]


class Progress:
    """One line on stderr every ``interval`` seconds while a program runs,
    from a real OS thread (the program's greenlets may be busy)."""

    def __init__(self, profiler: Profiler, interval: float, *, terminal: bool) -> None:
        self._profiler = profiler
        self._interval = interval
        self._terminal = terminal
        self._wake = Waker()
        self._done = allocate_real_lock()
        self._started = time.monotonic()

    def start(self) -> None:
        self._done.acquire()
        original("start_new_thread")(self._run, ())

    def stop(self) -> None:
        """Stop the thread, in the process that started it (a forked child
        has no such thread: its lock would never be released there)."""
        self._wake.wake()
        with self._done:  # wait for the last line, so it does not mix with ours
            pass
        if self._terminal:
            try:
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
            except (AttributeError, OSError, ValueError):  # the program closed it
                pass

    def _run(self) -> None:
        block_signals()
        try:
            while not self._wake.wait(self._interval):
                greenlets, snapshots = self._profiler._progress()
                line = (
                    f"greenprof: {time.monotonic() - self._started:,.1f} s, "
                    f"{snapshots:,} snapshots, {greenlets:,} greenlets followed"
                )
                sys.stderr.write(f"\r\033[K{line}" if self._terminal else f"{line}\n")
                sys.stderr.flush()
        except Exception:  # never let progress display hurt the program
            pass
        finally:
            self._done.release()
