"""The ``greenprof`` command: run a program profiled, show and convert profiles."""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import runpy
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import greenlet

from . import exporters
from ._naming import greenlet_name
from ._profiler import Profiler
from ._report import Report
from ._threads import Waker, allocate_real_lock, original
from .exceptions import GreenprofError
from .sinks import JSONSink

COLOR_HELP = "colour the tree (the default on a terminal, unless NO_COLOR is set)"


def _switch(command: argparse.ArgumentParser, name: str, help: str) -> None:
    """``--name`` / ``--no-name``; the option is None when neither is given."""
    group = command.add_mutually_exclusive_group()
    group.add_argument(f"--{name}", action="store_true", default=None, help=help)
    group.add_argument(f"--no-{name}", dest=name, action="store_false")


def _selection(command: argparse.ArgumentParser, *, grouping: str) -> None:
    """The options that pick and merge sessions: --group-by, --tag, --min-duration."""
    command.add_argument(
        "--group-by",
        metavar="TAG",
        help=(
            "merge every session with the same value of this tag (path, method, "
            f"status, ...) into one tree; 'greenlet' keeps greenlets apart (default: {grouping})"
        ),
    )
    command.add_argument(
        "--tag",
        action="append",
        default=[],
        type=_tag,
        metavar="KEY=VALUE",
        help="only sessions with this tag (repeatable: all must match)",
    )
    command.add_argument(
        "--min-duration",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="only sessions that lasted at least this long",
    )


def _tag(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        msg = f"expected KEY=VALUE, like path=/checkout, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return key, value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        msg = f"expected seconds, a number >= 0, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a whole number >= 1, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _selected(options: argparse.Namespace) -> Report:
    """The file's report, narrowed by --tag and --min-duration."""
    report = Report.from_file(options.file)
    if not options.tag and not options.min_duration:
        return report
    chosen = report.where(dict(options.tag), min_duration_ns=round(options.min_duration * 1e9))
    if not chosen.sessions:
        wanted = [f"{key}={value}" for key, value in options.tag]
        if options.min_duration:
            wanted.append(f"at least {options.min_duration:g} s long")
        msg = f"no session in {options.file} is {' and '.join(wanted)}"
        raise GreenprofError(msg)
    return chosen


def _grouping(options: argparse.Namespace, report: Report) -> str | None:
    if options.group_by == "greenlet":
        return None
    if options.group_by is None and options.command == "show":
        # Many requests: one tree per path is what a reader wants first.
        return exporters.default_group(report)
    return options.group_by  # type: ignore[no-any-return]


def _use_color(option: bool | None) -> bool:
    if option is not None:
        return option
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenprof", description="Show and convert greenprof profiles."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="see why: thread sampling against greenlet snapshots on a live gevent service",
        description=(
            "Runs a small gevent.pywsgi service on 127.0.0.1 with many concurrent "
            "clients, profiles one request in thread mode and one in greenlet mode, "
            "counts the snapshots taken from other greenlets, prints the profile and "
            "writes it as an HTML flame graph."
        ),
    )
    demo.add_argument("-o", "--output", default="greenprof-demo.html", help="HTML file to write")
    demo.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    _switch(demo, "color", COLOR_HELP)
    show = commands.add_parser(
        "show",
        help="print a profile as a call tree",
        description=(
            "Prints a summary of the sessions in the file (by path, when they have "
            "that tag) and a call tree with on-CPU and off-CPU columns: one per "
            "path when the sessions have that tag (every request of a path "
            "merged), else one per greenlet."
        ),
    )
    show.add_argument("file", help="a file written by greenprof.sinks.JSONSink or greenprof run")
    _selection(show, grouping="path when the sessions have it, else greenlet")
    show.add_argument(
        "--top",
        type=_positive_int,
        metavar="N",
        help="show only the N heaviest stacks of each tree",
    )
    _switch(show, "color", COLOR_HELP)
    convert = commands.add_parser(
        "convert",
        help="write a profile in another format",
        description="Writes a recorded profile in a format other tools read.",
    )
    convert.add_argument("file", help="a file written by greenprof.sinks.JSONSink or greenprof run")
    convert.add_argument(
        "--format",
        choices=exporters.FORMATS,
        help="the output format (default: from the output file's extension)",
    )
    convert.add_argument(
        "--weight",
        default="on_cpu",
        choices=exporters.WEIGHTS,
        help="what sizes a stack in collapsed, speedscope and pprof (default on_cpu)",
    )
    convert.add_argument("-o", "--output", required=True, help="where to write ('-': stdout)")
    _selection(convert, grouping="greenlet")
    run = commands.add_parser(
        "run",
        help="run a Python program with its greenlets profiled",
        description=(
            "Runs a script (or -m module) with the main greenlet and every greenlet "
            "it spawns through gevent, and theirs, profiled; writes the result when "
            "the program ends or on Ctrl-C, and exits with the program's exit code."
        ),
    )
    run.add_argument("--mode", choices=("greenlet", "hybrid", "thread"), default="greenlet")
    run.add_argument("--patch", action="store_true", help="gevent.monkey.patch_all() first")
    run.add_argument(
        "--format", choices=("jsonl", *exporters.FORMATS), default="jsonl", help="output format"
    )
    run.add_argument("-o", "--output", default="greenprof.jsonl", help="output file")
    run.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help=(
            "record only greenlets whose name or function matches this shell-style "
            "pattern (repeatable); the others are still followed, not recorded"
        ),
    )
    _switch(run, "progress", "show progress on stderr (the default when stderr is a terminal)")
    run.add_argument(
        "--progress-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two progress lines (default 1)",
    )
    run.add_argument("-m", dest="module", help="run a module, like python -m")
    run.add_argument("program", nargs=argparse.REMAINDER, help="script and its arguments")
    return parser


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


class _Progress:
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
        self._wake.wake()
        with self._done:  # wait for the last line, so it does not mix with ours
            pass
        if self._terminal:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def _run(self) -> None:
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


def _run(options: argparse.Namespace) -> int:
    if not options.module and not options.program:
        print("greenprof: run needs a script or -m module to run", file=sys.stderr)
        return 2
    if not 0 < options.progress_interval <= 3600:
        print("greenprof: --progress-interval must be seconds, > 0 and <= 3600", file=sys.stderr)
        return 2
    if options.only and options.mode == "thread":
        print(
            "greenprof: --only needs --mode greenlet or hybrid (thread mode samples "
            "whichever greenlet runs)",
            file=sys.stderr,
        )
        return 2
    if options.patch:
        from gevent import monkey  # type: ignore[import-untyped,unused-ignore]

        monkey.patch_all()
    profiler = Profiler(
        mode=options.mode,
        follow_all=options.mode != "thread",
        max_snapshots=1_000_000,
        only=_matcher(options.only) if options.only else None,
    )
    terminal = sys.stderr.isatty()
    show_progress = terminal if options.progress is None else options.progress
    progress = _Progress(profiler, options.progress_interval, terminal=terminal)
    code = 0
    profiler.start()
    if show_progress:
        progress.start()
    try:
        if options.module:
            sys.argv = [options.module, *options.program]
            runpy.run_module(options.module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(options.program)
            runpy.run_path(options.program[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        if show_progress:
            progress.stop()
        if profiler.is_running:
            profiler.stop()
    try:
        _write(profiler, options.format, options.output)
    except OSError as exc:
        print(f"greenprof: cannot write {options.output}: {exc}", file=sys.stderr)
        return code or 1
    stats = profiler.stats
    print(
        f"greenprof: {stats.snapshots} snapshots of "
        f"{len({s.greenlet_id for s in profiler.snapshots})} greenlets written to "
        f"{options.output}",
        file=sys.stderr,
    )
    return code


def _write(profiler: Profiler, format: str, path: str) -> None:
    if format == "jsonl":
        if os.path.exists(path):
            os.remove(path)  # a new profile, not appended to an old one
        sink = JSONSink(path)
        sink.export(profiler.snapshots)
        sink.export_sessions(profiler.sessions)
        return
    exporters.write(profiler.report(), format, path)


def _run_demo(options: argparse.Namespace) -> int:
    from . import _demo  # gevent.pywsgi is imported only for the demo

    if options.clients < 1:
        print("greenprof: --clients must be at least 1", file=sys.stderr)
        return 2
    color = _use_color(options.color)
    try:
        return _demo.run(options.output, clients=options.clients, color=color)
    except Exception as exc:  # one line, whatever went wrong
        print(f"greenprof: demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    if options.command == "run":
        return _run(options)
    if options.command == "demo":
        return _run_demo(options)
    try:
        report = _selected(options)
        group_by = _grouping(options, report)
        if options.command == "show":
            sys.stdout.write(
                exporters.text(
                    report, color=_use_color(options.color), top=options.top, group_by=group_by
                )
            )
            return 0
        format = options.format or exporters.format_for_path(options.output)
        if format is None:
            print(
                f"greenprof: cannot tell the format from {options.output!r}: give --format "
                f"({', '.join(exporters.FORMATS)})",
                file=sys.stderr,
            )
            return 2
        renderer = exporters.renderer_for(format)
        data = renderer.render_bytes(report, weight=options.weight, group_by=group_by)
        if options.output == "-":
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
        else:
            with open(options.output, "wb") as file:
                file.write(data)
    except (GreenprofError, OSError) as exc:
        print(f"greenprof: {exc}", file=sys.stderr)
        return 1
    return 0
