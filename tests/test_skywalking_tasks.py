"""Profile tasks from a (fake, real-gRPC) SkyWalking OAP, applied to a gevent WSGI app."""

from __future__ import annotations

import logging
import math
import time

import gevent
import gevent.socket
import pytest
from gevent import pywsgi

from greenprof.exceptions import ConfigurationError, GreenprofError, WireFormatError
from greenprof.integrations.skywalking import ProfileTask, ProfileTaskPoller
from greenprof.sinks import SkyWalkingSink
from greenprof.skywalking import _wire as wire

from .conftest import GREENPROF_DIR, http_get
from .fake_oap import FakeOAP, task_command


def slow_work() -> None:
    gevent.sleep(0.05)


def app(environ: dict[str, object], start_response: object) -> list[bytes]:
    if environ["PATH_INFO"] == "/slow":
        slow_work()
    start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"ok"]


def wait_until(condition: object, attempts: int = 400) -> bool:
    for _ in range(attempts):
        if condition():  # type: ignore[operator]
            return True
        gevent.sleep(0.01)
    return False


def test_a_task_profiles_its_endpoint_only_and_is_reported_finished() -> None:
    with FakeOAP() as oap:
        now_ms = int(time.time() * 1000)
        # A one-minute task that started 58.5 s ago: it ends 1.5 s from now.
        command = task_command(
            serial="sn-1", task_id="task-1", endpoint="/slow", start_ms=now_ms - 58_500
        )
        oap.commands = [command, command]  # a repeated serial number is ignored
        sink = SkyWalkingSink(oap.address, service="shop", instance="shop-1", timeout=5)
        poller = ProfileTaskPoller(sink, interval=0.05, max_parallel=2).start()
        try:
            assert wait_until(lambda: poller.task_for("/slow") is not None)
            server = pywsgi.WSGIServer(("127.0.0.1", 0), poller.wsgi(app), log=None)
            server.start()
            try:
                fast = [gevent.spawn(http_get, server.server_port, "/fast") for _ in range(3)]
                slow = [gevent.spawn(http_get, server.server_port, "/slow") for _ in range(6)]
                gevent.joinall([*fast, *slow], raise_error=True)
            finally:
                server.stop()
            assert sink.flush(10)
            assert wait_until(lambda: poller.finished == ["task-1"])
        finally:
            poller.stop()
            sink.close()
        messages = list(oap.snapshots)
        queries = list(oap.queries)
        finished = list(oap.finished)
    assert {m.task_id for m in messages} == {"task-1"}
    segments: dict[str, list[wire.ThreadSnapshotMessage]] = {}
    for message in messages:
        segments.setdefault(message.segment_id, []).append(message)
    # six concurrent /slow requests, at most two profiled at once
    assert len(segments) == 2
    for segment in segments.values():
        segment.sort(key=lambda m: m.sequence)
        assert [m.sequence for m in segment] == list(range(len(segment)))
        # Between where the request started and stopped, it waited in slow_work.
        assert len(segment) > 2
        assert all(any(".slow_work: " in s for s in m.signatures) for m in segment[1:-1])
        for edge in (segment[0], segment[-1]):
            assert not any(".slow_work: " in s for s in edge.signatures)
            assert not any(s.startswith(GREENPROF_DIR) for s in edge.signatures)
    assert queries[0] == ("shop", "shop-1", -1)
    assert queries[-1] == ("shop", "shop-1", now_ms - 58_500 - 5)  # lastCommandTime
    assert finished == [("shop", "shop-1", "task-1")]
    assert len(poller._serials) == 1


def test_a_task_command_reads_every_setting() -> None:
    task = ProfileTask.from_command(
        task_command(serial="sn", task_id="t", endpoint="/x", start_ms=1_000_000)
    )
    assert task == ProfileTask(
        task_id="t",
        serial_number="sn",
        endpoint_name="/x",
        start_time_ms=1_000_000,
        create_time_ms=999_995,
        duration_min=1,
        min_duration_threshold_ms=10,
        dump_period_ms=10,
        max_sampling_count=50,
    )
    assert task.end_time_ms == 1_060_000


def test_requests_faster_than_the_threshold_send_nothing() -> None:
    with FakeOAP() as oap:
        now_ms = int(time.time() * 1000)
        oap.commands = [task_command(serial="s", task_id="t", endpoint="/quick", start_ms=now_ms)]
        sink = SkyWalkingSink(oap.address, service="svc", instance="i", timeout=5)
        poller = ProfileTaskPoller(sink, interval=0.05).start()
        try:
            assert wait_until(lambda: poller.task_for("/quick") is not None)
            with poller.profile_request("/quick", "seg-quick") as profiler:
                gevent.sleep(0)  # a switch, well under the 10 ms threshold
            assert profiler is not None
            assert profiler.discarded
            with poller.profile_request("/quick", "seg-slow"):
                gevent.sleep(0.03)
            with poller.profile_request("/other", "seg-other") as other:
                gevent.sleep(0.03)
            assert other is None
            assert sink.flush(10)
        finally:
            poller.stop()
            sink.close()
        assert {m.segment_id for m in oap.snapshots} == {"seg-slow"}


def test_max_sampling_count_caps_the_requests_a_task_profiles() -> None:
    with FakeOAP() as oap:
        now_ms = int(time.time() * 1000)
        oap.commands = [
            task_command(
                serial="s", task_id="t", endpoint="/x", start_ms=now_ms, max_sampling_count=2
            )
        ]
        sink = SkyWalkingSink(oap.address, service="svc", instance="i", timeout=5)
        poller = ProfileTaskPoller(sink, interval=0.05).start()
        try:
            assert wait_until(lambda: poller.task_for("/x") is not None)
            profiled = []
            for index in range(5):
                with poller.profile_request("/x", f"seg-{index}") as profiler:
                    gevent.sleep(0.015)
                profiled.append(profiler is not None)
            assert sink.flush(10)
        finally:
            poller.stop()
            sink.close()
        assert profiled == [True, True, False, False, False]
        assert {m.segment_id for m in oap.snapshots} == {"seg-0", "seg-1"}


def test_a_slow_collector_never_holds_requests_up() -> None:
    with FakeOAP(delay=0.05) as oap:  # 50 ms per message received
        now_ms = int(time.time() * 1000)
        oap.commands = [task_command(serial="s", task_id="t", endpoint="/slow", start_ms=now_ms)]
        sink = SkyWalkingSink(oap.address, service="svc", instance="i", timeout=10)
        poller = ProfileTaskPoller(sink, interval=0.05).start()
        try:
            assert wait_until(lambda: poller.task_for("/slow") is not None)
            server = pywsgi.WSGIServer(("127.0.0.1", 0), poller.wsgi(app), log=None)
            server.start()
            try:
                for _ in range(4):  # one after another: each is profiled
                    assert http_get(server.server_port, "/slow").endswith(b"ok")
            finally:
                server.stop()
            # every request is done; the collector is still receiving
            assert sink.sent < 8
            assert sink.flush(30)
        finally:
            poller.stop()
            sink.close()
        assert len(oap.unique()) == 16  # 4 requests x (start, switch_out, switch_in, stop)


def test_install_refuses_an_agent_without_its_protocol_modules() -> None:
    import subprocess
    import sys

    # apache-skywalking 1.3.0 lacks the generated modules its profiler imports;
    # hiding one from the import system shows what install() says then.
    code = (
        "import sys; sys.modules['skywalking.profile.profile_context'] = None\n"
        "import greenprof.integrations.skywalking as s\n"
        "from greenprof.exceptions import MissingDependencyError\n"
        "try:\n    s.install()\nexcept MissingDependencyError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "install apache-skywalking==1.2.0" in out.stdout
    assert "1.3.0" in out.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"interval": math.nan},
            "interval is the seconds between two polls, a number > 0, not nan.",
        ),
        ({"interval": 0}, "a number > 0, not 0."),
        ({"interval": -1}, "a number > 0, not -1."),
        ({"interval": math.inf}, "a number > 0, not inf."),
        ({"interval": True}, "a number > 0, not True."),
        ({"interval": "20"}, "a number > 0, not '20'."),
        (
            {"mode": "sampling"},
            "mode must be one of 'greenlet', 'hybrid', 'thread', not 'sampling'.",
        ),
        ({"max_depth": 0}, "max_depth must be a whole number >= 1, not 0."),
    ],
)
def test_poller_options_are_checked_when_it_is_made_not_at_the_first_task(
    options: dict[str, object], message: str
) -> None:
    sink = SkyWalkingSink("127.0.0.1:1", service="svc", instance="i")
    try:
        with pytest.raises(ConfigurationError) as info:
            ProfileTaskPoller(sink, **options)  # type: ignore[arg-type]
        assert message in str(info.value)
    finally:
        sink.close()


# -- a collector that answers nonsense -------------------------------------------------

COMMAND_NAMED = bytes([0x0A, 0x05, 0x0A, 0x03])  # Commands.command[0].command, 3 bytes:
MALFORMED_ANSWERS = {
    "a command name that is not UTF-8": COMMAND_NAMED + b"\xff\xfe\xfd",
    "an argument that is not UTF-8": bytes([0x0A, 0x09, 0x12, 0x07, 0x0A, 0x01])
    + b"k"
    + bytes([0x12, 0x02])
    + b"\xc3\x28",
    "a truncated varint": b"\x0a\xff",
    "a field longer than the message": b"\x0a\x7f\x0a",
    "wire type 7": b"\x0f",
}


@pytest.mark.parametrize("answer", MALFORMED_ANSWERS)
def test_a_malformed_commands_message_is_a_wire_format_error(answer: str) -> None:
    with pytest.raises(WireFormatError) as info:
        wire.decode_commands(MALFORMED_ANSWERS[answer])
    assert isinstance(info.value, GreenprofError)


def test_a_collector_answering_nonsense_is_counted_and_polling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FakeOAP() as oap:
        sink = SkyWalkingSink(oap.address, service="svc", instance="i", timeout=5)
        poller = ProfileTaskPoller(sink, interval=0.05)
        try:
            with caplog.at_level(logging.WARNING, logger="greenprof"):
                for answer in MALFORMED_ANSWERS.values():
                    oap.answer = answer
                    poller.poll()  # never raises
            assert poller.failures == len(MALFORMED_ANSWERS)
            warnings = [r.getMessage() for r in caplog.records]
            assert len(warnings) == 1  # the first; the others are counted
            assert (
                f"the collector at {oap.address}: getProfileTaskCommands answered" in (warnings[0])
            )
            assert "string field is not UTF-8 text" in warnings[0]
            assert "Is it a SkyWalking OAP's gRPC port (11800)?" in warnings[0]
            # The collector comes to its senses: its task is taken.
            oap.answer = None
            now_ms = int(time.time() * 1000)
            oap.commands = [task_command(serial="s", task_id="t", endpoint="/x", start_ms=now_ms)]
            poller.poll()
            assert poller.task_for("/x") is not None
            assert poller.failures == len(MALFORMED_ANSWERS)
        finally:
            sink.close()


def test_a_polling_thread_fed_nonsense_keeps_polling() -> None:
    with FakeOAP() as oap:
        oap.answer = MALFORMED_ANSWERS["a command name that is not UTF-8"]
        sink = SkyWalkingSink(oap.address, service="svc", instance="i", timeout=5)
        poller = ProfileTaskPoller(sink, interval=0.02).start()
        try:
            assert wait_until(lambda: poller.failures >= 3)
            oap.answer = None
            oap.commands = [
                task_command(
                    serial="s", task_id="t", endpoint="/x", start_ms=int(time.time() * 1000)
                )
            ]
            assert wait_until(lambda: poller.task_for("/x") is not None)
        finally:
            poller.stop()
            sink.close()


def test_a_task_whose_settings_greenprof_cannot_use_is_refused_not_run() -> None:
    with FakeOAP() as oap:
        now_ms = int(time.time() * 1000)
        bad = task_command(serial="s1", task_id="bad", endpoint="/x", start_ms=now_ms)
        bad.args["DumpPeriod"] = str(10**20)  # ms: longer than a program runs
        oap.commands = [bad]
        sink = SkyWalkingSink(oap.address, service="svc", instance="i", timeout=5)
        poller = ProfileTaskPoller(sink, interval=0.05)
        try:
            poller.poll()
            assert poller.failures == 1
            assert poller.task_for("/x") is None
            with poller.profile_request("/x", "segment") as profiler:  # the request is unharmed
                gevent.sleep(0)
            assert profiler is None
            oap.commands = [bad]  # sent again: refused once only
            poller.poll()
            assert poller.failures == 1
        finally:
            sink.close()
