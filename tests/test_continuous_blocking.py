"""BlockingMonitor: a handler that runs 250 ms without yielding, among 100
concurrent normal requests served by gevent.pywsgi on 127.0.0.1.

The threshold (150 ms) is far above the normal requests' slices (half a
millisecond of work) so that a shared machine that stalls the process, or
a thread that holds the GIL, for tens of milliseconds inside one of them
does not make it a real blocking slice the monitor must report."""

from __future__ import annotations

import logging
import time

import gevent
import pytest

from greenprof import Frame
from greenprof.continuous import BlockingMonitor, BlockingSlice, ContinuousProfiler
from greenprof.exceptions import ConfigurationError
from greenprof.integrations.wsgi import ProfilerMiddleware

from .conftest import function_name, line_of, serve
from .workloads import blocking_or_not, spin

#: perf_counter() when each /late request's handler returned.
ANSWERED: list[float] = []


def blocks_then_waits(environ: dict[str, object], start_response: object) -> list[bytes]:
    """A slice well past the threshold, then a long wait before the answer."""
    if environ["PATH_INFO"] == "/late":
        gevent.sleep(0.001)  # resumes here
        spin(0.3)  # 300 ms without a yield
        gevent.sleep(0.001)  # yields here
        gevent.sleep(0.5)  # the request goes on: the report must not wait for it
        ANSWERED.append(time.perf_counter())
    else:
        spin(0.0005)
        gevent.sleep(0.001)
    start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"ok"]


PATHS = ["/normal"] * 50 + ["/block"] + ["/normal"] * 50
MS = 1_000_000
#: Seconds a slice must run to be reported (the handlers block for more).
THRESHOLD = 0.15


def frame_of(marker: str) -> Frame:
    return Frame(
        blocking_or_not.__code__.co_filename,
        function_name(blocking_or_not),
        line_of(blocking_or_not, marker),
    )


def assert_is_the_blocker(found: BlockingSlice) -> None:
    assert found.tags["path"] == "/block"
    assert found.tags["method"] == "GET"
    assert found.duration_ns >= 250 * MS
    # Exact sites from the switch path: inside gevent.sleep, called from
    # the handler's lines.
    assert frame_of("resumes here") in found.resumed
    assert found.resumed[-1].function == "sleep"
    assert frame_of("yields here") in found.yielded
    assert found.yielded[-1].function == "sleep"


@pytest.mark.parametrize("mode", ["greenlet", "hybrid"])
def test_the_blocking_handler_is_reported_once_and_normal_requests_never(mode: str) -> None:
    found: list[BlockingSlice] = []
    profiler = ContinuousProfiler(
        interval=3600,
        sample_rate=1.0,
        mode=mode,
        dump_period=0.005,
        blocking=BlockingMonitor(threshold=THRESHOLD, callback=found.append),
    )
    app = profiler.install(blocking_or_not)
    with profiler:
        replies = serve(app, PATHS)
    assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies)
    assert profiler.stats.requests == 101
    (blocker,) = found
    assert_is_the_blocker(blocker)
    if mode == "hybrid":  # samples from inside the slice: spinning
        spinning = [s for s in blocker.samples if s[-1].function == function_name(spin)]
        assert spinning
        assert len(spinning) * 2 >= len(blocker.samples)
    else:
        assert blocker.samples == ()


def test_the_default_callback_logs_one_line_with_compact_stacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = BlockingMonitor(threshold=THRESHOLD)
    middleware = ProfilerMiddleware(blocking_or_not, sinks=[monitor])
    with caplog.at_level(logging.WARNING, logger="greenprof"):
        serve(middleware, PATHS)
        assert middleware.flush(30)
    (record,) = [r for r in caplog.records if "without yielding" in r.getMessage()]
    message = record.getMessage()
    assert "\n" not in message
    assert "(GET /block) ran " in message
    resumed = frame_of("resumes here")
    yielded = frame_of("yields here")
    assert "resumed at sleep (" in message
    assert f"< {resumed.function} ({resumed.filename}:{resumed.lineno})" in message
    assert f"< {yielded.function} ({yielded.filename}:{yielded.lineno})" in message
    assert monitor.reported == 1


def test_a_failing_callback_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def broken(found: BlockingSlice) -> None:
        raise RuntimeError("callback bug")

    monitor = BlockingMonitor(threshold=THRESHOLD, callback=broken)
    middleware = ProfilerMiddleware(blocking_or_not, sinks=[monitor])
    with caplog.at_level(logging.WARNING, logger="greenprof"):
        replies = serve(middleware, ["/block", "/block", "/normal"])
        assert middleware.flush(30)
    assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies)
    assert (monitor.reported, monitor.callback_failures) == (2, 2)
    assert len([r for r in caplog.records if "callback failed" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": "0.1"}, "threshold"),
        ({"callback": "print"}, "callback"),
    ],
)
def test_bad_options_raise_a_clear_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BlockingMonitor(**options)  # type: ignore[arg-type]


def test_the_profiler_takes_only_a_blocking_monitor() -> None:
    with pytest.raises(ConfigurationError, match="BlockingMonitor"):
        ContinuousProfiler(blocking=0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["greenlet", "hybrid"])
def test_a_long_slice_is_reported_as_it_ends_not_when_its_request_does(mode: str) -> None:
    reported: list[tuple[float, BlockingSlice]] = []
    monitor = BlockingMonitor(
        threshold=THRESHOLD, callback=lambda found: reported.append((time.perf_counter(), found))
    )
    middleware = ProfilerMiddleware(
        blocks_then_waits, sinks=[monitor], mode=mode, dump_period=0.005
    )
    ANSWERED.clear()
    replies = serve(middleware, ["/normal"] * 20 + ["/late"] + ["/normal"] * 20)
    assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies)
    assert middleware.flush(30)  # the sessions' ends: nothing reported twice
    ((when, found),) = reported
    (answered,) = ANSWERED
    assert when < answered  # live: while the request still waited
    assert found.tags["path"] == "/late"
    assert found.duration_ns >= 300 * MS
    site = blocks_then_waits
    file = site.__code__.co_filename
    assert Frame(file, function_name(site), line_of(site, "resumes here")) in found.resumed
    assert Frame(file, function_name(site), line_of(site, "yields here")) in found.yielded
    assert found.resumed[-1].function == found.yielded[-1].function == "sleep"
    if mode == "hybrid":  # samples from inside the slice: spinning
        assert any(s[-1].function == function_name(spin) for s in found.samples)
    else:
        assert found.samples == ()
    assert monitor.reported == 1
    monitor.close()
