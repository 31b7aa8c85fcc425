"""What a running session keeps is invisible to the garbage collector: its
records are untracked tuples, and the buffers and watches of greenlets it
picked up go once they end, not when the session stops or is read."""

from __future__ import annotations

import gc
import sys
import time

import gevent
import gevent.event
import greenlet
import pytest

import greenprof
from greenprof import _stack
from greenprof._buffer import GreenletBuffer
from greenprof._stack import StackNode


def tracked(kind: type) -> int:
    # A few times: a tuple is untracked by a collection that finds every
    # item untracked, and a collection may reach a tuple before its items.
    for _ in range(4):
        gc.collect()
    return sum(type(o) is kind for o in gc.get_objects())


def wander(switches: int, main: greenlet.greenlet) -> None:
    """Switch out ``switches`` times from ever new frames (calls that
    return), at a few different places."""

    def there(n: int) -> None:
        if n % 3:
            main.switch()
        else:
            elsewhere()

    def elsewhere() -> None:
        main.switch()

    for n in range(switches):
        there(n)


def test_records_do_not_grow_what_the_collector_tracks() -> None:
    main = greenlet.getcurrent()
    glet = greenlet.greenlet(lambda: wander(3000, main))
    with greenprof.profile(glet, max_snapshots=10**6) as profiler:
        for _ in range(100):
            glet.switch()
        tuples_then, nodes_then = tracked(tuple), tracked(StackNode)
        for _ in range(2900):
            glet.switch()
        # 5,800 more records, each with its stack: none tracked.
        assert tracked(tuple) - tuples_then < 100
        assert tracked(StackNode) - nodes_then < 10
        glet.switch()
    outs = [s for s in profiler.snapshots if s.event == "switch_out"]
    assert len(outs) == 3000  # every record is still there, and readable
    assert {s.stack[-1].function.rsplit(".", 1)[-1] for s in outs} == {"there", "elsewhere"}


def test_reading_requests_does_not_grow_what_the_collector_tracks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each request runs in frames of its own, so its raw stacks are new
    # tuples; the formatter remembers each one's frames. Were that memory
    # made of pairs (raw stack, frames), each pair would be tracked and live
    # long enough to reach the oldest generation, whose growth is what
    # starts full collections (one a second in a busy server).
    # From 3.12 one path is one raw stack (see _stack._INTERNED), which
    # would leave the formatter nothing new to remember: off here.
    monkeypatch.setattr(_stack, "_INTERNED", {})
    monkeypatch.setattr(_stack, "MAX_INTERNED", 0)
    scope = greenprof.profile()
    main = greenlet.getcurrent()

    def request() -> None:
        with scope as profiler:
            wander(6, main)
        outs = [s for s in profiler.snapshots if s.event == "switch_out"]
        assert len(outs) == 6
        assert {s.stack[-1].function.rsplit(".", 1)[-1] for s in outs} == {"there", "elsewhere"}

    def requests(count: int) -> None:
        for _ in range(count):
            glet = greenlet.greenlet(request)
            while not glet.dead:
                glet.switch()

    requests(50)  # every path formatted once: what is cached from here is per request
    tuples_then = tracked(tuple)
    requests(400)
    assert tracked(tuple) - tuples_then < 200


def short_request(n: int) -> int:
    gevent.sleep(0)
    return n * 2


def test_greenlets_picked_up_are_let_go_as_they_end_while_the_session_runs() -> None:
    def server() -> None:
        for _ in range(4):
            gevent.joinall([gevent.spawn(short_request, n) for n in range(250)])
        done.set()
        hold.wait()

    done, hold = gevent.event.Event(), gevent.event.Event()
    before = tracked(GreenletBuffer)  # other tests' sessions, still referenced
    main = gevent.spawn(server)
    with greenprof.profile(main, follow_spawned=True) as profiler:
        done.wait()
        # Collections let the ended ones go (tracked() runs full ones): at
        # most one may be left, found ended once and let go the next time.
        for _ in range(400):
            if tracked(GreenletBuffer) - before <= 2:
                break
            time.sleep(0.025)
        # The server's, and at most one not let go yet.
        assert tracked(GreenletBuffer) - before <= 2
        hold.set()
        main.join()
    snapshots = profiler.snapshots
    # Nothing lost by letting them go (ids repeat: a freed greenlet's
    # address is given to a later one).
    picked_up = [s for s in snapshots if s.parent_id is not None]
    assert sum(s.event == "exit" for s in picked_up) == 1000
    assert sum(s.event == "switch_in" for s in picked_up) == 2000  # started, back from sleep(0)
    waits = [s for s in picked_up if s.event == "switch_out"]
    assert len(waits) == 1000
    assert all(any(f.function.endswith("short_request") for f in s.stack) for s in waits)
    assert [s.sequence for s in snapshots] == list(range(len(snapshots)))
    times = [s.timestamp_ns for s in snapshots]
    assert times == sorted(times)


def test_stop_lets_the_picked_up_greenlets_go_and_keeps_their_records() -> None:
    def server() -> None:
        gevent.joinall([gevent.spawn(short_request, n) for n in range(300)])

    before = tracked(GreenletBuffer)  # other tests' sessions, still referenced
    main = gevent.spawn(server)
    with greenprof.profile(main, follow_spawned=True) as profiler:
        main.join()
    # Nothing read yet: stop() let them all go (the server's buffer too).
    assert tracked(GreenletBuffer) - before == 0
    snapshots = profiler.snapshots
    picked_up = [s for s in snapshots if s.parent_id is not None]
    assert sum(s.event == "exit" for s in picked_up) == 300
    assert sum(s.event == "switch_out" for s in picked_up) == 300


def objects_after_full_collection() -> dict[str, int]:
    """What a leak check counts: the collector's tracked objects, by type,
    after one ``gc.collect()`` (greenlet's own tests do it this way)."""
    gc.collect()
    counts: dict[str, int] = {}
    for o in gc.get_objects():
        name = type(o).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_a_full_collection_lets_ended_greenlets_go_at_once_under_follow_all() -> None:
    """A leak check runs a test again and again, and after each run
    counts what the collector tracks: nothing of greenprof's may grow."""

    def one_run() -> None:  # as a greenlet test does: short greenlets, ended
        main = greenlet.getcurrent()
        glets = [greenlet.greenlet(main.switch) for _ in range(50)]
        for glet in glets:
            glet.switch()  # started, suspended
        for glet in glets:
            glet.switch()  # ended

    ours = ("GreenletBuffer", "GreenletWatch", "weakref", "ReferenceType", "deque", "list")
    with greenprof.profile(greenlet.getcurrent(), follow_all=True) as profiler:
        one_run()
        growth: list[dict[str, int]] = []
        before = objects_after_full_collection()
        for _ in range(5):  # far faster than a compaction every 0.5 s
            one_run()
            after = objects_after_full_collection()
            growth.append({k: after.get(k, 0) - before.get(k, 0) for k in ours})
        grown = [{k: v for k, v in g.items() if v > 0} for g in growth]
        assert grown == [{}] * 5
    exits = [s for s in profiler.snapshots if s.event == "exit"]
    assert len(exits) == 300  # every run's 50 greenlets recorded to their end


def test_a_full_collection_under_the_session_lock_leaves_it_to_the_next_one() -> None:
    def buffers_now() -> int:  # no collection of its own
        return sum(type(o) is GreenletBuffer for o in gc.get_objects())

    glets = [greenlet.greenlet(lambda: None) for _ in range(20)]
    before = tracked(GreenletBuffer)  # other tests' sessions, still referenced
    with greenprof.profile(greenlet.getcurrent(), follow_all=True) as profiler:
        for glet in glets:
            glet.switch()  # picked up, ended
        run = profiler._run
        assert run is not None
        with run.lock:  # as if a collection started under greenprof's own lock
            gc.collect()  # returns: the hook does not wait for the lock
            held = buffers_now() - before
        freed = tracked(GreenletBuffer) - before
    assert held == 21  # the 20 ended ones kept, and the session's own target's
    assert freed == 1
    assert sum(s.event == "exit" for s in profiler.snapshots) == 20


def test_a_following_session_starts_no_thread_and_compacts_as_the_program_allocates() -> None:
    threads = set(sys._current_frames())  # other tests' may end meanwhile, none may start
    spawned = 0
    new_threads: set[int] = set()

    def server() -> None:
        nonlocal spawned
        end = time.monotonic() + 1.5  # three compactions' worth, at least
        while time.monotonic() < end:
            gevent.joinall([gevent.spawn(short_request, n) for n in range(100)])
            spawned += 100
            new_threads.update(set(sys._current_frames()) - threads)

    main = gevent.spawn(server)
    with greenprof.profile(main, follow_spawned=True) as profiler:
        main.join()
        # No gc.collect() here: only the collections the program's own
        # allocations started.
        buffers = sum(type(o) is GreenletBuffer for o in gc.get_objects())
    assert new_threads == set()  # a program counting its OS threads sees no new one
    assert buffers < spawned * 0.8  # let go as it ran, not kept to the end
    # Every greenlet it spawned, to its end. (Its own exit may be there too,
    # or past its max_snapshots: on a slow machine it switches less.)
    exits = [s for s in profiler.snapshots if s.event == "exit"]
    assert sum(s.greenlet_id != id(main) for s in exits) == spawned
