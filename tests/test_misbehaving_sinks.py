"""Sinks that raise what is not an Exception, fail to describe their own
failure, block in export or flush, or never return: stop() returns at once,
flush() within its timeout, every other sink gets every snapshot, the
failure is counted, and the program sees none of it (but a Ctrl-C)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import greenlet
import pytest

import greenprof
from greenprof.exceptions import ConfigurationError
from greenprof.sinks import MemorySink

#: Switches of the workload below: it yields 402 snapshots.
SWITCHES = 200
SNAPSHOTS = 2 * SWITCHES + 2


def work() -> None:
    for _ in range(SWITCHES):
        greenlet.getcurrent().parent.switch()


def profile_work(sinks: Sequence[object], **options: object) -> greenprof.Profiler:
    """A started profiler that recorded ``SNAPSHOTS`` snapshots; stop it."""
    glet = greenlet.greenlet(work)
    profiler = greenprof.Profiler(sinks=sinks, **options)  # type: ignore[arg-type]
    profiler.start(glet)
    while not glet.dead:
        glet.switch()
    return profiler


# -- flush_timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -math.inf, -1, -0.001, "5", True])
def test_flush_timeout_refuses_what_is_not_a_finite_wait(timeout: object) -> None:
    with pytest.raises(ConfigurationError, match="flush_timeout must be a number of seconds >= 0"):
        greenprof.Profiler(flush_timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="flush_timeout must be a number of seconds >= 0"):
        greenprof.profile(flush_timeout=timeout)


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1])
def test_flush_refuses_a_timeout_that_is_not_a_finite_wait(timeout: float) -> None:
    profiler = profile_work([MemorySink()])
    profiler.stop()
    with pytest.raises(ConfigurationError, match="timeout must be a number of seconds >= 0"):
        profiler.flush(timeout)
