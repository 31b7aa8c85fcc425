"""The profiling of one ``greenprof run`` program in each of its processes:
the process greenprof started and every child the program forks each write
their own profile once, however they end, and then end as they would have."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any, Final, NoReturn

import attrs
import greenlet

from ._launch import Launch
from ._loop import BackgroundLoop
from ._other_threads import ThreadFollower
from ._output import STDOUT, Destination
from ._profiler import Profiler
from ._progress import Progress
from ._run_output import Tally, write_profile
from ._session import new_session_id
from ._spool import Spool
from ._threads import thread_ident
from .exceptions import GreenprofError
from .snapshot import Session, Snapshot

__all__ = ["ENDING_SIGNALS", "ProfiledRun", "child_session", "say", "since_fork"]

#: Seconds between two hand-overs of what the run recorded to its spool.
SPOOL_INTERVAL: Final = 0.5
#: Seconds the end of a run waits for a hand-over under way to finish.
LAST_HAND_OVER: Final = 120.0

#: Signals whose default action ends the process without Python seeing it:
#: handled while the program runs, to write the profile first. (SIGINT
#: raises KeyboardInterrupt in the program, which may catch it: left to python.)
ENDING_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def say(line: str) -> None:
    """One line on stderr, if the program left one: a program may close
    it, and its exit status must not change for that."""
    stream = sys.stderr
    if stream is None or stream.closed:
        return
    with contextlib.suppress(AttributeError, OSError, ValueError):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file: a StringIO, say
            stream.write(line + "\n")
            stream.flush()
            return
        # Straight to the descriptor, after what the program wrote: a write
        # to a descriptor the program closed fails and leaves nothing in
        # python's buffer for its own flush at exit to fail on (which would
        # change the exit status to 120).
        stream.flush()
        os.write(fd, (line + "\n").encode(stream.encoding or "utf-8", "backslashreplace"))


# -- one run, in each of its processes -------------------------------------------------


class ProfiledRun:
    """The profiling of one program, in the process greenprof started and in
    each child the program forks: every process writes its own profile
    once, however it ends (the program returning or exiting, ``os._exit``,
    SIGTERM, SIGHUP), and then ends as it would have without greenprof.

    Everything here runs in the program's main thread (signal handlers,
    the end of the run), or in the thread that calls ``os._exit``.
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
        #: In a forked child: when it was forked (wall-clock ns, on the
        #: snapshots' clock) and by which greenlet.
        self._fork: tuple[int, int] | None = None
        #: This process's profile was written (or given up).
        self._done = False
        #: The file this process's profile went to, once written there.
        self.written: str | None = None
        self._writing = False
        #: A signal that came while the profile was being written, to end by
        #: once it is whole.
        self._deferred: int | None = None
        #: The handlers replaced, by signal.
        self._replaced: dict[int, Any] = {}
        self._real_exit: Callable[[int], NoReturn] = os._exit
        #: What the run records goes to a file as it goes (a forked child's
        #: to a file of its own, and the loop restarts there).
        self._spool = Spool()
        self._loop = BackgroundLoop(self._hand_over, name="greenprof-run")
        #: Follows the greenlets of the threads the program starts (not in
        #: thread mode, which samples the main thread only).
        self._threads = (
            ThreadFollower(profiler, profiler._pipeline.wall_ns) if profiler.follow_all else None
        )

    def start(self) -> None:
        for signum in ENDING_SIGNALS:
            # Only where the default would end the process: an ignored
            # signal (nohup) stays ignored.
            if signal.getsignal(signum) is signal.SIG_DFL:
                try:
                    self._replaced[signum] = signal.signal(signum, self._on_signal)
                except ValueError:  # not the main thread (run from code): nothing to handle
                    break
        os.register_at_fork(after_in_child=self._after_fork_in_child)
        os._exit = self._exit
        self.profiler.add_sink(self._spool)
        self.profiler.start()
        if self._threads is not None:
            self._threads.start()
        self._loop.start()
        if self._progress is not None:
            self._progress.start()

    def finish(self) -> bool:
        """Write the profile and put back what :meth:`start` changed; False
        if the profile could not be written."""
        written = self._write_once()
        self._restore()
        return written

    @property
    def forked(self) -> bool:
        """Whether this process is a child the program forked."""
        return self._fork is not None

    def abandon(self) -> None:
        """Stop profiling and write nothing: none of the program ran."""
        self._done = True
        self._stop_profiling()
        self._spool.remove()
        self._restore()

    def _hand_over(self) -> float:
        # In the loop's thread: what was recorded goes to the spool, so
        # that memory stays flat however long the program runs. Written
        # when this returns: the end of the run reads the spool after it.
        self.profiler.flush(LAST_HAND_OVER)
        return SPOOL_INTERVAL

    # -- ways a process ends -----------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM or SIGHUP, whose default action ends the process: write
        the profile, then end by that signal, as the program would have."""
        if self._writing:  # end once the profile is whole
            self._deferred = signum
            return
        signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
        self._write_once()
        _die_of(signum, self._real_exit)

    def _exit(self, status: int) -> NoReturn:
        """``os._exit`` while the program runs. A forked child usually ends
        this way (multiprocessing's always do), skipping all that a normal
        exit runs: its profile is written first."""
        try:
            self._write_once()
        finally:
            self._real_exit(status)

    def _after_fork_in_child(self) -> None:
        if self._done:
            return
        now = self.profiler._pipeline.wall_ns(time.perf_counter_ns())
        self._fork = (now, id(greenlet.getcurrent()))
        self._progress = None  # its thread stayed in the parent

    def _restore(self) -> None:
        if os._exit == self._exit:
            os._exit = self._real_exit  # type: ignore[assignment]
        for signum, previous in self._replaced.items():
            if signal.getsignal(signum) == self._on_signal:  # not replaced by the program
                signal.signal(signum, previous)
        self._replaced.clear()

    # -- writing -----------------------------------------------------------------------

    def _write_once(self) -> bool:
        """Stop profiling and write this process's profile, the first time
        only; False if it could not be written."""
        if self._done:
            return True
        self._done = self._writing = True
        try:
            self._stop_profiling()
            return self._write()
        except Exception as exc:  # whatever it is, the program's ending comes first
            say(f"greenprof: could not write the profile: {type(exc).__name__}: {exc}")
            return False
        finally:
            self._writing = False
            if self._deferred is not None:
                _die_of(self._deferred, self._real_exit)

    def _stop_profiling(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        # Its hand-over must be done before the spool is read (building and
        # writing a busy program's last seconds can take a while).
        self._loop.stop(LAST_HAND_OVER)
        if self._threads is not None:
            self._threads.stop()  # before the profiler: no thread starts it again
        if self.profiler.is_running:
            self.profiler.stop()  # hands the rest over to the spool

    def _write(self) -> bool:
        try:
            return self._write_spooled()
        finally:
            self._spool.remove()

    def _write_spooled(self) -> bool:
        self.profiler.flush(LAST_HAND_OVER)  # all of it written before it is read
        session = self._session()
        forked = self._fork is not None
        pid = os.getpid()
        if session.duration_ns < self._min_duration_ns:
            say(
                f"greenprof: no profile written: process {pid} ran "
                f"{session.duration_ns / 1e9:.3g} s, less than --min-duration"
            )
            return True
        path = self._destination.path(pid, forked=forked)
        if path is None:
            say(f"greenprof: no profile of forked process {pid}: stdout is its parent's (-o -)")
            return True
        try:
            tally = write_profile(self._snapshots(session), session, self._destination.format, path)
        except (OSError, GreenprofError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            say(f"greenprof: cannot write {path}: {reason}")
            return False
        say(_summary(tally, path, session.mode))
        self.written = None if path == STDOUT else path
        return True

    def _recorded(self) -> Iterator[Snapshot]:
        """What this process recorded, read as it is used, in sequence
        order: the spool, then what was not handed over to it."""
        return itertools.chain(self._spool.snapshots(), self.profiler.snapshots)

    def _session(self) -> Session:
        """This process's session: a followed thread's time ends with it,
        and a forked child's is its own part of it."""
        session = self.profiler.sessions[-1]
        if self._threads is not None:
            session = self._threads.clipped(session)
        if self._fork is not None:
            fork_ns, forker = self._fork
            session = child_session(self._recorded(), session, fork_ns, forker)
        return session

    def _snapshots(self, session: Session) -> Iterator[Snapshot]:
        """What the profile holds: this process's snapshots (a forked
        child's from the fork on, renumbered), without greenprof's frames."""
        snapshots = self._recorded()
        if self._fork is not None:
            snapshots = since_fork(snapshots, session.session_id, self._fork[0])
        trimmer = _StackTrimmer(self._launch)
        return map(trimmer.of, snapshots)


class _StackTrimmer:
    """Snapshots whose stacks start at the program's outermost frame, not
    at greenprof's, runpy's and importlib's frames that ran it."""

    def __init__(self, launch: Launch) -> None:
        self._launch = launch
        # Whether a file's frames launched the program, by file name (a
        # program has a bounded number of files).
        self._launcher: dict[str, bool] = {}

    def of(self, snapshot: Snapshot) -> Snapshot:
        stack = snapshot.stack
        launcher = self._launcher
        start = 0
        while start < len(stack):
            filename = stack[start].filename
            found = launcher.get(filename)
            if found is None:
                found = launcher[filename] = self._launch.is_launcher(filename)
            if not found:
                break
            start += 1
        return attrs.evolve(snapshot, stack=stack[start:]) if start else snapshot


def child_session(
    snapshots: Iterable[Snapshot], session: Session, fork_ns: int, forker: int
) -> Session:
    """The session of a forked child: what it inherited, from the fork on,
    under an id of its own, so that its file repeats none of its parent's.

    Its greenlets count from the fork (those it picked up later, from their
    first snapshot); the one that forked was running then, and the others
    waiting; those that had ended are left out. ``snapshots`` are read up
    to the fork only.
    """
    last_before: dict[int, str] = {}
    for snapshot in snapshots:
        if snapshot.timestamp_ns >= fork_ns:
            break  # in sequence order: the rest is the child's own
        last_before[snapshot.greenlet_id] = snapshot.event
    bounds = {}
    for greenlet_id, (start, stop) in session.bounds.items():
        if last_before.get(greenlet_id) == "exit":
            continue
        if start or greenlet_id in last_before:
            start = max(start, fork_ns)
        bounds[greenlet_id] = (start, stop)
    return attrs.evolve(
        session,
        session_id=new_session_id(),
        start_ns=fork_ns,
        running_at_start={forker} & bounds.keys(),
        bounds=bounds,
    )


def since_fork(snapshots: Iterable[Snapshot], session_id: str, fork_ns: int) -> Iterator[Snapshot]:
    """A forked child's snapshots: those from the fork on, numbered from 0,
    in its own session ``session_id``."""
    sequence = 0
    for snapshot in snapshots:
        if snapshot.timestamp_ns >= fork_ns:
            yield attrs.evolve(snapshot, session_id=session_id, sequence=sequence)
            sequence += 1


def _summary(tally: Tally, path: str, mode: str) -> str:
    count = tally.snapshots
    greenlets = tally.greenlets
    line = (
        f"greenprof: {count} snapshot{'s' * (count != 1)} of {tally.greenlets_shown} "
        f"greenlet{'s' * (greenlets != 1)} written to {'stdout' if path == STDOUT else path}"
    )
    if mode == "greenlet" and not tally.switched:
        line += (
            "; no greenlet switched, so greenlet mode saw none of the program's "
            "stacks (--mode hybrid samples them)"
        )
    return line


def _die_of(signum: int, exit: Callable[[int], NoReturn]) -> NoReturn:
    """End the process by ``signum``, as its default action does."""
    signal.signal(signum, signal.SIG_DFL)
    if hasattr(signal, "pthread_kill"):
        # To this thread: delivered before pthread_kill returns.
        signal.pthread_kill(thread_ident(), signum)
    else:  # pragma: no cover - not POSIX
        os.kill(os.getpid(), signum)
    exit(128 + signum)  # only if the signal is blocked here
