"""Running a program as ``python`` would: ``script.py args`` or ``-m module
args``, with ``sys.argv``, ``sys.path[0]`` and ``__main__`` as python sets
them and its exit status as python gives it; and telling the frames that
launched it (greenprof's, runpy's, importlib's) from the program's own."""

from __future__ import annotations

import builtins
import contextlib
import importlib
import importlib.machinery
import io
import os
import runpy
import signal
import sys
import types
import zipfile
from collections.abc import Collection, Sequence
from types import CodeType, TracebackType
from typing import Final

import attrs

from ._entries import runs_the_program
from .exceptions import GreenprofError
from .snapshot import Frame

__all__ = ["Ending", "Launch", "Program", "print_uncaught", "split_arguments"]

#: Files whose frames run a program without being part of it: runpy and
#: importlib, frozen or not (``<frozen runpy>`` on 3.11+), and pkgutil,
#: which runpy reads code with.
MACHINERY_FILES: Final = frozenset(
    {
        runpy.__file__,
        "<frozen runpy>",
        "<frozen zipimport>",
        "<frozen importlib._bootstrap>",
        "<frozen importlib._bootstrap_external>",
        "<frozen importlib.util>",  # runpy finds a -m module's spec through it
        "<frozen importlib.machinery>",
        os.path.join(os.path.dirname(runpy.__file__), "pkgutil.py"),
    }
)
#: Folders whose files are all launching machinery: greenprof and importlib.
_MACHINERY_DIRS: Final = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep,
)


@attrs.frozen
class Program:
    """What to run: a script's path as given (or a folder or zip archive
    with a ``__main__.py``), or a module's name; and its arguments."""

    target: str
    is_module: bool
    args: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"-m {self.target}" if self.is_module else self.target


def split_arguments(
    args: Sequence[str], with_values: Collection[str]
) -> tuple[list[str], Program | None]:
    """greenprof's own options, and the program with its arguments.

    Like python, options are read only up to the script (the first
    argument that is not an option) or ``-m module`` (``-mmodule`` too):
    everything after it goes to the program untouched, ``--`` and dashed
    arguments included. A ``--`` before the script ends greenprof's
    options. ``with_values`` are the options that take the next argument as
    their value (``-o FILE``), which is therefore not the script. Without a
    program, every argument is an option (argparse reports what is wrong).
    """
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest = args[index + 1 :]
            program = Program(rest[0], False, tuple(rest[1:])) if rest else None
            return list(args[:index]), program
        if arg.startswith("-m"):
            module = arg[2:] or (args[index + 1] if index + 1 < len(args) else "")
            if not module:
                break
            after = index + 1 if arg[2:] else index + 2
            return list(args[:index]), Program(module, True, tuple(args[after:]))
        if arg == "-" or not arg.startswith("-"):
            return list(args[:index]), Program(arg, False, tuple(args[index + 1 :]))
        index += 2 if arg in with_values else 1
    return list(args), None


@attrs.frozen
class Ending:
    """How the program ended."""

    #: The exit status python would give.
    status: int
    #: The signal the process must then die of, as python's would: SIGINT
    #: after an uncaught KeyboardInterrupt.
    signal: int | None = None


class Launch:
    """One program, made ready to run and then run.

    A script is read and compiled by :meth:`prepare`, before anything is
    profiled or written, so that a missing or broken script changes
    nothing. Its frames are those of a file python runs: the absolute path
    as file name, in a fresh ``__main__`` module that stays ``__main__``.
    A module, a folder or a zip archive runs through runpy, as python does.
    """

    def __init__(self, program: Program) -> None:
        self.program = program
        self._code: CodeType | None = None
        self._path = os.path.abspath(program.target)
        #: Files of the frames that called :meth:`run` (the console script,
        #: python's own runpy under ``python -m greenprof``): set by run().
        self._callers: frozenset[str] = frozenset()
        #: What ``sys.path[0]`` becomes for the program (see ``_set_path0``):
        #: found by prepare(), before any session samples the main thread.
        self._path0: str | None = None

    # -- before the program runs -------------------------------------------------

    def prepare(self) -> None:
        """Read and compile a script. GreenprofError (one line) when it cannot
        be read; SyntaxError as compile() raises it."""
        self._path0 = self._entry()
        if self.program.is_module or os.path.isdir(self._path) or zipfile.is_zipfile(self._path):
            return  # found by runpy, which says what is missing
        try:
            with io.open_code(self._path) as file:
                source = file.read()
        except OSError as exc:
            msg = f"cannot open {self.program.target}: {exc.strerror or exc}"
            raise GreenprofError(msg) from None
        # dont_inherit: greenprof's own ``from __future__`` imports are not the program's.
        self._code = compile(source, self._path, "exec", dont_inherit=True)

    # -- running -----------------------------------------------------------------

    def run(self) -> Ending:
        """Run the program (after :meth:`prepare`) to its end; its uncaught
        exception printed as python prints it (through ``sys.excepthook``), without our frames.

        GreenprofError when runpy found nothing to run (no such module, a
        package or folder without ``__main__``): none of the program ran.
        """
        self._callers = frozenset(_files_calling(sys._getframe()))
        try:
            self._execute()
        except SystemExit as exc:
            return Ending(_exit_status(exc.code))
        except BaseException as exc:  # the program's, whatever it is: python prints it
            return self._uncaught(exc)
        return Ending(0)

    @runs_the_program
    def _execute(self) -> None:
        program = self.program
        sys.argv = [program.target, *program.args]  # runpy puts a module's path first
        self._set_path0()
        if program.is_module:
            runpy.run_module(program.target, run_name="__main__", alter_sys=True)
        elif self._code is None:
            runpy.run_path(program.target, run_name="__main__")
        else:
            main = _main_module(self._path)
            sys.modules["__main__"] = main  # and so it stays, as under python
            exec(self._code, main.__dict__)

    def _entry(self) -> str | None:
        """``sys.path[0]`` as python sets it for the program: the script's
        folder (symbolic links resolved), the current folder for ``-m``, a
        folder or zip archive itself; None under ``-P`` or ``-I``, where
        python adds none."""
        if getattr(sys.flags, "safe_path", False) or sys.flags.isolated:
            return None
        if self.program.is_module:
            return os.getcwd()
        if os.path.isdir(self._path) or zipfile.is_zipfile(self._path):
            return self._path
        return os.path.dirname(os.path.realpath(self._path))

    def _set_path0(self) -> None:
        """``sys.path[0]`` for the program, in place of the one python set
        for greenprof. Found by prepare(): resolving the script's path
        (``realpath``) here, with a hybrid session's sampler running, gave
        samples of the main thread whose stacks start in ``posixpath``."""
        entry = self._path0
        if entry is None:  # none under -P or -I
            return
        if sys.path:
            sys.path[0] = entry
        else:
            sys.path.insert(0, entry)

    def _uncaught(self, exc: BaseException) -> Ending:
        traceback = self._program_part(exc.__traceback__)
        if traceback is None and isinstance(exc, ImportError):
            # Raised by runpy before any of the program ran.
            msg = f"cannot run {self.program}: {exc}"
            raise GreenprofError(msg) from None
        print_uncaught(exc, traceback)
        if type(exc) is KeyboardInterrupt:  # python dies of SIGINT then (not for a subclass)
            return Ending(128 + signal.SIGINT, signal.SIGINT)
        return Ending(1)

    # -- telling the program's frames from ours ----------------------------------

    def is_launcher(self, filename: str) -> bool:
        """Whether a frame of ``filename`` launched the program rather than
        being part of it."""
        return (
            filename in MACHINERY_FILES
            or filename in self._callers
            or filename.startswith(_MACHINERY_DIRS)
        )

    def program_stack(self, stack: tuple[Frame, ...]) -> tuple[Frame, ...]:
        """``stack`` (outermost first) without the frames that launched the
        program: it starts at the program's outermost frame."""
        start = 0
        while start < len(stack) and self.is_launcher(stack[start].filename):
            start += 1
        return stack[start:] if start else stack

    def _program_part(self, traceback: TracebackType | None) -> TracebackType | None:
        """The part of ``traceback`` from the program's outermost frame on,
        or None if the exception never reached the program's code."""
        while traceback is not None and self.is_launcher(traceback.tb_frame.f_code.co_filename):
            traceback = traceback.tb_next
        return traceback


def _files_calling(frame: types.FrameType | None) -> set[str]:
    files = set()
    while frame is not None:
        files.add(frame.f_code.co_filename)
        frame = frame.f_back
    return files


def _main_module(path: str) -> types.ModuleType:
    """A fresh ``__main__`` for the script at ``path``, as python makes it."""
    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=path,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __builtins__=builtins,
    )
    return main


def _exit_status(code: object) -> int:
    """The exit status python gives for ``sys.exit(code)``: 0 for None, the
    number itself, else 1 after printing ``code`` on stderr."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no stderr left
        print(code, file=sys.stderr)
    return 1


@runs_the_program  # sys.excepthook, which the program may have replaced
def print_uncaught(exc: BaseException, traceback: TracebackType | None) -> None:
    """Print ``exc`` with ``traceback`` as python prints an uncaught
    exception: through ``sys.excepthook``, which the program may have
    replaced (python's own shows the exception's ``__traceback__``)."""
    exc.__traceback__ = traceback
    try:
        sys.excepthook(type(exc), exc, traceback)
    except Exception:
        with contextlib.suppress(Exception):  # no stderr left
            sys.__excepthook__(type(exc), exc, traceback)
