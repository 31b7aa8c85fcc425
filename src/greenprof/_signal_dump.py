"""``install_signal_dump()``: on a signal, a dump of every live greenlet of
the process, written from the handler without switching, locking or raising.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Final, TypeAlias

from ._dump import render_dump
from ._entries import runs_the_program
from ._signals import redeliver
from ._threads import real_sleep
from .exceptions import ConfigurationError, NotMainThreadError

__all__ = ["PreviousHandler", "SignalDumpHandler", "install_signal_dump"]

#: What ``signal.signal()`` returns: a Python-level handler, ``SIG_DFL`` or
#: ``SIG_IGN``, or None when the handler was not installed from Python.
PreviousHandler: TypeAlias = Callable[[int, FrameType | None], Any] | int | None

_SIGUSR1: Final[int] = getattr(signal, "SIGUSR1", 10)
#: Signals no process can catch.
_UNCATCHABLE: Final = {
    number: name
    for name in ("SIGKILL", "SIGSTOP")
    if (number := getattr(signal, name, None)) is not None
}
#: How long a write to a full non-blocking stderr is retried, in 1 ms steps.
_BLOCKED_RETRIES: Final = 2000


class SignalDumpHandler:
    """The handler :func:`install_signal_dump` installs (``signal.getsignal``
    gives it back): it writes the dump, then calls ``previous``.

    ``dumps`` counts the dumps written, ``errors`` the ones that failed
    (each reported in one line on stderr, never raised into the program).
    """

    __slots__ = ("busy", "dumps", "errors", "path", "previous", "signum")

    def __init__(self, signum: int, path: str | None) -> None:
        self.signum = signum
        #: An absolute file name, ``{pid}`` still in it; None for stderr.
        self.path = path
        self.previous: PreviousHandler = None
        self.dumps = 0
        self.errors = 0
        self.busy = False

    @runs_the_program  # the program's own handler, chained
    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # Python may run the handler again, for the same signal sent twice,
        # between two bytecodes of this one: one dump is enough.
        if not self.busy:
            self.busy = True
            try:
                self._dump(signum, frame)
            finally:
                self.busy = False
        previous = self.previous
        if callable(previous):
            # The program's own handler: what it raises is the program's.
            previous(signum, frame)

    def _dump(self, signum: int, frame: FrameType | None) -> None:
        try:
            # The dump allocates a lot: without a collection meanwhile, no
            # finalizer of the program's runs (and maybe switches) inside it.
            collecting = gc.isenabled()
            gc.disable()
            try:
                text = render_dump(frame, signum)
            finally:
                if collecting:
                    gc.enable()
            self._write(text.encode("utf-8", "backslashreplace"))
            self.dumps += 1
        except BaseException as exc:
            self.errors += 1
            where = "stderr" if self.path is None else self.target()
            with contextlib.suppress(Exception):
                _write_all(
                    2,
                    f"greenprof: the dump on signal {signum} to {where} failed: "
                    f"{type(exc).__name__}: {exc}\n".encode("utf-8", "backslashreplace"),
                )
            redeliver(exc)

    def target(self) -> str:
        """The file the next dump goes to: ``path`` with this process's id."""
        return (self.path or "").replace("{pid}", str(os.getpid()))

    def _write(self, data: bytes) -> None:
        # Raw file descriptors: sys.stderr may be an object that switches
        # greenlets or takes a lock under gevent.
        if self.path is None:
            _write_all(2, data)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.target(), flags, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    retries = 0
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:  # a non-blocking stderr, full for now
            if retries == _BLOCKED_RETRIES:
                raise
            retries += 1
            real_sleep(0.001)
            continue
        view = view[written:]


def install_signal_dump(
    signum: int = _SIGUSR1, path: str | os.PathLike[str] | None = None
) -> PreviousHandler:
    """Dump every live greenlet of the process when it gets signal ``signum``.

    The dump (see README.rst, "Live view of a running process") goes to
    stderr, or is appended to the file ``path`` (``{pid}`` in it becomes the
    id of the process that writes the dump, so a forked child writes its
    own; a relative path is made absolute now). For each greenlet: its name,
    id and OS thread, whether it runs, is suspended or has not started, its
    stack, where it waits in gevent, and for how long when a greenprof
    session watches it.

    Call it from the main thread, whenever (before the program's own code
    is fine: it imports nothing and needs no hub). The handler never
    switches greenlets, takes no lock and never raises into the program: a
    failed dump is counted and reported in one line on stderr.

    Returns the handler that was installed for ``signum`` before (a
    callable, ``signal.SIG_DFL``, ``signal.SIG_IGN``, or None if it was
    not installed from Python); ``signal.signal(signum, previous)`` puts it
    back. A callable previous handler is called after each dump, with the
    same arguments; what it raises reaches the program, as it would have.
    ``SIG_DFL`` is not: the signal's default action (for SIGUSR1, ending
    the process) no longer happens. Installing again on the same signal
    replaces the earlier dump, which is then not called, but what it chained
    to still is.

    Raises :class:`~greenprof.exceptions.ConfigurationError` for a value
    that is not a signal number, ``SIGKILL`` or ``SIGSTOP`` (no process can
    catch them), a signal this system cannot handle, or a ``path`` whose
    folder does not exist or cannot be written; and
    :class:`~greenprof.exceptions.NotMainThreadError` (a
    ``ConfigurationError``) when called from another thread than the main
    one, the only one where Python runs signal handlers.
    """
    number = _checked_signal(signum)
    handler = SignalDumpHandler(number, _checked_path(path))
    try:
        previous = signal.signal(number, handler)
    except ValueError as exc:  # the only cause left: not the main thread
        msg = (
            "install_signal_dump() must be called from the main thread: Python "
            f"runs signal handlers only there (signal.signal said: {exc}). Call "
            "it early in the program, before it starts threads, or hand the "
            "call over to the main thread."
        )
        raise NotMainThreadError(msg) from exc
    except OSError as exc:
        msg = (
            f"Signal {_signal_name(number)} cannot be handled on this system ({exc}). "
            "Use signal.SIGUSR1 or another signal the program does not use."
        )
        raise ConfigurationError(msg) from exc
    # Installed twice: the new one dumps, and chains to what the old one did.
    chained = previous.previous if type(previous) is SignalDumpHandler else previous
    handler.previous = chained
    return previous


def _checked_signal(signum: object) -> int:
    if isinstance(signum, bool) or not isinstance(signum, int):
        msg = f"install_signal_dump() takes a signal number such as signal.SIGUSR1, not {signum!r}."
        raise ConfigurationError(msg)
    number = int(signum)
    if number in _UNCATCHABLE:
        msg = (
            f"{_UNCATCHABLE[number]} cannot be caught: the system stops or kills the "
            "process without running any handler. Use signal.SIGUSR1 or another "
            "signal the program does not use."
        )
        raise ConfigurationError(msg)
    if number not in signal.valid_signals():
        msg = (
            f"{number} is not a signal number on this system. Use signal.SIGUSR1 "
            "or another signal the program does not use."
        )
        raise ConfigurationError(msg)
    return number


def _checked_path(path: object) -> str | None:
    """``path`` made absolute, once it is known that dumps can be written there."""
    if path is None:
        return None
    try:
        name = os.fsdecode(os.fspath(path))  # type: ignore[call-overload]
    except TypeError:
        msg = f"path must be a file name (str or os.PathLike), or None for stderr; not {path!r}."
        raise ConfigurationError(msg) from None
    if not name:
        msg = "path is empty: give a file name to append dumps to, or None for stderr."
        raise ConfigurationError(msg)
    absolute = os.path.abspath(name)
    now = absolute.replace("{pid}", str(os.getpid()))
    folder = os.path.dirname(now)
    if not os.path.isdir(folder):
        msg = (
            f"The dump file {name!r} is in a folder that does not exist ({folder}). "
            "Create the folder first, or give a path in an existing one."
        )
        raise ConfigurationError(msg)
    if os.path.isdir(now):
        msg = f"{now} is a folder: give the name of a file to append dumps to."
        raise ConfigurationError(msg)
    if not os.access(now if os.path.exists(now) else folder, os.W_OK):
        msg = f"Dumps cannot be written to {now}: permission denied. Give another path."
        raise ConfigurationError(msg)
    return absolute


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
