"""greenprof inside real gevent programs: servers, the monitor thread, monkey-patching."""

from __future__ import annotations

from pathlib import Path

import gevent
import gevent.socket
import greenlet
import pytest
from gevent import pywsgi

import greenprof
from greenprof.sinks import JSONSink, MemorySink

from .conftest import GREENPROF_DIR, function_name, http_get, run_python

# -- a decorated handler behind gevent.pywsgi ---------------------------------------


def slow_part(delay: float) -> None:
    gevent.sleep(delay)


def test_decorated_handler_served_by_pywsgi_profiles_each_request(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    memory = MemorySink()
    handled: dict[str, int] = {}

    @greenprof.profile(sinks=[JSONSink(path), memory])
    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        handled[str(environ["PATH_INFO"])] = id(greenlet.getcurrent())
        slow_part(0.01)
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [b"done"]

    server = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    try:
        clients = [gevent.spawn(http_get, server.server_port, f"/r{i}") for i in range(8)]
        gevent.joinall(clients, raise_error=True)
    finally:
        server.stop()
    assert all(c.value.endswith(b"done") for c in clients)

    loaded = greenprof.load(path)
    assert loaded == memory.snapshots
    sessions: dict[str, list[greenprof.Snapshot]] = {}
    for snapshot in loaded:
        sessions.setdefault(snapshot.session_id, []).append(snapshot)
    assert len(sessions) == 8
    assert {s[0].greenlet_id for s in sessions.values()} == set(handled.values())
    for snaps in sessions.values():
        assert len({s.greenlet_id for s in snaps}) == 1  # no other request's greenlet
        assert [s.sequence for s in snaps] == list(range(len(snaps)))
        # From the call into the decorated app to its return: where it
        # started and stopped (pywsgi's call of the app, no greenprof frame),
        # and its one wait.
        assert [s.event for s in snaps] == ["start", "switch_out", "switch_in", "stop"]
        start, out, _, stop = snaps
        names = [f.function for f in out.stack if f.filename == __file__]
        assert names[-2:] == [function_name(app.__wrapped__), function_name(slow_part)]
        for edge in (start, stop):
            assert edge.stack[-1].filename == pywsgi.__file__
            assert not any(f.filename.startswith(GREENPROF_DIR) for f in edge.stack)


# -- gevent's monitor thread -------------------------------------------------------

MONITOR_SCRIPT = """
import json, time, gevent, gevent.events, greenlet, greenprof

blocked = []
gevent.events.subscribers.append(
    lambda event: blocked.append(type(event).__name__)
    if isinstance(event, gevent.events.EventLoopBlocked) else None)

def block():
    gevent.sleep(0)
    time.sleep(1.0)        # real sleep: blocks the event loop
    gevent.sleep(0)

if ORDER == "greenprof-first":
    worker = gevent.spawn(block)
    profiler = greenprof.Profiler()
    profiler.start(worker)          # before the hub (and its monitor) runs
    worker.join()
else:
    gevent.sleep(0)                 # hub and monitor start first
    monitor = type(greenlet.gettrace()).__name__
    worker = gevent.spawn(block)
    profiler = greenprof.Profiler()
    profiler.start(worker)
    worker.join()
gevent.sleep(0.3)
profiler.stop()
print(json.dumps({
    "blocked": blocked,
    "events": [s.event for s in profiler.snapshots],
    "tracer_errors": profiler.stats.tracer_errors,
}))
"""


def _monitor_run(order: str) -> dict[str, object]:
    return run_python(
        f"ORDER = {order!r}\n" + MONITOR_SCRIPT,
        GEVENT_MONITOR_THREAD_ENABLE="true",
        GEVENT_MAX_BLOCKING_TIME="0.1",
    )


@pytest.mark.parametrize("order", ["greenprof-first", "gevent-first"])
def test_monitor_thread_still_reports_blocking_while_greenprof_profiles(order: str) -> None:
    result = _monitor_run(order)
    assert "EventLoopBlocked" in result["blocked"]  # type: ignore[operator]
    waits = ["switch_in", "switch_out"] * 2
    assert result["events"] == [*waits, "switch_in", "exit"]
    assert result["tracer_errors"] == 0


def test_hub_destroy_drops_our_tracer_and_greenprof_puts_it_back() -> None:
    result = run_python(
        """
        import json, gevent, greenlet, greenprof

        def work():
            for _ in range(4):
                gevent.sleep(0)

        gevent.sleep(0)                       # hub + monitor tracer installed
        keeper = greenlet.greenlet(lambda: None)
        profiler = greenprof.Profiler()
        profiler.start(keeper)                # ours chains the monitor's
        gevent.get_hub().destroy(destroy_loop=True)   # restores the tracer before the monitor
        dropped = greenlet.gettrace() is None
        worker = gevent.spawn(work)
        profiler.start(worker)                # notices, re-installs
        worker.join()
        profiler.stop()
        print(json.dumps({
            "dropped": dropped,
            "reinstalls": profiler.stats.tracer_reinstalls,
            "outs": [s.event for s in profiler.snapshots].count("switch_out"),
        }))
        """,
        GEVENT_MONITOR_THREAD_ENABLE="true",
    )
    assert result == {"dropped": True, "reinstalls": 1, "outs": 4}


def test_assert_switches_sees_switches_while_greenprof_profiles() -> None:
    from gevent.util import assert_switches

    worker = gevent.spawn(lambda: [gevent.sleep(0) for _ in range(3)])
    profiler = greenprof.Profiler()
    profiler.start(worker)
    with assert_switches():  # installed on top of ours; raises if it saw no switch
        gevent.sleep(0)
    worker.join()
    profiler.stop()
    assert [s.event for s in profiler.snapshots].count("switch_out") == 3


# -- monkey-patched programs --------------------------------------------------------


def test_patch_all_program_profiles_greenlets_and_threads_correctly() -> None:
    result = run_python(
        """
        from gevent import monkey; monkey.patch_all()
        import json, threading, time, gevent, greenprof
        from greenprof.sinks import MemorySink

        sink = MemorySink()

        @greenprof.profile(sinks=[sink])
        def handler(n):
            for _ in range(n):
                time.sleep(0.001)          # patched: a gevent sleep
            return n

        def noise():
            for _ in range(20):
                time.sleep(0)

        jobs = [gevent.spawn(handler, 3), gevent.spawn(noise), gevent.spawn(handler, 2)]
        gevent.joinall(jobs)
        sessions = {}
        for s in sink.snapshots:
            sessions.setdefault(s.session_id, []).append(s)
        real = monkey.get_original("_thread", "get_ident")()
        print(json.dumps({
            "outs": sorted(sum(s.event == "switch_out" for s in v) for v in sessions.values()),
            "one_greenlet_each": all(len({s.greenlet_id for s in v}) == 1
                                     for v in sessions.values()),
            "thread_ids": sorted({s.thread_id for s in sink.snapshots}),
            "real_thread_id": real,
            "noise_frames": sum(f.function == "noise" for s in sink.snapshots for f in s.stack),
            "threading_patched": threading.get_ident() != real,
        }))
        """
    )
    assert result["outs"] == [2, 3]
    assert result["one_greenlet_each"] is True
    assert result["thread_ids"] == [result["real_thread_id"]]
    assert result["noise_frames"] == 0
    assert result["threading_patched"] is True
