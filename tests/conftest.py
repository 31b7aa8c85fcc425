"""Shared fixtures: every test must leave no greenprof tracer behind."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import greenlet
import pytest

import greenprof

#: The installed package's folder: a frame whose file starts with this is
#: greenprof's own (the clone's folder may be called greenprof too).
GREENPROF_DIR = os.path.dirname(os.path.abspath(greenprof.__file__)) + os.sep


@pytest.fixture(autouse=True)
def _no_tracer_left_behind() -> Iterator[None]:
    before = greenlet.gettrace()
    yield
    assert greenlet.gettrace() is before, "a test left a greenlet tracer installed"


def function_name(func: object) -> str:
    """What ``Frame.function`` says for ``func``: qualified on 3.11+."""
    code = func.__code__  # type: ignore[attr-defined]
    return code.co_qualname if sys.version_info >= (3, 11) else code.co_name  # type: ignore[no-any-return]


def line_of(func: object, marker: str) -> int:
    """The line number of the line of ``func``'s source containing ``marker``."""
    import inspect

    lines, start = inspect.getsourcelines(func)  # type: ignore[arg-type]
    for offset, text in enumerate(lines):
        if marker in text:
            return start + offset
    raise AssertionError(f"{marker!r} not in {func!r}")


def greenprof_command(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m greenprof ARGS`` in a real subprocess (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "greenprof", *args], capture_output=True, text=True, timeout=300
    )
