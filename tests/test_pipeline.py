"""One pipeline, many sessions: stop() never waits for a sink, and what many
concurrent requests hand over arrives once each, even when a sink fails."""

from __future__ import annotations

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
