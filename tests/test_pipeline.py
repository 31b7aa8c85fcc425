"""One pipeline, many sessions: stop() never waits for a sink, and what many
concurrent requests hand over arrives once each, even when a sink fails."""

from __future__ import annotations

import gc
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import gevent
import greenlet
import pytest

import greenprof
from greenprof import _naming
from greenprof.sinks import JSONSink, MemorySink, SkyWalkingSink

# -- stop() never waits for the network -----------------------------------------------------


class SilentCollector:
    """A TCP server on 127.0.0.1 that accepts connections and never reads
    from them: a collector hung behind a load balancer."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(connection)

    def close(self) -> None:
        self._listener.close()
        for connection in self._held:
            connection.close()


#: The sink's gRPC call timeout: a stop() that waited for the collector
#: would take at least this long.
CALL_TIMEOUT = 60.0


def test_stop_returns_at_once_with_a_collector_that_accepts_and_never_reads() -> None:
    collector = SilentCollector()
    sink = SkyWalkingSink(collector.address, task_id="t", segment_id="s", timeout=CALL_TIMEOUT)
    exported = MemorySink()  # gets what the SkyWalking sink gets

    def waits() -> None:
        for _ in range(3):
            greenlet.getcurrent().parent.switch()

    @greenprof.profile(sinks=[sink, exported])
    def handler() -> None:
        waits()

    try:
        began = time.monotonic()
        for _ in range(4):
            g = greenlet.greenlet(waits)
            with greenprof.profile(g, sinks=[sink, exported]) as profiler:
                while not g.dead:
                    g.switch()
            assert profiler.snapshots  # recorded, and handed over
        for _ in range(4):
            worker = greenlet.greenlet(handler)
            while not worker.dead:
                worker.switch()
        left_blocks = time.monotonic() - began
        # Eight requests handed their snapshots over and went on while the
        # sender's first call still waits for the collector.
        assert left_blocks < CALL_TIMEOUT
        assert sink.sent == 0
        assert sink.flush(0.2) is False
    finally:
        sink.close(timeout=0.2)
        collector.close()
    # Everything was given up: the call in flight, ended by close(), and what
    # waited behind it.
    assert sink.unconfirmed > 0
    assert sink.lost + sink.unconfirmed == len(exported.snapshots)


# -- one pipeline, 1,000 concurrent sessions ----------------------------------------------


class FlakySink(MemorySink):
    """Fails every third export: the pipeline must retry each batch once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.failed = 0

    def export(self, batch: Sequence[greenprof.Snapshot]) -> None:
        self.calls += 1
        if self.calls % 3 == 0:
            self.failed += 1
            raise ConnectionError("collector unavailable")
        super().export(batch)


def test_a_pipeline_shared_by_1000_concurrent_sessions_delivers_each_exactly_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("CRITICAL", logger="greenprof")  # the flaky sink's failure log
    memory, flaky = MemorySink(), FlakySink()
    path = tmp_path / "requests.jsonl"
    scope = greenprof.profile(sinks=[memory, flaky, JSONSink(path)], tags={"app": "shop"})
    profilers: dict[int, greenprof.Profiler] = {}

    def request(n: int) -> None:
        with scope as profiler:
            profilers[n] = profiler
            for _ in range(n % 4 + 1):
                gevent.sleep(0)

    gevent.joinall([gevent.spawn(request, n) for n in range(1000)], raise_error=True)
    assert scope.flush(30)

    expected = Counter()
    for profiler in profilers.values():
        assert len(profiler.sessions) == 1
        for snapshot in profiler.snapshots:
            expected[(snapshot.session_id, snapshot.sequence)] += 1
    assert len({s.session_id for p in profilers.values() for s in p.sessions}) == 1000
    assert set(expected.values()) == {1}
    # start, stop, and a switch out and in per sleep
    assert sum(expected.values()) == sum(2 + 2 * (n % 4 + 1) for n in range(1000))

    from_file = greenprof.Report.from_file(path)
    for name, snapshots, sessions in (
        ("memory", memory.snapshots, memory.sessions),
        ("flaky", flaky.snapshots, flaky.sessions),
        ("file", greenprof.load(path), from_file.sessions),
    ):
        got = Counter((s.session_id, s.sequence) for s in snapshots)
        assert got == expected, name
        assert sorted(s.session_id for s in sessions) == sorted({key[0] for key in expected}), name
        assert all(s.tags == {"app": "shop"} for s in sessions), name
    assert flaky.failed > 0
    assert scope._pipeline.delivery.failures == flaky.failed
    assert profilers[0].stats.sink_failures == flaky.failed


def test_a_sink_raising_greenlet_exit_still_receives_later_batches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("CRITICAL", logger="greenprof")

    class Interrupted(MemorySink):
        def __init__(self) -> None:
            super().__init__()
            self.interrupt = True

        def export(self, batch: Sequence[greenprof.Snapshot]) -> None:
            if self.interrupt:
                self.interrupt = False
                raise greenlet.GreenletExit
            super().export(batch)

    sink = Interrupted()
    scope = greenprof.profile(sinks=[sink])
    with scope as first:  # the sink's GreenletExit is its failure, not the program's
        gevent.sleep(0)
    assert first.stats.sink_failures == 1
    with scope as second:
        gevent.sleep(0)
    # The interrupted batch went with the next one, once.
    sent = Counter((s.session_id, s.sequence) for s in sink.snapshots)
    assert sorted(sent) == sorted(
        (s.session_id, s.sequence) for s in first.snapshots + second.snapshots
    )
    assert set(sent.values()) == {1}


# -- a session made cheap: what it makes only when asked --------------------------------


def test_a_session_id_read_before_start_is_the_first_sessions_and_later_ones_are_new() -> None:
    scope = greenprof.profile()
    profiler = scope.start()
    gevent.sleep(0)
    running_id = profiler.session_id  # first read while it runs
    profiler.stop()
    assert profiler.session_id == running_id
    assert {s.session_id for s in profiler.snapshots} == {running_id}
    assert [s.session_id for s in profiler.sessions] == [running_id]

    told = greenprof.Profiler()
    early = told.session_id  # e.g. bound to a SkyWalking task before it starts
    with told:
        gevent.sleep(0)
    told.start()
    gevent.sleep(0)
    told.stop()
    first, second = told.sessions
    assert first.session_id == early != second.session_id
    assert told.session_id == second.session_id
    assert {s.session_id for s in told.snapshots} == {early, second.session_id}


def test_a_session_id_read_from_two_threads_at_once_is_one_id() -> None:
    # The id is made when first read: two threads asking at the same time
    # (a sink building snapshots, the program reading it) agree.
    scope = greenprof.profile()
    for _ in range(50):
        profiler = scope.start()
        seen: list[str] = []
        barrier = threading.Barrier(2)

        def read(
            profiler: greenprof.Profiler = profiler,
            barrier: threading.Barrier = barrier,
            seen: list[str] = seen,
        ) -> None:
            barrier.wait()
            seen.append(profiler.session_id)

        other = threading.Thread(target=read)
        other.start()
        read()
        other.join()
        profiler.stop()
        assert seen[0] == seen[1] == profiler.sessions[0].session_id


def test_tags_read_or_set_only_at_stop_and_defaults_reach_the_session() -> None:
    scope = greenprof.profile(tags={"service": "shop"})
    untouched = scope.start()
    untouched.stop()
    assert untouched.sessions[0].tags == {"service": "shop"}

    changed = scope.start()
    assert changed.sessions[0].tags == {"service": "shop"}  # its record while it runs
    changed.tags["path"] = "/cart"
    assert changed.sessions[0].tags == {"service": "shop", "path": "/cart"}
    changed.stop()
    assert changed.sessions[0].tags == {"service": "shop", "path": "/cart"}

    replaced = scope.start()
    replaced.tags = {"path": "/pay"}
    replaced.stop()
    assert replaced.sessions[0].tags == {"path": "/pay"}
    with pytest.raises(greenprof.exceptions.ConfigurationError):
        replaced.tags = {"path": 5}  # type: ignore[dict-item]


def test_a_kept_sessions_greenlet_has_its_name_and_a_dropped_one_never_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from greenprof import _session

    named: list[greenlet.greenlet] = []

    def counting_name(glet: greenlet.greenlet) -> str:
        named.append(glet)
        return _naming.greenlet_name(glet)

    monkeypatch.setattr(_session, "greenlet_name", counting_name)
    kept: list[greenprof.Profiler] = []

    def request(into: greenprof.ProfileScope) -> None:
        profiler = into.start()
        gevent.sleep(0)
        profiler.stop()
        kept.append(profiler)

    dropped = gevent.spawn(request, greenprof.profile(min_duration=3600))
    dropped.join()
    assert kept[0].discarded
    assert named == []  # naming a greenlet costs more than a dropped session

    worker = gevent.Greenlet(request, greenprof.profile())
    worker.name = "checkout-worker"
    worker.start()
    worker.join()
    assert named == [worker]
    del worker, named[:]
    gc.collect()
    assert {s.greenlet_name for s in kept[1].snapshots} == {"checkout-worker"}


def test_a_session_read_while_it_runs_names_its_greenlet() -> None:
    scope = greenprof.profile()
    profiler: list[greenprof.Profiler] = []

    def body() -> None:
        profiler.append(scope.start())
        gevent.sleep(0.02)
        profiler[0].stop()

    runner = gevent.Greenlet(body)
    runner.name = "runner"
    runner.start()
    gevent.sleep(0.005)
    assert {s.greenlet_name for s in profiler[0].snapshots} == {"runner"}  # mid-run
    runner.join()
    assert {s.greenlet_name for s in profiler[0].snapshots} == {"runner"}


# -- fork -----------------------------------------------------------------------------------


# Python 3.12+ warns at a fork with threads running: that is this test's point.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_goes_on_with_sessions_whose_locks_a_parent_thread_held() -> None:
    from greenprof._build import FORMATTER

    sink = MemorySink()
    profiler = greenprof.Profiler(sinks=[sink])
    partner = greenlet.greenlet(lambda: main.switch())
    main = greenlet.getcurrent()
    profiler.start()
    partner.switch()
    run = profiler._run
    assert run is not None
    # A thread of the parent holds every lock the child will need (reading
    # snapshots, flushing, stats), as a progress thread or a sink might.
    held = [run.lock, FORMATTER._lock, profiler._pipeline.delivery._lock]
    acquired, release = threading.Event(), threading.Event()

    def holder() -> None:
        for lock in held:
            lock.acquire()
        acquired.set()
        release.wait()
        for lock in held:
            lock.release()

    thread = threading.Thread(target=holder)
    thread.start()
    assert acquired.wait(10)
    pid = os.fork()
    if pid == 0:  # the child goes on with the session it inherited
        code = 1
        try:
            profiler.stop()
            recorded = [s.event for s in profiler.snapshots]
            flushed = profiler.flush(5)
            code = 0 if recorded == ["start", "switch_out", "switch_in", "stop"] and flushed else 2
        finally:
            os._exit(code)
    release.set()
    thread.join()
    profiler.stop()
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on a lock its parent's thread held")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert [s.event for s in sink.snapshots] == ["start", "switch_out", "switch_in", "stop"]
