"""Where greenprof hands control to the program: the few functions of
greenprof under which the program's own code runs (a decorated handler, a
middleware's application, the module ``greenprof run`` runs).

A sampler tells greenprof's work from the program's by the innermost frame
of greenprof's on a thread's stack: one of these, with the program's code
above it (code other than the standard library's locks and greenprof
run's launching machinery), is the program at work; any other is
greenprof (whatever runs above it: a weak container's callback or a
signal handler the interpreter ran in the middle of greenprof's code is
greenprof's doing). The user's callbacks that greenprof calls for its
own work (``request_tags``, a sink, ``only`` matchers) are greenprof's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

__all__ = ["PROGRAM_ENTRIES", "runs_the_program"]

F = TypeVar("F", bound=Callable[..., Any])

#: ``id()`` of the code of each function of greenprof marked as calling the
#: program's code (the code objects live as long as greenprof's modules:
#: their ids stay theirs). By id: a code object compares equal to another
#: of the same content, wherever it comes from.
PROGRAM_ENTRIES: Final[set[int]] = set()


def runs_the_program(func: F) -> F:
    """Mark ``func`` as one under which the program's code runs."""
    PROGRAM_ENTRIES.add(id(func.__code__))
    return func
