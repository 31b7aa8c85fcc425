"""The ``greenprof`` command: run a program profiled (``_run``), show and
convert profiles, and the demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__, _run, exporters
from ._arguments import OneLineParser, positive_int, seconds, tag
from ._output import write_report
from ._report import Report
from .exceptions import GreenprofError

COLOR_HELP = "colour the tree (the default on a terminal, unless NO_COLOR is set)"
NO_COLOR_HELP = "never colour the tree"


def _switch(command: argparse.ArgumentParser, name: str, help: str, no_help: str) -> None:
    """``--name`` / ``--no-name``; the option is None when neither is given."""
    group = command.add_mutually_exclusive_group()
    group.add_argument(f"--{name}", action="store_true", default=None, help=help)
    group.add_argument(f"--no-{name}", dest=name, action="store_false", help=no_help)


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
        type=tag,
        metavar="KEY=VALUE",
        help="only sessions with this tag (repeatable: all must match)",
    )
    command.add_argument(
        "--min-duration",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="only sessions that lasted at least this long",
    )


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


def _parser() -> tuple[OneLineParser, OneLineParser]:
    """The ``greenprof`` parser, and its ``run`` command's."""
    parser = OneLineParser(
        prog="greenprof",
        description=(
            "Profile gevent and greenlet programs: run one with its greenlets "
            "profiled, then show or convert the profile."
        ),
    )
    parser.add_argument("--version", action="version", version=f"greenprof {__version__}")
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do (greenprof COMMAND --help tells more)",
    )
    run = _run.add_parser(commands)
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
    _switch(demo, "color", COLOR_HELP, NO_COLOR_HELP)
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
        type=positive_int,
        metavar="N",
        help="show only the N heaviest stacks of each tree",
    )
    _switch(show, "color", COLOR_HELP, NO_COLOR_HELP)
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
    return parser, run


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
    args = sys.argv[1:] if argv is None else list(argv)
    parser, run = _parser()
    if args[:1] == ["run"]:
        # Its options end where the program starts: read by _run, not here.
        return _run.main(run, args[1:])
    options = parser.parse_args(args)
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
        write_report(report, format, options.output, weight=options.weight, group_by=group_by)
    except (GreenprofError, OSError) as exc:
        print(f"greenprof: {exc}", file=sys.stderr)
        return 1
    return 0
