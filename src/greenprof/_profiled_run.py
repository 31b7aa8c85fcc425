"""The profiling of one ``greenprof run`` program: its profile written
once, however the program ends."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import attrs

from ._launch import Launch
from ._output import STDOUT, Destination, write_report
from ._profiler import Profiler
from ._progress import Progress
from ._report import Report
from .exceptions import GreenprofError
from .snapshot import Frame, Session, Snapshot

__all__ = ["ProfiledRun", "say"]


def say(line: str) -> None:
    """One line on stderr, if the program left one: a program may close
    it, and its exit status must not change for that."""
    stream = sys.stderr
    if stream is None or stream.closed:
        return
    # A whole line, flushed at once: if its descriptor is gone, the failed
    # write leaves nothing behind for python's own flush at exit to fail on.
    with contextlib.suppress(AttributeError, OSError, ValueError):
        stream.write(line + "\n")
        stream.flush()


# -- one run, in each of its processes -------------------------------------------------


class ProfiledRun:
    """The profiling of one program: its profile written once, however it
    ends (the program returning or exiting, ``os._exit``).

    Everything here runs in the program's main thread (the end of the
    run), or in the thread that calls ``os._exit``.
    """

    def __init__(
        self,
        profiler: Profiler,
        launch: Launch,
        destination: Destination,
        *,
        min_duration: float,
        progress: Progress | None,
    ) -> None:
        self.profiler = profiler
        self._launch = launch
        self._destination = destination
        self._min_duration_ns = round(min_duration * 1e9)
        self._progress = progress
        #: This process's profile was written (or given up).
        self._done = False
        self._real_exit: Callable[[int], NoReturn] = os._exit

    def start(self) -> None:
        os._exit = self._exit
        self.profiler.start()
        if self._progress is not None:
            self._progress.start()

    def finish(self) -> bool:
        """Write the profile and put back what :meth:`start` changed; False
        if the profile could not be written."""
        written = self._write_once()
        self._restore()
        return written

    def abandon(self) -> None:
        """Stop profiling and write nothing: none of the program ran."""
        self._done = True
        self._stop_profiling()
        self._restore()

    # -- ways a process ends -----------------------------------------------------------

    def _exit(self, status: int) -> NoReturn:
        """``os._exit`` while the program runs, which skips all that a
        normal exit runs: the profile is written first."""
        try:
            self._write_once()
        finally:
            self._real_exit(status)

    def _restore(self) -> None:
        if os._exit == self._exit:
            os._exit = self._real_exit  # type: ignore[assignment]

    # -- writing -----------------------------------------------------------------------

    def _write_once(self) -> bool:
        """Stop profiling and write this process's profile, the first time
        only; False if it could not be written."""
        if self._done:
            return True
        self._done = True
        try:
            self._stop_profiling()
            return self._write()
        except Exception as exc:  # whatever it is, the program's ending comes first
            say(f"greenprof: could not write the profile: {type(exc).__name__}: {exc}")
            return False

    def _stop_profiling(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.profiler.is_running:
            self.profiler.stop()

    def _write(self) -> bool:
        snapshots, session = self._recorded()
        pid = os.getpid()
        if session.duration_ns < self._min_duration_ns:
            say(
                f"greenprof: no profile written: process {pid} ran "
                f"{session.duration_ns / 1e9:.3g} s, less than --min-duration"
            )
            return True
        path = self._destination.path(pid)
        try:
            report = Report(snapshots, sessions=[session])
            write_report(report, self._destination.format, path)
        except (OSError, GreenprofError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            say(f"greenprof: cannot write {path}: {reason}")
            return False
        say(_summary(snapshots, path, session.mode))
        return True

    def _recorded(self) -> tuple[list[Snapshot], Session]:
        """The program's snapshots, without greenprof's own frames, and its
        session."""
        program_stack = _StackTrimmer(self._launch)
        snapshots = [program_stack.of(snapshot) for snapshot in self.profiler.snapshots]
        return snapshots, self.profiler.sessions[-1]


class _StackTrimmer:
    """Snapshots whose stacks start at the program's outermost frame, not
    at greenprof's, runpy's and importlib's frames that ran it."""

    def __init__(self, launch: Launch) -> None:
        self._launch = launch
        # Stacks are shared between snapshots: each is trimmed once.
        self._trimmed: dict[int, tuple[Frame, ...]] = {}

    def of(self, snapshot: Snapshot) -> Snapshot:
        stack = snapshot.stack
        if not stack or not self._launch.is_launcher(stack[0].filename):
            return snapshot
        trimmed = self._trimmed.get(id(stack))
        if trimmed is None:
            trimmed = self._trimmed[id(stack)] = self._launch.program_stack(stack)
        return attrs.evolve(snapshot, stack=trimmed)


def _summary(snapshots: Sequence[Snapshot], path: str, mode: str) -> str:
    count = len(snapshots)
    greenlets = len({snapshot.greenlet_id for snapshot in snapshots})
    line = (
        f"greenprof: {count} snapshot{'s' * (count != 1)} of {greenlets} "
        f"greenlet{'s' * (greenlets != 1)} written to {'stdout' if path == STDOUT else path}"
    )
    if mode == "greenlet" and all(s.event in ("start", "stop") for s in snapshots):
        line += (
            "; no greenlet switched, so greenlet mode saw none of the program's "
            "stacks (--mode hybrid samples them)"
        )
    return line
