"""follow_all: every greenlet of the session's thread is recorded, the
request greenlets a server spawns from the hub included (what
``greenprof run`` records)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import gevent
import gevent.event
import greenlet
import pytest
from gevent import pywsgi

import greenprof
from greenprof.sinks import JSONSink

from .conftest import function_name

#: A client in another process: ``count`` GETs, one connection each.
CLIENT = textwrap.dedent(
    """
    import socket, sys
    port, count = int(sys.argv[1]), int(sys.argv[2])
    for number in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /item/%d HTTP/1.0\\r\\n\\r\\n" % number)
            while sock.recv(65536):
                pass
    """
)


def lookup(number: int) -> int:
    gevent.sleep(0.001)  # the wait site: a database, say
    return number * 2


def item_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    number = int(str(environ["PATH_INFO"]).rpartition("/")[2])
    body = b"%d\n" % lookup(number)
    start_response("200 OK", [("Content-Length", str(len(body)))])  # type: ignore[operator]
    return [body]


def test_a_servers_request_greenlets_are_recorded_with_the_apps_frames() -> None:
    requests = 12
    server = pywsgi.WSGIServer(("127.0.0.1", 0), item_app, log=None)
    with greenprof.profile(follow_all=True) as profiler:
        server.start()
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(server.server_port), str(requests)]
        )
        while client.poll() is None:
            gevent.sleep(0.01)
        server.stop()
    assert client.returncode == 0
    snapshots = profiler.snapshots
    app_name = function_name(item_app)
    handling = {s.greenlet_id for s in snapshots if any(f.function == app_name for f in s.stack)}
    # One greenlet per connection, one after the other: a freed greenlet's
    # address (its id) is often the next one's, so count the greenlets ended.
    ends = [s for s in snapshots if s.event == "exit" and s.greenlet_id in handling]
    assert len(ends) == requests
    waits = [
        s
        for s in snapshots
        if s.event == "switch_out" and function_name(lookup) in [f.function for f in s.stack]
    ]
    assert len(waits) == requests  # each waited in lookup(), and it shows
    assert all(app_name in [f.function for f in s.stack] for s in waits)
    # Spawned by the hub for everyone: no parent is made up.
    assert {s.parent_id for s in snapshots if s.greenlet_id in handling} == {None}
    hub = gevent.get_hub()
    assert id(hub) not in {s.greenlet_id for s in snapshots}
    assert greenlet.gettrace() is None


def waiter(ready: gevent.event.Event) -> None:
    ready.wait()


def test_a_greenlet_suspended_before_the_session_shows_where_it_waits() -> None:
    ready = gevent.event.Event()
    early = gevent.spawn(waiter, ready)
    gevent.sleep(0)  # now suspended in waiter()
    with greenprof.profile(follow_all=True) as profiler:
        ready.set()
        early.join()
    mine = [s for s in profiler.snapshots if s.greenlet_id == id(early)]
    assert [s.event for s in mine] == ["switch_in", "exit"]
    assert function_name(waiter) in [f.function for f in mine[0].stack]


def test_children_of_a_followed_greenlet_keep_their_parent() -> None:
    def child() -> None:
        gevent.sleep(0)

    def parent() -> None:
        gevent.joinall([gevent.spawn(child) for _ in range(3)])

    with greenprof.profile(follow_all=True) as profiler:
        top = gevent.spawn(parent)
        top.join()
    parents = {s.greenlet_id: s.parent_id for s in profiler.snapshots}
    assert parents[id(top)] == id(greenlet.getcurrent())  # spawned by the main greenlet
    assert sum(1 for p in parents.values() if p == id(top)) == 3


def test_a_session_on_two_targets_records_every_other_greenlet_once() -> None:
    first = gevent.spawn(gevent.sleep, 0)
    second = gevent.spawn(gevent.sleep, 0)
    profiler = greenprof.Profiler(follow_all=True)
    profiler.start(first)
    profiler.start(second)
    other = gevent.spawn(gevent.sleep, 0)  # neither target spawned it
    gevent.joinall([first, second, other])
    profiler.stop()
    for glet in (first, second, other):
        events = [s.event for s in profiler.snapshots if s.greenlet_id == id(glet)]
        assert events == ["switch_in", "switch_out", "switch_in", "exit"]


def test_only_greenlets_of_the_sessions_thread_are_recorded() -> None:
    other_ids: list[int] = []

    def other_thread() -> None:
        glets = [greenlet.greenlet(lambda: None) for _ in range(5)]
        for glet in glets:
            other_ids.append(id(glet))
            glet.switch()

    with greenprof.profile(follow_all=True) as profiler:
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        gevent.sleep(0)
    assert len(other_ids) == 5
    assert not set(other_ids) & {s.greenlet_id for s in profiler.snapshots}


def test_ended_greenlets_are_let_go_while_the_session_runs() -> None:
    with greenprof.profile(follow_all=True) as profiler:
        for _ in range(5):
            gevent.joinall([gevent.spawn(gevent.sleep, 0) for _ in range(100)])
            profiler.flush(0)  # what a streaming writer does: takes the records
            gc.collect()
            running = profiler._run
            assert running is not None
            # Those that ended are let go (one flush after they are found
            # ended): the session holds one wave at most, not all 500.
            assert len(running.children) <= 101
    assert len({s.greenlet_id for s in profiler.snapshots}) >= 100  # ids are reused


def test_a_switch_event_between_stand_ins_adopts_nothing_and_is_no_error() -> None:
    # gevent's test___monitor calls its tracer by hand with plain objects
    # for the greenlets, and its tracer passes the call on to greenprof's.
    with greenprof.profile(follow_all=True) as profiler:
        tracer = greenlet.gettrace()
        assert tracer is not None
        tracer("switch", (object(), object()))
        gevent.sleep(0)
    assert profiler.stats.tracer_errors == 0
    assert {s.greenlet_id for s in profiler.snapshots} == {id(greenlet.getcurrent())}


def test_follow_all_needs_switch_snapshots() -> None:
    with pytest.raises(greenprof.exceptions.ConfigurationError, match="follow_all needs switch"):
        greenprof.Profiler(mode="thread", follow_all=True)


def test_without_keep_snapshots_a_long_session_streams_to_its_sink(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    profiler = greenprof.Profiler(follow_all=True, keep_snapshots=False, sinks=[JSONSink(path)])
    profiler.start()
    held = []
    for _ in range(20):
        gevent.joinall([gevent.spawn(gevent.sleep, 0) for _ in range(50)])
        profiler.flush(5)  # what greenprof run does every few seconds
        run = profiler._run
        assert run is not None
        held.append(len(run.built) + sum(len(b.records) for b in run.buffers))
    profiler.stop()
    # Everything went to the file at each flush (but the switch out and back
    # in of the flush's own wait, which lets the other greenlets run).
    assert max(held) <= 2
    assert profiler.snapshots == []  # handed over, not kept
    written = greenprof.load(path)
    assert len(written) == profiler.stats.snapshots >= 20 * 50 * 3
    assert [s.sequence for s in written] == list(range(len(written)))  # no gap, no repeat
    report = greenprof.Report.from_file(path)
    assert [s.session_id for s in report.sessions] == [profiler.session_id]
    assert sum(s.event == "exit" for s in written) == 20 * 50
