"""What every session of a profiler shares, made once: the checked options,
the sinks and their delivery, and the clock.

``profile()`` (the decorator, the ``with`` block) and ``ProfilerMiddleware``
make one pipeline and a session per call from it, so a request pays for
its session, not for checking options or setting sinks up.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
import weakref
from collections.abc import Iterable
from typing import Final

from ._delivery import Delivery
from ._options import Options
from ._stack import MARKS
from ._validate import check_sinks, check_wait
from .typing import Sink

__all__ = ["Pipeline"]

#: Seconds the interpreter's exit may wait, in all, for sinks to send what
#: they were given (each pipeline also within its ``flush_timeout``).
EXIT_FLUSH_SECONDS: Final = 5.0


class Pipeline:
    """Options, sinks, clock: shared by every session a profiler starts."""

    __slots__ = ("__weakref__", "delivery", "marks", "offset_ns", "options", "plain")

    def __init__(self, options: Options, sinks: Iterable[Sink] = ()) -> None:
        self.options = options
        #: Sessions record only the greenlets they are started on, in
        #: greenlet mode: a request's session takes the shortest path.
        self.plain = (
            options.mode == "greenlet" and not options.follow_spawned and options.only is None
        )
        #: Whether its sessions' walks leave marks in frames (3.12+): not
        #: with a ``min_duration``, see ``GreenletBuffer.marks``.
        self.marks = MARKS and not options.min_duration_ns
        self.delivery = Delivery(check_sinks(sinks))
        #: Turns ``perf_counter_ns()`` into wall-clock ns: one monotonic
        #: clock, anchored once, for every session of the pipeline.
        self.offset_ns = time.time_ns() - time.perf_counter_ns()
        _pipelines.add(self)

    def wall_ns(self, perf_ns: int) -> int:
        """Wall-clock ns, on the snapshots' clock, of a ``perf_counter_ns()``."""
        return self.offset_ns + perf_ns

    def flush(self, timeout: float | None = None) -> bool:
        """Hand over what waits for a retry, and flush every sink, waiting
        ``timeout`` seconds at most (None: the pipeline's ``flush_timeout``)."""
        if timeout is None:
            timeout = self.options.flush_timeout
        else:
            check_wait("timeout", timeout)
        return self.delivery.flush(timeout)


_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pipeline in list(_pipelines):
        pipeline.delivery.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _flush_at_exit() -> None:
    """Give sinks a bounded last chance to send what they were handed:
    ``stop()`` never waits for them."""
    deadline = time.monotonic() + EXIT_FLUSH_SECONDS
    for pipeline in list(_pipelines):
        if not pipeline.delivery:
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            return
        timeout = pipeline.options.flush_timeout
        with contextlib.suppress(Exception):  # the program is exiting: nothing to tell
            pipeline.delivery.flush(left if timeout is None else min(timeout, left))
