"""Where greenprof hands control to the program: the few functions of
greenprof under which the program's own code runs (a decorated handler, a
middleware's application, the module ``greenprof run`` runs).

A sampler tells greenprof's work from the program's by the innermost frame
of greenprof's on a thread's stack: one of these, with the program's code
above it, is the program at work; any other is greenprof (whatever runs
above it: a weak container's callback or a signal handler the interpreter
ran in the middle of greenprof's code is greenprof's doing).
"""

from __future__ import annotations

from collections.abc import Callable
from types import CodeType
from typing import Any, Final, TypeVar

__all__ = ["PROGRAM_ENTRIES", "runs_the_program"]

F = TypeVar("F", bound=Callable[..., Any])

#: The code of every function of greenprof that calls the program's code.
PROGRAM_ENTRIES: Final[set[CodeType]] = set()


def runs_the_program(func: F) -> F:
    """Mark ``func`` as one under which the program's code runs."""
    PROGRAM_ENTRIES.add(func.__code__)
    return func
