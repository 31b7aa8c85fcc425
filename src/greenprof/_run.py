"""``greenprof run``: a Python program run as python runs it, its greenlets
profiled, each process's profile written once however the process ends,
and the program's exit status (or the signal it died of) kept."""

from __future__ import annotations

import argparse
import fnmatch
import os
import pathlib
import re
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

import greenlet

from . import exporters
from ._arguments import OneLineParser, positive_int, seconds
from ._files import check_writable
from ._launch import Launch, print_uncaught, split_arguments
from ._naming import greenlet_name
from ._options import DEFAULT_DUMP_PERIOD, DEFAULT_MAX_DEPTH, MIN_DUMP_PERIOD
from ._output import STDOUT, Destination
from ._profiled_run import ProfiledRun, say
from ._profiler import Profiler
from ._progress import Progress
from ._signal_dump import install_signal_dump
from .exceptions import ConfigurationError, GreenprofError

__all__ = ["EXIT_CANNOT_RUN", "EXIT_CANNOT_WRITE", "EXIT_USAGE", "add_parser", "main"]

#: greenprof's own exit statuses; otherwise it exits as the program did.
#: The script or module cannot be found or read (python -m says 1 too).
EXIT_CANNOT_RUN: Final = 1
#: Bad usage: argparse's.
EXIT_USAGE: Final = 2
#: The output cannot be written: sysexits.h's EX_CANTCREAT.
EXIT_CANNOT_WRITE: Final = 73
#: Snapshots kept per greenlet: a whole program's, not one request's.
MAX_SNAPSHOTS: Final = 1_000_000

USAGE: Final = "greenprof run [options] (script.py | -m module) [args ...]"


# -- the command line ------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction[OneLineParser]) -> OneLineParser:
    """The ``run`` command's parser, among ``commands``."""
    run = commands.add_parser(
        "run",
        help="run a Python program (script or -m module) with its greenlets profiled",
        usage=USAGE,
        description=textwrap.fill(  # the formatter keeps the epilog's table as it is
            "Runs a script, or a module with -m, as python would, with every "
            "greenlet it runs profiled but gevent's hubs, in the main thread and in "
            "each threading.Thread it starts. greenprof's options come before the "
            "script or -m module; everything after it goes to the program as "
            "sys.argv. The profile is "
            "written when the program ends, whether it returns, exits, or is "
            "ended by SIGINT (Ctrl-C), SIGTERM or SIGHUP; then greenprof ends as "
            "the program did: same exit status, or killed by the same signal.",
            width=78,
        ),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # options are read by name up to the script: no abbreviations
    )
    run.add_argument("-m", dest="module", metavar="module", help="run a module, like python -m")
    run.add_argument("script", nargs="?", metavar="script.py", help="the script to run")
    run.add_argument("args", nargs="*", help="the program's arguments, passed on untouched")
    run.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help=(
            "where to write the profile: its format follows the extension (see below); "
            "'-' for stdout; {pid} becomes the process id "
            "(default: greenprof.jsonl, or greenprof and the --format's extension)"
        ),
    )
    run.add_argument(
        "--format",
        choices=exporters.FORMATS,
        help="the output format, whatever the extension (default: from -o, else jsonl)",
    )
    run.add_argument(
        "--open",
        action="store_true",
        help=(
            "once the HTML profile is written, open it in a web browser, where "
            "python's webbrowser finds one (needs an HTML output: -o FILE.html)"
        ),
    )
    run.add_argument(
        "--mode",
        choices=("greenlet", "hybrid", "thread"),
        default="greenlet",
        help=(
            "greenlet: a snapshot at every switch (default); hybrid: also samples "
            "taken while a profiled greenlet runs; thread: samples of the thread, "
            "whatever greenlet runs"
        ),
    )
    run.add_argument(
        "--interval",
        "--dump-period",
        dest="dump_period",
        type=_dump_period,
        default=DEFAULT_DUMP_PERIOD,
        metavar="SECONDS",
        help=(
            "seconds between two samples in hybrid and thread modes "
            f"(default {DEFAULT_DUMP_PERIOD}, at least {MIN_DUMP_PERIOD})"
        ),
    )
    run.add_argument(
        "--max-depth",
        type=positive_int,
        default=DEFAULT_MAX_DEPTH,
        metavar="N",
        help=f"frames kept per snapshot, innermost first (default {DEFAULT_MAX_DEPTH})",
    )
    run.add_argument(
        "--min-duration",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="write no profile of a process that ran less than this (default 0)",
    )
    run.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help=(
            "record only greenlets whose name or function matches this shell-style "
            "pattern (repeatable); the others are still followed, not recorded"
        ),
    )
    run.add_argument("--patch", action="store_true", help="gevent.monkey.patch_all() first")
    run.add_argument(
        "--dump-signal",
        type=_signal_number,
        metavar="SIGNAL",
        help=(
            "on this signal (USR1, SIGUSR2, 12, ...), write every live greenlet's stack "
            "and wait site to stderr, like py-spy dump for greenlets"
        ),
    )
    progress = run.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show progress on stderr (the default when stderr is a terminal)",
    )
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show progress"
    )
    run.add_argument(
        "--progress-interval",
        type=_progress_interval,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two progress lines (default 1)",
    )
    return run


def _epilog() -> str:
    rows = [
        f"  {', '.join(renderer.extensions):<26}{renderer.name:<12}{renderer.description}"
        for renderer in exporters.RENDERERS.values()
    ]
    return "\n".join(
        [
            "output formats, by the extension of -o FILE:",
            *rows,
            "",
            "A process the program forks writes its own file: FILE with .PID before",
            "the extension (profile.4242.jsonl), or FILE's {pid} replaced.",
            "",
            "exit status: the program's (killed by a signal: the same signal);",
            f"{EXIT_CANNOT_RUN}: the script or module cannot be found or read; "
            f"{EXIT_USAGE}: bad usage;",
            f"{EXIT_CANNOT_WRITE}: the output cannot be written.",
        ]
    )


def _dump_period(text: str) -> float:
    try:
        value = seconds(text)
    except argparse.ArgumentTypeError:
        value = -1.0
    if value < MIN_DUMP_PERIOD:
        msg = f"expected seconds, at least {MIN_DUMP_PERIOD}, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _signal_number(text: str) -> int:
    name = text.strip().upper()
    if name.isdigit():
        return int(name)
    found = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
    if not isinstance(found, signal.Signals):
        msg = f"{text!r} is not a signal: give a name such as USR1 or SIGUSR2, or a number"
        raise argparse.ArgumentTypeError(msg)
    return int(found)


def _progress_interval(text: str) -> float:
    try:
        value = seconds(text)
    except argparse.ArgumentTypeError:
        value = -1.0
    if not 0 < value <= 3600:
        msg = f"expected seconds, > 0 and <= 3600, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def main(parser: argparse.ArgumentParser, args: Sequence[str]) -> int:
    """``greenprof run ARGS``: runs the program; the exit status, or raises
    KeyboardInterrupt to end as python does after an uncaught one."""
    own, program = split_arguments(args, _options_with_values(parser))
    options = parser.parse_args(own)
    if program is None:
        return _fail(EXIT_USAGE, "run needs a script or -m module to run")
    if options.only and options.mode == "thread":
        return _fail(
            EXIT_USAGE,
            "--only needs --mode greenlet or hybrid (thread mode samples whichever greenlet runs)",
        )
    try:
        destination = Destination.of(options.output, options.format)
    except ConfigurationError as exc:
        return _fail(EXIT_USAGE, str(exc))
    if options.open and (destination.format != "html" or destination.template == STDOUT):
        return _fail(EXIT_USAGE, "--open needs an HTML file: -o FILE.html, or --format html")
    first = destination.path(os.getpid())
    if first != STDOUT and first is not None:
        try:
            check_writable(first)
        except OSError as exc:
            return _fail(EXIT_CANNOT_WRITE, f"cannot write {first}: {exc.strerror or exc}")
    try:
        profiler = Profiler(
            mode=options.mode,
            follow_all=options.mode != "thread",
            keep_snapshots=False,  # they go to a spool file as the program runs
            max_snapshots=MAX_SNAPSHOTS,
            max_depth=options.max_depth,
            dump_period=options.dump_period,
            only=_matcher(options.only) if options.only else None,
        )
    except ConfigurationError as exc:
        return _fail(EXIT_USAGE, str(exc))
    launch = Launch(program)
    try:
        launch.prepare()
    except GreenprofError as exc:
        return _fail(EXIT_CANNOT_RUN, str(exc))
    except (SyntaxError, ValueError) as exc:  # a script python cannot compile either
        print_uncaught(exc, None)
        return EXIT_CANNOT_RUN
    if options.dump_signal is not None:
        try:
            install_signal_dump(options.dump_signal)
        except ConfigurationError as exc:
            return _fail(EXIT_USAGE, str(exc))
    if options.patch:
        from gevent import monkey  # type: ignore[import-untyped,unused-ignore]

        monkey.patch_all()
    terminal = _is_terminal()
    show_progress = terminal if options.progress is None else options.progress
    progress = Progress(profiler, options.progress_interval, terminal=terminal)
    run = ProfiledRun(
        profiler,
        launch,
        destination,
        min_duration=options.min_duration,
        progress=progress if show_progress else None,
    )
    run.start()
    try:
        ending = launch.run()
    except GreenprofError as exc:  # nothing of the program ran
        run.abandon()
        return _fail(EXIT_CANNOT_RUN, str(exc))
    written = run.finish()
    if options.open and run.written is not None and not run.forked:
        _open_in_browser(run.written)
    if ending.signal == signal.SIGINT:
        _end_as_python_after_keyboard_interrupt()
    # The program's failure says more than the profile's.
    return ending.status if written or ending.status else EXIT_CANNOT_WRITE


def _options_with_values(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of ``parser`` that take the next argument."""
    return {
        option
        for action in parser._actions
        if action.option_strings and action.nargs != 0
        for option in action.option_strings
    }


def _matcher(patterns: Sequence[str]) -> Callable[[greenlet.greenlet], bool]:
    """True for a greenlet whose name, or the qualified name of the function
    it runs, matches one of ``patterns`` (shell-style, case-sensitive)."""
    # Compiled here, not at the first match: matching runs inside the tracer.
    match = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match

    def matches(glet: greenlet.greenlet) -> bool:
        # Called inside greenprof's tracer: plain attribute reads only.
        if match(greenlet_name(glet)):
            return True
        function = getattr(glet, "_run", None) or getattr(glet, "run", None)
        function = getattr(function, "func", function)  # functools.partial
        qualname = getattr(function, "__qualname__", None)
        return isinstance(qualname, str) and match(qualname) is not None

    return matches


def _open_in_browser(path: str) -> None:
    """Open the file at ``path`` in the browser python's ``webbrowser``
    picks (``BROWSER`` tells it which), or say there is none."""
    import webbrowser

    try:
        opened = webbrowser.open(pathlib.Path(path).resolve().as_uri())
    except Exception:  # webbrowser.Error, or a browser that could not start
        opened = False
    if not opened:
        say(f"greenprof: found no web browser to open {path} in; open it yourself")


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _fail(status: int, message: str) -> int:
    say(f"greenprof: {message}")
    return status


def _end_as_python_after_keyboard_interrupt() -> NoReturn:
    """End as python ends after an uncaught KeyboardInterrupt, already
    printed: its exit runs (threads joined, atexit, streams flushed), then
    it kills itself with SIGINT. A KeyboardInterrupt that reaches python
    does all that; only its second printing is left out."""
    interrupt = KeyboardInterrupt()
    hook = sys.excepthook

    def print_others(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
        if value is not interrupt:
            hook(kind, value, traceback)

    sys.excepthook = print_others
    raise interrupt
