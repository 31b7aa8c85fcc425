"""The ``greenprof`` command: run a program profiled, show and convert profiles."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import traceback
from collections.abc import Sequence

from . import exporters
from ._profiler import Profiler
from ._report import Report
from ._schema import load
from .exceptions import GreenprofError
from .sinks import JSONSink


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenprof", description="Show and convert greenprof profiles."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print a profile as a call tree")
    show.add_argument("file", help="a file written by greenprof.sinks.JSONSink")
    show.add_argument("--color", action="store_true", help="colour the tree")
    convert = commands.add_parser("convert", help="write a profile in another format")
    convert.add_argument("file", help="a file written by greenprof.sinks.JSONSink")
    convert.add_argument("--format", required=True, choices=exporters.FORMATS)
    convert.add_argument("--weight", default="on_cpu", choices=exporters.WEIGHTS)
    convert.add_argument("-o", "--output", required=True, help="where to write ('-': stdout)")
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
    run.add_argument("-m", dest="module", help="run a module, like python -m")
    run.add_argument("program", nargs=argparse.REMAINDER, help="script and its arguments")
    return parser


def _run(options: argparse.Namespace) -> int:
    if not options.module and not options.program:
        print("greenprof: run needs a script or -m module to run", file=sys.stderr)
        return 2
    if options.patch:
        from gevent import monkey  # type: ignore[import-untyped,unused-ignore]

        monkey.patch_all()
    profiler = Profiler(
        mode=options.mode,
        follow_spawned=options.mode != "thread",
        max_snapshots=1_000_000,
    )
    code = 0
    profiler.start()
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
        JSONSink(path).export(profiler.snapshots)
        return
    rendered = exporters.export(profiler.report(), format)
    with open(path, "w", encoding="utf-8") as file:
        file.write(rendered)


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    if options.command == "run":
        return _run(options)
    try:
        report = Report(load(options.file))
        if options.command == "show":
            sys.stdout.write(exporters.text(report, color=options.color))
            return 0
        rendered = exporters.export(report, options.format, weight=options.weight)
        if options.output == "-":
            sys.stdout.write(rendered)
        else:
            with open(options.output, "w", encoding="utf-8") as file:
                file.write(rendered)
    except (GreenprofError, OSError) as exc:
        print(f"greenprof: {exc}", file=sys.stderr)
        return 1
    return 0
