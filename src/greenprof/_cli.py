"""The ``greenprof`` command: show and convert recorded profiles."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import exporters
from ._report import Report
from ._schema import load
from .exceptions import GreenprofError


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
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
