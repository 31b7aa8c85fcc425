"""SkyWalkingSink against a real gRPC server on 127.0.0.1 speaking SkyWalking's protocol."""

from __future__ import annotations

import itertools
import json
import logging
import math
import subprocess
import sys
import textwrap
import time

import gevent
import pytest

import greenprof
from greenprof.exceptions import ConfigurationError, SinkClosedError
from greenprof.sinks import SkyWalkingSink
from greenprof.skywalking import _wire as wire
from greenprof.skywalking._sink import _BACKOFF_MAX, _BACKOFF_MIN, _Backoff

from .conftest import GREENPROF_DIR, free_port
from .fake_oap import FakeOAP


def snapshot(
    sequence: int, session: str = "s", stack: tuple[greenprof.Frame, ...] = ()
) -> greenprof.Snapshot:
    return greenprof.Snapshot(
        greenlet_id=1,
        greenlet_name="g",
        thread_id=1,
        event="switch_out",
        sequence=sequence,
        timestamp_ns=1_700_000_000_123_456_789 + sequence * 1_000_000,
        stack=stack or (greenprof.Frame("/app/views.py", "handler", 22),),
        session_id=session,
    )


# -- the wire format -----------------------------------------------------------------------


def test_messages_are_byte_for_byte_what_protobuf_encodes() -> None:
    profile_pb2 = pytest.importorskip("skywalking.protocol.profile.Profile_pb2")
    expected = profile_pb2.ThreadSnapshot(
        taskId="task-1",
        traceSegmentId="segment-1",
        time=1_700_000_000_123,
        sequence=7,
        stack=profile_pb2.ThreadStack(codeSignatures=["/app/a.py.main: 3", "/app/b.py.f: 9"]),
    ).SerializeToString()
    ours = wire.encode_thread_snapshot(
        task_id="task-1",
        segment_id="segment-1",
        time_ms=1_700_000_000_123,
        sequence=7,
        signatures=["/app/a.py.main: 3", "/app/b.py.f: 9"],
    )
    assert ours == expected
    query = profile_pb2.ProfileTaskCommandQuery(
        service="svc", serviceInstance="inst", lastCommandTime=-1
    ).SerializeToString()
    assert wire.encode_command_query(service="svc", instance="inst", last_command_time=-1) == query
    assert wire.decode_command_query(query) == ("svc", "inst", -1)


# -- what arrives ----------------------------------------------------------------------------


def alpha_wait() -> None:
    gevent.sleep(0.002)


def beta_wait() -> None:
    gevent.sleep(0.003)


def test_concurrent_requests_arrive_with_their_own_segments_sequences_and_stacks() -> None:
    spans: dict[str, tuple[int, int]] = {}
    with FakeOAP() as oap:
        sink = SkyWalkingSink(oap.address, task_id="task-1", authentication="s3cret")

        def request(index: int) -> None:
            segment = f"segment-{index}"
            start = time.time_ns() // 1_000_000
            with greenprof.profile(sinks=[sink]) as profiler:
                sink.bind(profiler.session_id, task_id="task-1", segment_id=segment)
                for _ in range(3):
                    (alpha_wait if index % 2 else beta_wait)()
            spans[segment] = (start, time.time_ns() // 1_000_000)

        gevent.joinall([gevent.spawn(request, i) for i in range(6)])
        assert sink.flush(10) is True
        sink.close()
        received = list(oap.snapshots)
        metadata = oap.metadata
    assert {m.get("authentication") for m in metadata} == {"s3cret"}
    by_segment: dict[str, list[wire.ThreadSnapshotMessage]] = {}
    for message in received:
        assert message.task_id == "task-1"
        by_segment.setdefault(message.segment_id, []).append(message)
    assert set(by_segment) == set(spans)
    for segment, messages in by_segment.items():
        index = int(segment.rsplit("-", 1)[1])
        mine = "alpha_wait" if index % 2 else "beta_wait"
        other = "beta_wait" if index % 2 else "alpha_wait"
        # Where it started, 3 waits (out and in), where it stopped.
        assert sorted(m.sequence for m in messages) == list(range(8))
        start, end = spans[segment]
        assert all(start <= m.time_ms <= end for m in messages)
        messages.sort(key=lambda m: m.sequence)
        for message in messages:
            assert message.signatures  # root first: the request function, then its wait
            assert message.signatures[0].startswith(f"{__file__}.")
            assert not any(f".{other}: " in s for s in message.signatures)
            assert not any(s.startswith(GREENPROF_DIR) for s in message.signatures)
        for message in messages[1:-1]:
            assert any(f".{mine}: " in s for s in message.signatures)
        for message in (messages[0], messages[-1]):  # the with block's line
            leaf = message.signatures[-1]
            assert leaf.startswith(f"{__file__}.")
            assert ".request: " in leaf
    assert sink.sent == len(received) == 48
    assert sink.dropped == sink.unbound == 0


def test_signatures_are_the_agents_format_root_first_and_capped() -> None:
    frames = tuple(greenprof.Frame(f"/app/m{i}.py", f"f{i}", i + 1) for i in range(8))
    with FakeOAP() as oap:
        sink = SkyWalkingSink(oap.address, task_id="t", segment_id="s", max_depth=5)
        sink.export([snapshot(0, stack=frames)])
        assert sink.flush(10)
        sink.close()
        (message,) = oap.snapshots
    assert message.signatures == tuple(f"/app/m{i}.py.f{i}: {i + 1}" for i in range(5))
    assert message.time_ms == 1_700_000_000_123  # epoch milliseconds
    assert message.sequence == 0


def test_snapshots_of_sessions_without_task_and_segment_are_not_sent() -> None:
    with FakeOAP() as oap:
        sink = SkyWalkingSink(oap.address)
        sink.bind("known", task_id="t", segment_id="s")
        sink.export([snapshot(0, "known"), snapshot(1, "stranger"), snapshot(2, "known")])
        assert sink.flush(10)
        sink.close()
        assert sorted(m.sequence for m in oap.snapshots) == [0, 1]
    assert sink.unbound == 1


# -- faults ------------------------------------------------------------------------------


def test_collector_absent_at_start_gets_everything_once_it_comes_up() -> None:
    port = free_port()
    sink = SkyWalkingSink(f"127.0.0.1:{port}", task_id="t", segment_id="s", timeout=2)
    sink.export([snapshot(i) for i in range(20)])
    assert sink.flush(0.3) is False  # nobody listening yet
    assert sink.sent == 0
    with FakeOAP(port) as oap:
        assert sink.flush(30) is True
        sink.close()
        assert set(oap.unique()) == {("t", "s", i) for i in range(20)}
    assert sink.failures >= 1
    assert sink.dropped == 0


def test_collector_killed_mid_stream_and_restarted_loses_nothing() -> None:
    port = free_port()
    sink = SkyWalkingSink(f"127.0.0.1:{port}", task_id="t", segment_id="s", timeout=2)
    with FakeOAP(port) as first:
        sink.export([snapshot(i) for i in range(10)])
        assert sink.flush(10)
        got_first = set(first.unique())
    sink.export([snapshot(i) for i in range(10, 30)])  # collector down now
    assert sink.flush(0.3) is False
    with FakeOAP(port) as second:
        assert sink.flush(30) is True
        sink.close()
        got_second = set(second.unique())
    assert got_first | got_second == {("t", "s", i) for i in range(30)}
    assert sink.failures >= 1


def test_a_full_queue_drops_the_newest_and_counts_them() -> None:
    port = free_port()
    sink = SkyWalkingSink(f"127.0.0.1:{port}", task_id="t", segment_id="s", queue_size=5, timeout=2)
    sink.export([snapshot(i) for i in range(20)])
    assert sink.dropped == 15
    with FakeOAP(port) as oap:
        assert sink.flush(30)
        sink.export([snapshot(i) for i in range(20, 23)])  # room again
        assert sink.flush(30)
        sink.close()
        # dropped snapshots took no sequence number: no gap in what arrived
        assert set(oap.unique()) == {("t", "s", i) for i in range(8)}


def test_a_slow_collector_does_not_slow_export() -> None:
    with FakeOAP(delay=0.05) as oap:
        sink = SkyWalkingSink(oap.address, task_id="t", segment_id="s", timeout=5)
        sink.export([snapshot(i) for i in range(40)])
        # export returned while the collector (50 ms a message) is still busy
        assert sink.sent < 40
        assert sink.flush(30) is True
        assert len(oap.unique()) == 40
        sink.close()


def test_close_reports_what_the_collector_never_got(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="greenprof")
    sink = SkyWalkingSink(f"127.0.0.1:{free_port()}", task_id="t", segment_id="s", timeout=1)
    sink.export([snapshot(i) for i in range(3)])
    sink.close(timeout=0.2)
    sink.close()  # idempotent
    assert any(
        "3 snapshots the collector never acknowledged" in r.getMessage() for r in caplog.records
    )
    with pytest.raises(SinkClosedError, match="is closed"):
        sink.export([snapshot(0)])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="host:port"):
        SkyWalkingSink("localhost")
    with pytest.raises(ConfigurationError, match="queue_size"):
        SkyWalkingSink("127.0.0.1:11800", queue_size=0)


@pytest.mark.parametrize(
    "address",
    ["not-a-host:99999", "host:0", "host:65536", ":11800", "host:", "host:port", "", 11800, None],
)
def test_an_address_that_is_not_host_and_port_is_refused_at_once(address: object) -> None:
    with pytest.raises(ConfigurationError, match="with a port from 1 to 65535") as info:
        SkyWalkingSink(address)  # type: ignore[arg-type]
    assert repr(address) in str(info.value)


@pytest.mark.parametrize("timeout", [None, "5", math.nan, math.inf, -1, 0, True])
def test_a_call_timeout_that_is_not_positive_finite_seconds_is_refused_at_once(
    timeout: object,
) -> None:
    with pytest.raises(ConfigurationError, match="a finite number > 0") as info:
        SkyWalkingSink("127.0.0.1:11800", timeout=timeout)  # type: ignore[arg-type]
    assert repr(timeout) in str(info.value)


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1, "1"])
def test_flush_refuses_a_wait_that_is_not_seconds(timeout: object) -> None:
    sink = SkyWalkingSink(f"127.0.0.1:{free_port()}", task_id="t", segment_id="s")
    with pytest.raises(ConfigurationError, match="timeout must be a number of seconds >= 0"):
        sink.flush(timeout)  # type: ignore[arg-type]
    sink.close(timeout=0)


# -- a collector that is down or aborts: backoff, and what is counted ----------------------


def test_exports_while_the_sender_backs_off_make_no_extra_calls() -> None:
    with FakeOAP(abort_after=0) as oap:
        sink = SkyWalkingSink(oap.address, task_id="t", segment_id="s", timeout=2)
        try:
            for sequence in range(50):  # a request every 20 ms, for a second
                sink.export([snapshot(sequence)])
                time.sleep(0.02)
            calls = oap.calls
        finally:
            sink.close(timeout=0)
    # Waits of 0.1 s doubling (with jitter) between calls: a handful of calls
    # in that second, not one per export.
    assert 2 <= calls <= 10


def test_flush_with_the_collector_down_only_waits() -> None:
    with FakeOAP(abort_after=0) as oap:
        sink = SkyWalkingSink(oap.address, task_id="t", segment_id="s", timeout=2)
        try:
            sink.export([snapshot(i) for i in range(10)])
            began = time.monotonic()
            assert sink.flush(1.0) is False
            waited = time.monotonic() - began
            calls = oap.calls
        finally:
            sink.close(timeout=0)
    assert 0.9 < waited < 2.5  # its timeout, not the collector, ends it
    assert 2 <= calls <= 8  # the sender's backoff, not the flush, sets the pace


def test_the_backoff_doubles_up_to_its_bound_with_jitter() -> None:
    first, second = _Backoff(), _Backoff()
    waits = [first.next() for _ in range(12)]
    ceilings = [min(_BACKOFF_MIN * 2**n, _BACKOFF_MAX) for n in range(12)]
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling
    assert ceilings[-1] == _BACKOFF_MAX
    assert waits != [second.next() for _ in range(12)]  # two processes do not call together
    first.reset()
    assert first.next() <= _BACKOFF_MIN


def test_greenlets_run_on_through_a_profiled_block_and_flushes_with_the_collector_down() -> None:
    # An unpatched gevent program: a real lock or time.sleep in its thread
    # would stop every greenlet.
    sink = SkyWalkingSink(f"127.0.0.1:{free_port()}", task_id="t", segment_id="s", timeout=2)
    ticks: list[float] = []

    def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    def request() -> None:
        for _ in range(5):
            gevent.sleep(0.01)

    ticking = gevent.spawn(ticker)
    try:
        gevent.sleep(0.05)
        began = time.monotonic()
        worker = gevent.spawn(request)
        with greenprof.profile(worker, sinks=[sink], flush_timeout=1.0) as profiler:
            worker.join()
        left_block = time.monotonic()
        assert sink.flush(1.0) is False
        assert profiler.flush() is False  # the pipeline's: the sink flushes in its own thread
        ended = time.monotonic()
    finally:
        ticking.kill()
        sink.close(timeout=0)
    assert left_block - began < 2.5  # stop() never flushes
    assert profiler.snapshots
    during = [tick for tick in ticks if began <= tick <= ended]
    assert len(during) > 50
    assert max(b - a for a, b in itertools.pairwise(during)) < 0.5


def test_messages_of_aborted_calls_given_up_at_close_are_unconfirmed_not_lost() -> None:
    with FakeOAP(abort_after=100) as oap:
        sink = SkyWalkingSink(oap.address, task_id="t", segment_id="s", timeout=5)
        sink.export([snapshot(i) for i in range(1000)])
        assert sink.flush(0.5) is False
        sink.close(timeout=0)
        stored = set(oap.unique())
    # Each call stored the first 100 of its 500 messages and was aborted;
    # close() gave up those 500, which the collector may hold in part, and
    # the 500 that no call had carried yet.
    assert stored == {("t", "s", i) for i in range(100)}
    assert (sink.sent, sink.dropped, sink.unbound) == (0, 0, 0)
    assert (sink.lost, sink.unconfirmed) == (500, 500)
    assert sink.sent + sink.dropped + sink.unbound + sink.lost + sink.unconfirmed == 1000
    assert len(stored) + sink.dropped + sink.lost <= 1000
    assert sink.failures >= 1


def test_messages_of_an_aborted_call_that_a_retry_delivers_count_as_sent_once() -> None:
    with FakeOAP(abort_after=100, aborted_calls=1) as oap:
        sink = SkyWalkingSink(oap.address, task_id="t", segment_id="s", timeout=5)
        sink.export([snapshot(i) for i in range(1000)])
        assert sink.flush(30) is True
        sink.close()
        received = len(oap.snapshots)
        stored = set(oap.unique())
    assert stored == {("t", "s", i) for i in range(1000)}
    assert received == 1100  # the aborted call's first 100 arrived twice...
    assert sink.sent == 1000  # ...and count once
    assert (sink.lost, sink.unconfirmed, sink.failures) == (0, 0, 1)


# -- packaging ----------------------------------------------------------------------------


def test_without_grpcio_importing_works_and_constructing_names_the_extra() -> None:
    # grpcio is installed here; hiding it from the import system is the only
    # way to see what a user without the extra sees.
    code = textwrap.dedent(
        """
        import sys
        sys.modules["grpc"] = None
        import greenprof
        from greenprof.sinks import SkyWalkingSink
        from greenprof.exceptions import MissingDependencyError
        try:
            SkyWalkingSink("127.0.0.1:11800")
        except MissingDependencyError as exc:
            print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'greenprof[skywalking]'" in out.stdout


def test_no_descriptor_pool_clash_with_the_agents_stubs_in_either_order() -> None:
    pytest.importorskip("skywalking.protocol.profile.Profile_pb2")
    for first, second in (
        ("greenprof.sinks", "skywalking.protocol.profile.Profile_pb2"),
        ("skywalking.protocol.profile.Profile_pb2", "greenprof.sinks"),
    ):
        code = f"import {first}, {second}; print('ok')"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "ok"


def test_close_keeps_retrying_until_its_timeout() -> None:
    import threading

    port = free_port()
    sink = SkyWalkingSink(f"127.0.0.1:{port}", task_id="t", segment_id="s", timeout=2)
    sink.export([snapshot(i) for i in range(3)])
    oap = FakeOAP(port)
    later = threading.Timer(0.5, oap.start)  # the collector comes back during close()
    later.start()
    try:
        sink.close(timeout=20)
        later.join()
        assert set(oap.unique()) == {("t", "s", i) for i in range(3)}
    finally:
        oap.stop()
    assert sink.lost == 0


# -- fork --------------------------------------------------------------------------------

FORKING_SERVICE = """
    import json, os, sys
    if {gevent_mode}:
        from gevent import monkey
        monkey.patch_all()
        import grpc.experimental.gevent
        grpc.experimental.gevent.init_gevent()
    import greenlet
    import greenprof
    from greenprof.sinks import SkyWalkingSink

    sink = SkyWalkingSink({address!r}, timeout=5)

    def work():
        for _ in range(3):
            greenlet.getcurrent().parent.switch()

    def request(segment):
        g = greenlet.greenlet(work)
        with greenprof.profile(g, sinks=[sink]) as profiler:
            sink.bind(profiler.session_id, task_id="task", segment_id=segment)
            while not g.dead:
                g.switch()
        return len(profiler.snapshots)

    per_request = request("parent-0")
    assert sink.flush(30)
    # The collector takes 20 ms a message: at the fork, the parent's sender
    # is in the middle of a call and has more queued.
    for n in range(1, 4):
        request(f"parent-{{n}}")
    pid = os.fork()
    if pid == 0:
        request("child")
        ok = sink.flush(30)
        os.write(1, json.dumps({{"ok": ok, "sent": sink.sent}}).encode() + b"\\n")
        os._exit(0 if ok else 3)
    parent_ok = sink.flush(60)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({{"parent_ok": parent_ok, "status": status, "per_request": per_request}}))
"""


@pytest.mark.parametrize("gevent_mode", [False, True], ids=["thread-sender", "gevent-grpc"])
def test_a_forked_childs_sink_sends_its_own_snapshots(gevent_mode: bool) -> None:
    with FakeOAP(delay=0.02) as oap:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(FORKING_SERVICE).format(
                    address=oap.address, gevent_mode=gevent_mode
                ),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        child_line, parent_line = result.stdout.strip().splitlines()[-2:]
        child, parent = json.loads(child_line), json.loads(parent_line)
        received = list(oap.snapshots)
    per_request = parent["per_request"]
    assert per_request >= 4  # start, switches, stop
    assert parent["parent_ok"]
    assert parent["status"] == 0
    # The child sent its own request, and nothing its parent had queued.
    assert child == {"ok": True, "sent": per_request}
    by_segment: dict[str, list[int]] = {}
    for message in received:
        by_segment.setdefault(message.segment_id, []).append(message.sequence)
    assert sorted(by_segment["child"]) == list(range(per_request))
    # Each of the parent's requests arrived once, from the parent alone.
    for n in range(4):
        assert sorted(by_segment[f"parent-{n}"]) == list(range(per_request))
    assert set(by_segment) == {"child", *(f"parent-{n}" for n in range(4))}
