"""Signals while greenprof's tracer runs: a handler's exception reaches the
program once, and the handler runs once, as without greenprof."""

from __future__ import annotations

import signal
import threading
from typing import Any

import greenlet
import pytest

import greenprof

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need the main thread"
)


class Tick(Exception):
    """What the program's SIGALRM handler raises: a timeout, say."""


def ping_pong_under_signals(profiled: bool, signals: int) -> tuple[int, int, Any]:
    """Two greenlets switch back and forth while SIGALRM arrives now and
    then and its handler raises; each greenlet catches what reaches it.
    ``(handler runs, exceptions the program caught, profiler)``."""
    state = {"handled": 0, "caught": 0}

    def handler(signum: int, frame: object) -> None:
        state["handled"] += 1
        raise Tick(state["handled"])

    def arm() -> None:  # one signal at a time: the next once this one was caught
        # (2 ms: long enough for the catcher to be back in its try block,
        # even on a busy machine where other threads take the GIL)
        if state["caught"] < signals:
            signal.setitimer(signal.ITIMER_REAL, 0.002)

    def body() -> None:
        try:
            while state["caught"] < signals:
                other[0].switch()
        except Tick:
            state["caught"] += 1
            arm()
            body()

    main = greenlet.getcurrent()
    first, second = greenlet.greenlet(body, parent=main), greenlet.greenlet(body, parent=main)
    other = [second]

    def body_second() -> None:
        other_of_second[0] = first
        body_pair(first)

    other_of_second: list[greenlet.greenlet] = [first]

    def body_pair(partner: greenlet.greenlet) -> None:
        try:
            while state["caught"] < signals:
                partner.switch()
        except Tick:
            state["caught"] += 1
            arm()
            body_pair(partner)

    first = greenlet.greenlet(lambda: body_pair(second), parent=main)
    second = greenlet.greenlet(lambda: body_pair(first), parent=main)
    previous = signal.signal(signal.SIGALRM, handler)
    profiler = greenprof.Profiler(max_snapshots=10**9)
    try:
        if profiled:
            profiler.start(first)
            profiler.start(second)
        arm()
        first.switch()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if profiled:
            profiler.stop()
    return state["handled"], state["caught"], profiler


def test_a_handlers_exception_reaches_the_program_once_without_greenprof() -> None:
    handled, caught, _ = ping_pong_under_signals(False, 50)
    assert handled == caught == 50  # the baseline: what the program sees


def test_a_handlers_exception_reaches_the_program_once_under_greenprof() -> None:
    handled, caught, profiler = ping_pong_under_signals(True, 100)
    assert caught == 100
    assert handled == caught  # none lost inside the tracer, none raised twice
    assert profiler.stats.tracer_errors == 0  # the program's, not greenprof's errors
    assert profiler.snapshots
