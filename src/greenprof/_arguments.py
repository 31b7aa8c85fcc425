"""What every ``greenprof`` command shares on its command line: a parser
whose errors fit on one line, and the values options take, checked as they
are parsed (a bad one exits with argparse's status, 2)."""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["OneLineParser", "positive_int", "seconds", "tag"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line: what was wrong, and where
    the help is (argparse's default prints the whole usage first, which
    buries the error under a long option list)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def tag(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        msg = f"expected KEY=VALUE, like path=/checkout, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return key, value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        msg = f"expected seconds, a number >= 0, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a whole number >= 1, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value
