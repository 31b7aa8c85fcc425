"""Sinks that raise what is not an Exception, fail to describe their own
failure, block in export or flush, or never return: stop() returns at once,
flush() within its timeout, every other sink gets every snapshot, the
failure is counted, and the program sees none of it (but a Ctrl-C)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence

import gevent
import greenlet
import pytest

import greenprof
from greenprof import Snapshot
from greenprof.exceptions import ConfigurationError
from greenprof.sinks import MemorySink, SkyWalkingSink

from .conftest import free_port, run_python

#: Switches of the workload below: it yields 402 snapshots.
SWITCHES = 200
SNAPSHOTS = 2 * SWITCHES + 2

#: What a slow sink sleeps, and what a flush given half a second may take
#: at most: generous, only to tell "waited for the sink" from "did not".
SINK_SLEEP = 3.0
WELL_UNDER_SINK_SLEEP = 2.5


@pytest.fixture(autouse=True)
def _quiet_failure_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="greenprof")


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


class Recorder:
    """A sink of the user's own (it says nothing of its export, so greenprof
    calls it from a thread of its own)."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self.lock = threading.Lock()

    def export(self, batch: Sequence[Snapshot]) -> None:
        with self.lock:
            self.snapshots.extend(batch)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


class Raising(Recorder):
    """Its first ``times`` exports raise ``exception``."""

    def __init__(self, exception: type[BaseException], times: int = 1_000_000) -> None:
        super().__init__()
        self.exception = exception
        self.times = times
        self.calls = 0

    def export(self, batch: Sequence[Snapshot]) -> None:
        self.calls += 1
        if self.calls <= self.times:
            raise self.exception
        super().export(batch)


class InlineRaising(MemorySink):
    """Like Raising, but inline: a MemorySink, called in the thread that stops."""

    def __init__(self, exception: type[BaseException], times: int = 1) -> None:
        super().__init__()
        self.exception = exception
        self.times = times
        self.calls = 0

    def export(self, batch: Sequence[Snapshot]) -> None:
        self.calls += 1
        if self.calls <= self.times:
            raise self.exception
        super().export(batch)


# -- exceptions that are not Exceptions -----------------------------------------------


@pytest.mark.parametrize(
    "exception", [KeyboardInterrupt, SystemExit, greenlet.GreenletExit], ids=lambda e: e.__name__
)
def test_a_sink_raising_a_base_exception_is_a_failure_the_program_never_sees(
    exception: type[BaseException],
) -> None:
    raising, after = Raising(exception), MemorySink()
    profiler = profile_work([raising, after])
    profiler.stop()  # does not raise
    assert len(after.snapshots) == SNAPSHOTS
    assert after.snapshots == profiler.snapshots
    assert profiler.flush() is False  # its batch is offered again, and fails again
    assert raising.calls == 2
    assert profiler.stats.sink_failures == 2
    assert after.snapshots == profiler.snapshots


@pytest.mark.parametrize("exception", [SystemExit, greenlet.GreenletExit], ids=lambda e: e.__name__)
def test_an_inline_sink_raising_a_base_exception_is_a_failure_the_program_never_sees(
    exception: type[BaseException],
) -> None:
    raising, after = InlineRaising(exception), MemorySink()
    profiler = profile_work([raising, after])
    profiler.stop()  # does not raise
    assert after.snapshots == profiler.snapshots
    assert len(after.snapshots) == SNAPSHOTS
    assert profiler.stats.sink_failures == 1
    assert profiler.flush() is True  # the retry goes through
    assert raising.snapshots == profiler.snapshots


def test_a_ctrl_c_in_an_inline_sink_reaches_the_program_once_every_sink_had_its_snapshots() -> None:
    # In the program's thread a KeyboardInterrupt out of a sink may be a real
    # Ctrl-C that landed while it ran: it is raised again, but only after the
    # other sinks got their snapshots, and the sink is not wedged.
    raising, after = InlineRaising(KeyboardInterrupt), MemorySink()
    profiler = profile_work([raising, after])
    with pytest.raises(KeyboardInterrupt):
        profiler.stop()
    assert not profiler.is_running
    assert after.snapshots == profiler.snapshots
    assert len(after.snapshots) == SNAPSHOTS
    assert profiler.stats.sink_failures == 1
    assert profiler.flush() is True
    assert raising.snapshots == profiler.snapshots


# -- failures that cannot describe themselves -------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


class UnprintableSink(MemorySink):
    """Inline, so its failure happens inside stop(); even its repr() fails."""

    def export(self, batch: Sequence[Snapshot]) -> None:
        raise Unprintable

    def __repr__(self) -> str:
        raise RuntimeError("repr() of this sink fails")


def test_a_failure_whose_str_and_repr_raise_is_logged_and_the_later_sinks_get_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="greenprof")
    unprintable, later = UnprintableSink(), MemorySink()
    profiler = profile_work([unprintable, later])
    profiler.stop()  # does not raise
    assert later.snapshots == profiler.snapshots
    assert profiler.flush() is False
    assert later.snapshots == profiler.snapshots
    assert len(later.snapshots) == SNAPSHOTS
    assert profiler.stats.sink_failures == 2
    (record,) = [r for r in caplog.records if r.name == "greenprof"]
    message = record.getMessage()
    assert "UnprintableSink object at 0x" in message
    assert "failed in export() (Unprintable: <its str() raised>)" in message


# -- sinks that block ----------------------------------------------------------------------


class SlowExport(Recorder):
    def export(self, batch: Sequence[Snapshot]) -> None:
        time.sleep(SINK_SLEEP)
        super().export(batch)


class SlowFlush(MemorySink):
    """Inline export; a flush that ignores its timeout."""

    def flush(self, timeout: float | None = None) -> bool:
        time.sleep(SINK_SLEEP)
        return True


class StuckFlush(MemorySink):
    """A flush that never returns (until the test lets it go)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def flush(self, timeout: float | None = None) -> bool:
        self.release.wait()
        return True


def timed(call: object) -> tuple[object, float]:
    began = time.monotonic()
    result = call()  # type: ignore[operator]
    return result, time.monotonic() - began


def test_stop_and_flush_never_wait_for_a_sink_whose_export_sleeps() -> None:
    slow, memory, recorder = SlowExport(), MemorySink(), Recorder()
    profiler = profile_work([slow, memory, recorder], flush_timeout=0.5)
    _, stopping = timed(profiler.stop)
    assert stopping < WELL_UNDER_SINK_SLEEP
    assert memory.snapshots == profiler.snapshots  # inline: there when stop() returns
    flushed, flushing = timed(profiler.flush)
    assert flushed is False
    assert flushing < WELL_UNDER_SINK_SLEEP
    assert profiler.stats.sink_failures == 1  # the slow sink, not done in time
    # The other sinks got everything, the slow one gets it too, later.
    assert recorder.snapshots == memory.snapshots == profiler.snapshots
    assert profiler.flush(30) is True
    assert slow.snapshots == profiler.snapshots


def test_flush_returns_in_time_when_a_sinks_flush_ignores_its_timeout() -> None:
    slow, memory = SlowFlush(), MemorySink()
    profiler = profile_work([slow, memory], flush_timeout=0.5)
    profiler.stop()
    flushed, flushing = timed(profiler.flush)
    assert flushed is False
    assert flushing < WELL_UNDER_SINK_SLEEP
    assert profiler.stats.sink_failures == 1
    assert slow.snapshots == memory.snapshots == profiler.snapshots
    assert len(memory.snapshots) == SNAPSHOTS


def test_flush_returns_in_time_again_and_again_while_a_sinks_flush_never_returns() -> None:
    stuck, memory, recorder = StuckFlush(), MemorySink(), Recorder()
    profiler = profile_work([stuck, memory, recorder], flush_timeout=0.5)
    try:
        profiler.stop()
        for attempt in range(1, 3):
            flushed, flushing = timed(profiler.flush)
            assert flushed is False
            assert flushing < WELL_UNDER_SINK_SLEEP
            assert profiler.stats.sink_failures == attempt
        assert recorder.snapshots == memory.snapshots == stuck.snapshots == profiler.snapshots
        # A new session with the same sinks still reaches the others at once.
        with greenprof.profile(sinks=[stuck, recorder]) as second:
            gevent.sleep(0)
        assert stuck.snapshots[-len(second.snapshots) :] == second.snapshots
    finally:
        stuck.release.set()
    assert profiler.flush(30) is True


def test_greenlets_run_on_while_flush_waits_for_a_stuck_sink() -> None:
    # An unpatched gevent program: blocking its thread would stop them all.
    stuck = StuckFlush()
    ticks: list[float] = []

    def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    ticking = gevent.spawn(ticker)
    try:
        gevent.sleep(0.05)
        with greenprof.profile(sinks=[stuck], flush_timeout=1.0) as profiler:
            gevent.sleep(0.01)
        began = time.monotonic()
        assert profiler.flush() is False
        ended = time.monotonic()
    finally:
        ticking.kill()
        stuck.release.set()
    during = [tick for tick in ticks if began <= tick <= ended]
    assert len(during) > 50
    assert max(b - a for a, b in itertools.pairwise(during)) < 0.5


PATCHED_PROGRAM = """
    from gevent import monkey
    monkey.patch_all()
    import itertools, json, time
    import gevent
    import greenprof
    from greenprof.sinks import MemorySink

    class StuckFlush(MemorySink):
        def flush(self, timeout=None):
            # Called in the sink's own OS thread, where gevent runs a hub of
            # its own: patched, this sleep blocks that thread's greenlets.
            time.sleep(3600)
            return True

    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    ticking = gevent.spawn(ticker)
    gevent.sleep(0.05)
    memory = MemorySink()
    with greenprof.profile(sinks=[StuckFlush(), memory], flush_timeout=1.0) as profiler:
        gevent.sleep(0.01)
    began = time.monotonic()
    flushed = profiler.flush()
    ended = time.monotonic()
    ticking.kill()
    during = [t for t in ticks if began <= t <= ended]
    print(json.dumps({
        "flushed": flushed,
        "took": ended - began,
        "ticks": len(during),
        "max_gap": max(b - a for a, b in itertools.pairwise(during)),
        "delivered": memory.snapshots == profiler.snapshots,
    }))
"""


def test_under_patch_all_flush_waits_for_a_stuck_sink_without_stopping_the_greenlets() -> None:
    result = run_python(PATCHED_PROGRAM)
    assert result["flushed"] is False
    assert result["took"] < WELL_UNDER_SINK_SLEEP  # type: ignore[operator]
    assert result["ticks"] > 50  # type: ignore[operator]
    assert result["max_gap"] < 0.5  # type: ignore[operator]
    assert result["delivered"] is True


FORKED_PROGRAM = """
    import json, os, threading, time
    import greenprof

    class Slow:
        def __init__(self):
            self.snapshots = []
        def export(self, batch):
            time.sleep(0.5)
            self.snapshots.extend(batch)
        def flush(self, timeout=None):
            return True
        def close(self):
            pass

    sink = Slow()
    scope = greenprof.profile(sinks=[sink])
    with scope as parent:
        pass
    time.sleep(0.1)  # the sink's thread is in the middle of an export at the fork
    pid = os.fork()
    if pid == 0:
        with scope as child:
            pass
        ok = scope.flush(10)
        mine = [s.session_id for s in sink.snapshots]
        ids = {"parent": parent.session_id, "child": child.session_id}
        os.write(1, json.dumps({"ok": ok, "sessions": sorted(set(mine)), **ids}).encode() + b"\\n")
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"ok": scope.flush(10), "status": status,
                      "sessions": sorted({s.session_id for s in sink.snapshots})}))
"""


def test_a_forked_child_delivers_its_own_sessions_while_its_parents_sink_is_busy() -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORKED_PROGRAM)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    child_line, parent_line = result.stdout.strip().splitlines()[-2:]
    child, parent = json.loads(child_line), json.loads(parent_line)
    assert parent["status"] == 0
    assert parent["ok"] is True
    assert parent["sessions"] == [child["parent"]]
    # The child sent its own session, and not the one its parent was sending.
    assert child["ok"] is True
    assert child["sessions"] == [child["child"]]


# -- flushes with nothing to wait for ----------------------------------------------------


def others_ran_during(call: Callable[[], object]) -> tuple[object, bool]:
    """``call()``'s result, and whether another greenlet ran meanwhile."""
    ran: list[bool] = []
    other = gevent.spawn(ran.append, True)  # runs at the first chance
    try:
        return call(), bool(ran)
    finally:
        other.kill()


def test_a_flush_of_sinks_whose_flush_never_blocks_lets_no_other_greenlet_run() -> None:
    memory = MemorySink()
    retried = InlineRaising(ValueError, times=1)  # its batch waits for the flush
    profiler = profile_work([memory, retried])
    profiler.stop()
    assert (len(memory.snapshots), len(retried.snapshots)) == (SNAPSHOTS, 0)
    flushed, others_ran = others_ran_during(lambda: profiler.flush(1.0))
    assert flushed is True
    assert not others_ran  # no sink's thread to wait for
    assert len(retried.snapshots) == SNAPSHOTS  # handed over again, in place


def test_a_flush_of_zero_seconds_lets_no_other_greenlet_run() -> None:
    recorder = Recorder()  # called from a thread of its own
    profiler = profile_work([recorder])
    profiler.stop()
    _, others_ran = others_ran_during(lambda: profiler.flush(0))
    assert not others_ran  # asked not to wait, it does not
    assert profiler.flush(30) is True
    assert len(recorder.snapshots) == SNAPSHOTS


class FlushNotingThread(MemorySink):
    """Its flush, which may block for all greenprof knows: the promise of
    the MemorySink it overrides is not its own."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def flush(self, timeout: float | None = None) -> bool:
        self.threads.append(threading.get_ident())
        return True


class FlushNotingThreadNeverBlocking(FlushNotingThread):
    """The same, saying again that its flush never blocks."""

    flush_never_blocks = True

    def flush(self, timeout: float | None = None) -> bool:
        return super().flush(timeout)


@pytest.mark.parametrize(
    ("sink_class", "in_place"),
    [(FlushNotingThread, False), (FlushNotingThreadNeverBlocking, True)],
)
def test_a_flush_that_overrides_a_never_blocking_one_is_flushed_in_place_only_if_it_says_so(
    sink_class: type[FlushNotingThread], in_place: bool
) -> None:
    sink = sink_class()
    profiler = profile_work([sink])
    profiler.stop()
    assert profiler.flush(30) is True
    assert len(sink.snapshots) == SNAPSHOTS
    assert (sink.threads == [threading.get_ident()]) is in_place


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


def test_stop_returns_at_once_without_a_flush_limit_and_the_collector_down() -> None:
    sink = SkyWalkingSink(f"127.0.0.1:{free_port()}", task_id="t", segment_id="s", timeout=2)
    try:
        profiler = profile_work([sink], flush_timeout=None)
        _, stopping = timed(profiler.stop)
        assert stopping < WELL_UNDER_SINK_SLEEP
        assert profiler.flush(0.2) is False
    finally:
        sink.close(timeout=0)
    assert sink.lost + sink.unconfirmed == SNAPSHOTS
