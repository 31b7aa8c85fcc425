"""The switch path: what is recorded, for whom, and that the program never notices."""

from __future__ import annotations

import gc
import signal
import sys
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import greenlet
import pytest

import greenprof
from greenprof import Frame, Snapshot
from greenprof._dispatcher import installed_dispatcher
from greenprof._sampler import SAMPLER
from greenprof._threads import thread_ident

from .conftest import GREENPROF_DIR, SwitchCounter, function_name, line_of


def events(snapshots: list[Snapshot]) -> Counter[str]:
    return Counter(s.event for s in snapshots)


# -- contamination under gevent ---------------------------------------------------


def alpha_wait() -> None:
    gevent.sleep(0)


def alpha_work(rounds: int) -> None:
    for _ in range(rounds):
        alpha_wait()


def beta_wait() -> None:
    gevent.sleep(0)  # beta waits here


def beta_work(rounds: int) -> None:
    for _ in range(rounds):
        beta_wait()
        sum(range(100))


def gamma_wait() -> None:
    gevent.sleep(0.0005)


def gamma_work(rounds: int) -> None:
    for _ in range(rounds):
        gamma_wait()


def test_profiled_greenlet_records_only_its_own_frames_and_every_switch() -> None:
    alpha = gevent.spawn(alpha_work, 40)
    beta = gevent.spawn(beta_work, 25)
    gamma = gevent.spawn(gamma_work, 30)
    counter = SwitchCounter(beta)
    counter.install()
    profiler = greenprof.Profiler()
    try:
        profiler.start(beta)
        gevent.joinall([alpha, beta, gamma])
        profiler.stop()
    finally:
        counter.uninstall()

    snapshots = profiler.snapshots
    assert events(snapshots) == counter.counts
    assert counter.counts["switch_out"] == 25  # one per gevent.sleep(0)
    assert counter.counts["exit"] == 1
    assert {s.greenlet_id for s in snapshots} == {id(beta)}
    assert {s.thread_id for s in snapshots} == {threading.get_ident()}
    ours = {(f.filename, f.function) for s in snapshots for f in s.stack if f.filename == __file__}
    assert ours == {(__file__, function_name(beta_work)), (__file__, function_name(beta_wait))}
    others = {f.filename for s in snapshots for f in s.stack if f.filename != __file__}
    assert all("/gevent/" in name for name in others)  # gevent.sleep itself
    assert [s.sequence for s in snapshots] == list(range(len(snapshots)))
    stamps = [s.timestamp_ns for s in snapshots]
    assert stamps == sorted(stamps)


def test_switch_out_records_the_wait_site_file_function_and_line() -> None:
    beta = gevent.spawn(beta_work, 3)
    with greenprof.profile(beta) as profiler:
        beta.join()
    outs = [s for s in profiler.snapshots if s.event == "switch_out"]
    assert len(outs) == 3
    wait_site = Frame(__file__, function_name(beta_wait), line_of(beta_wait, "beta waits here"))
    caller = Frame(__file__, function_name(beta_work), line_of(beta_work, "beta_wait()"))
    for snapshot in outs:
        # outermost first; gevent.sleep's own frame is innermost
        assert snapshot.stack[:2] == (caller, wait_site)
        assert [f.function for f in snapshot.stack[2:]] == ["sleep"]


def test_switch_in_resumes_where_the_greenlet_switched_out() -> None:
    beta = gevent.spawn(beta_work, 4)
    with greenprof.profile(beta) as profiler:
        beta.join()
    snapshots = profiler.snapshots
    assert snapshots[0].event == "switch_in"
    assert snapshots[0].stack == ()  # the first run starts with no stack
    assert snapshots[-1].event == "exit"
    assert snapshots[-1].stack == ()
    for out, back in zip(snapshots[1:-1:2], snapshots[2:-1:2], strict=True):
        assert (out.event, back.event) == ("switch_out", "switch_in")
        assert back.stack == out.stack
        assert back.timestamp_ns >= out.timestamp_ns


def test_kill_is_recorded_as_throw_then_exit() -> None:
    sleeper = gevent.spawn(gevent.sleep, 30)
    gevent.sleep(0)  # let it start and block
    with greenprof.profile(sleeper) as profiler:
        sleeper.kill()
    assert [s.event for s in profiler.snapshots] == ["throw", "exit"]
    assert sleeper.dead


def test_raw_greenlet_throw_into_a_suspended_greenlet_is_recorded() -> None:
    main = greenlet.getcurrent()

    def body() -> None:
        try:
            main.switch()
        except ValueError:
            main.switch("caught")

    glet = greenlet.greenlet(body)
    glet.switch()
    profiler = greenprof.Profiler()
    profiler.start(glet)
    assert glet.throw(ValueError("boom")) == "caught"
    glet.switch()
    profiler.stop()
    assert [s.event for s in profiler.snapshots] == ["throw", "switch_out", "switch_in", "exit"]


def test_stacks_match_traceback_through_recursion_and_generators() -> None:
    main = greenlet.getcurrent()

    def produce(n: int) -> Iterator[int]:
        for i in range(n):
            main.switch()  # a generator frame suspended mid-stack
            yield i

    def consume_here(gen: Iterator[int]) -> int:
        return next(gen)

    def consume_there(gen: Iterator[int]) -> int:
        return next(gen)

    def recurse(depth: int) -> None:
        if depth:
            recurse(depth - 1)
        else:
            main.switch()

    def body() -> None:
        for depth in (0, 3, 1, 7, 7, 2):
            recurse(depth)
        gen = produce(6)
        # The same generator is resumed from two different callers.
        for i in range(6):
            (consume_here if i % 2 else consume_there)(gen)
            recurse(i % 3)

    glet = greenlet.greenlet(body)
    counter = SwitchCounter(glet)
    counter.install()
    try:
        with greenprof.profile(glet, max_depth=500) as profiler:
            while not glet.dead:
                glet.switch()
    finally:
        counter.uninstall()
    outs = [s for s in profiler.snapshots if s.event == "switch_out"]
    expected = [[(f.filename, f.function, f.lineno) for f in s.stack] for s in outs]
    # traceback names functions by co_name; compare the last name component.
    got = [[(f, n.rsplit(".", 1)[-1], line) for f, n, line in stack] for stack in expected]
    assert got == counter.stacks
    assert len(outs) == 6 + 12


def test_max_depth_keeps_the_innermost_frames() -> None:
    main = greenlet.getcurrent()

    def recurse(depth: int) -> None:
        if depth:
            recurse(depth - 1)
        else:
            main.switch()  # innermost

    glet = greenlet.greenlet(lambda: recurse(20))
    with greenprof.profile(glet, max_depth=5) as profiler:
        glet.switch()
        glet.switch()
    out = next(s for s in profiler.snapshots if s.event == "switch_out")
    assert len(out.stack) == 5
    assert out.stack[-1].lineno == line_of(recurse, "# innermost")
    assert all(frame.function == function_name(recurse) for frame in out.stack)


# -- many sessions --------------------------------------------------------------------


def request(rounds: int, results: dict[int, greenprof.Profiler]) -> None:
    with greenprof.profile() as profiler:
        for _ in range(rounds):
            gevent.sleep(0)
    results[id(greenlet.getcurrent())] = profiler


def test_fifty_concurrent_sessions_each_see_only_their_own_greenlet() -> None:
    results: dict[int, greenprof.Profiler] = {}
    workers = [gevent.spawn(request, 1 + i % 5, results) for i in range(50)]
    gevent.joinall(workers)
    assert len(results) == 50
    for i, worker in enumerate(workers):
        snapshots = results[id(worker)].snapshots
        rounds = 1 + i % 5
        assert {s.greenlet_id for s in snapshots} == {id(worker)}
        assert events(snapshots) == Counter(switch_out=rounds, switch_in=rounds, start=1, stop=1)
    assert installed_dispatcher(thread_ident()) is None


def test_nested_sessions_on_one_greenlet_both_record() -> None:
    beta = gevent.spawn(beta_work, 6)
    outer = greenprof.Profiler()
    inner = greenprof.Profiler()
    outer.start(beta)
    gevent.sleep(0)
    gevent.sleep(0)
    inner.start(beta)
    gevent.sleep(0)
    gevent.sleep(0)
    inner.stop()
    beta.join()
    outer.stop()
    outer_snaps = outer.snapshots
    inner_snaps = inner.snapshots
    assert events(outer_snaps)["switch_out"] == 6
    assert 0 < len(inner_snaps) < len(outer_snaps)
    # The inner session saw exactly a contiguous part of what the outer one saw.
    outer_view = [(s.event, s.stack) for s in outer_snaps]
    inner_view = [(s.event, s.stack) for s in inner_snaps]
    starts = [
        k for k in range(len(outer_view)) if outer_view[k : k + len(inner_view)] == inner_view
    ]
    assert starts
    assert events(inner_snaps) == Counter(switch_in=2, switch_out=2)


def test_sessions_in_several_threads_at_once() -> None:
    barrier = threading.Barrier(3)
    results: dict[int, tuple[int, greenprof.Profiler, int]] = {}

    def thread_body(index: int) -> None:
        def wait_in_thread() -> None:
            gevent.sleep(0)

        def work() -> None:
            for _ in range(5 + index):
                wait_in_thread()

        worker = gevent.spawn(work)
        noise = gevent.spawn(alpha_work, 20)
        barrier.wait()
        with greenprof.profile(worker) as profiler:
            gevent.joinall([worker, noise])
        results[index] = (threading.get_ident(), profiler, id(worker))
        results_trace[index] = greenlet.gettrace()

    results_trace: dict[int, object] = {}
    threads = [threading.Thread(target=thread_body, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    for index, (ident, profiler, worker_id) in results.items():
        snapshots = profiler.snapshots
        assert {s.thread_id for s in snapshots} == {ident}
        assert {s.greenlet_id for s in snapshots} == {worker_id}
        assert events(snapshots)["switch_out"] == 5 + index
        assert {f.function.rsplit(".", 1)[-1] for s in snapshots for f in s.stack} == {
            "work",
            "wait_in_thread",
            "sleep",  # gevent.sleep
        }
        assert results_trace[index] is None


def test_stop_from_another_thread_uninstalls_at_that_threads_next_switch() -> None:
    ready = threading.Event()
    stopped = threading.Event()
    seen: dict[str, object] = {}
    box: dict[str, greenprof.Profiler] = {}

    def thread_body() -> None:
        main = greenlet.getcurrent()
        glet = greenlet.greenlet(lambda: main.switch())
        profiler = greenprof.Profiler()
        profiler.start(glet)
        box["profiler"] = profiler
        ready.set()
        stopped.wait()
        seen["before"] = greenlet.gettrace()
        glet.switch()  # the first switch after the stop
        seen["after"] = greenlet.gettrace()

    thread = threading.Thread(target=thread_body)
    thread.start()
    ready.wait()
    box["profiler"].stop()
    stopped.set()
    thread.join()
    assert seen["before"] is not None
    assert seen["after"] is None


# -- bounds and lifetimes -------------------------------------------------------------


def test_a_million_switches_keep_the_first_max_snapshots_and_count_the_rest() -> None:
    main = greenlet.getcurrent()

    def body() -> None:
        while True:
            main.switch()

    glet = greenlet.greenlet(body)
    profiler = greenprof.Profiler(max_snapshots=1000)
    profiler.start(glet)
    switch = glet.switch
    for _ in range(500_000):  # 1,000,000 switches of glet, in and out
        switch()
    watch = installed_dispatcher(thread_ident()).watches[glet]  # type: ignore[union-attr]
    assert len(watch.buffers[0].records) == 1000
    profiler.stop()
    stats = profiler.stats
    assert stats.snapshots == 1000
    assert stats.dropped == 1_000_000 - 1000
    assert stats.dropped_by_greenlet == {id(glet): 999_000}
    glet.throw(greenlet.GreenletExit)


def test_finished_greenlets_are_freed_while_the_session_runs() -> None:
    profiler = greenprof.Profiler()
    keeper = greenlet.greenlet(lambda: None)
    profiler.start(keeper)  # a target that stays alive
    done = gevent.spawn(beta_work, 2)
    profiler.start(done)
    done.join()
    never_ran = gevent.spawn(beta_work, 2)
    profiler.start(never_ran)
    refs = [weakref.ref(done), weakref.ref(never_ran)]
    never_ran.kill()  # killed before it ever ran: greenlet reports no event
    assert never_ran.dead
    del done, never_ran
    gevent.sleep(0)  # let the hub run the links that still hold them
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    dispatcher = installed_dispatcher(thread_ident())
    assert dispatcher is not None
    assert len(dispatcher.watches) == 1
    profiler.stop()
    assert events(profiler.snapshots)["switch_out"] == 2


class Local:
    """A local variable whose finalizer says when it was freed."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def __del__(self) -> None:
        self.log.append(f"{self.name} freed")


@contextmanager
def reference_counting_only() -> Iterator[None]:
    """No cyclic garbage collection: objects are freed when their last
    reference goes, as the program expects, or later only if held."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def test_a_session_holds_none_of_the_frames_it_started_in_once_stopped() -> None:
    # The thread's first session, with a dispatcher made for it: making one
    # looked for ended threads' dispatchers in a way that kept the frames
    # that called start() alive, in a reference cycle.
    log: list[str] = []

    def request() -> None:
        local = Local(log, "the request's local")  # noqa: F841 - freed as this call returns
        with greenprof.profile():
            pass

    with reference_counting_only():
        assert installed_dispatcher(thread_ident()) is None
        request()
        log.append("returned")
    assert log == ["the request's local freed", "returned"]


def test_a_session_that_outlives_the_call_it_started_in_holds_none_of_its_frames() -> None:
    # Found by the fault injection: before 3.12 a session held the frame
    # that called start(), and that frame's caller, until it stopped, and
    # so whatever their locals referred to.
    main = greenlet.getcurrent()

    def run(start: Callable[[], None]) -> list[str]:
        log: list[str] = []
        refs: list[weakref.ref[Local]] = []

        def ends_when_freed() -> None:
            try:
                main.switch()
            finally:
                log.append("the caller's greenlet ended")

        def starter() -> None:
            local = Local(log, "the starter's local")  # noqa: F841 - freed as this call returns
            start()

        def caller() -> None:
            local = Local(log, "the caller's local")
            refs.append(weakref.ref(local, lambda _: log.append("a weak reference called back")))
            glet = greenlet.greenlet(ends_when_freed)
            glet.switch()  # suspended, and only this frame refers to it
            starter()
            log.append("started")

        caller()
        log.append("returned")
        return log

    profiler = greenprof.Profiler()
    with reference_counting_only():
        unprofiled = run(lambda: None)
        profiled = run(profiler.start)
        assert profiler.is_running  # the session outlived both calls
        profiler.stop()
    assert profiled == unprofiled
    assert len(unprofiled) == 6
    assert unprofiled[-1] == "returned"
    first = profiler.snapshots[0]
    assert first.event == "start"
    assert first.stack[-1].function.rsplit(".", 1)[-1] == "starter"


def test_no_tracer_and_no_dispatcher_once_every_session_stopped() -> None:
    glet = greenlet.greenlet(lambda: None)
    with greenprof.profile(glet):
        assert greenlet.gettrace() is not None
    assert greenlet.gettrace() is None
    assert installed_dispatcher(thread_ident()) is None


def test_a_threads_next_session_starts_afresh_on_its_reused_dispatcher() -> None:
    with greenprof.profile() as first:
        dispatcher = installed_dispatcher(thread_ident())
        assert dispatcher is not None
        dispatcher.errors = 3  # as if its tracer had swallowed errors
        dispatcher.reinstalls = 2
    assert installed_dispatcher(thread_ident()) is None
    assert first.stats.tracer_errors == 3
    with greenprof.profile() as second:
        assert installed_dispatcher(thread_ident()) is dispatcher  # reused, not rebuilt
        gevent.sleep(0)
    assert greenlet.gettrace() is None
    assert (second.stats.tracer_errors, second.stats.tracer_reinstalls) == (0, 0)
    assert events(second.snapshots) == Counter(start=1, switch_out=1, switch_in=1, stop=1)


# -- living with other tracers --------------------------------------------------------


def test_previous_tracer_keeps_working_and_is_restored() -> None:
    seen: list[str] = []

    def mine(event: str, args: Any) -> None:
        seen.append(event)

    previous = greenlet.settrace(mine)
    try:
        beta = gevent.spawn(beta_work, 3)
        with greenprof.profile(beta) as profiler:
            assert greenlet.gettrace() is not mine
            beta.join()
        assert greenlet.gettrace() is mine
    finally:
        greenlet.settrace(previous)
    assert len(seen) >= 8
    assert events(profiler.snapshots)["switch_out"] == 3


def test_replaced_tracer_is_noticed_and_reinstalled_chaining_the_new_one() -> None:
    calls: list[str] = []

    def intruder(event: str, args: Any) -> None:  # chains nothing
        calls.append(event)

    beta = gevent.spawn(beta_work, 6)
    profiler = greenprof.Profiler()
    profiler.start(beta)
    gevent.sleep(0)
    ours = greenlet.settrace(intruder)
    gevent.sleep(0)
    gevent.sleep(0)  # missed: our tracer is not installed
    assert profiler.flush() is True  # notices and re-installs, chaining intruder
    assert greenlet.gettrace() is not intruder
    before = len(calls)
    beta.join()
    profiler.stop()
    assert greenlet.gettrace() is intruder
    greenlet.settrace(ours and None)
    assert profiler.stats.tracer_reinstalls == 1
    assert len(calls) > before
    # the switches after the re-install were recorded, through to the exit
    assert profiler.snapshots[-1].event == "exit"


def test_a_tracer_on_top_that_chains_ours_is_not_doubled() -> None:
    beta = gevent.spawn(beta_work, 5)
    profiler = greenprof.Profiler()
    profiler.start(beta)
    ours = greenlet.gettrace()
    seen: list[str] = []

    def on_top(event: str, args: Any) -> None:  # no previous_trace_function
        seen.append(event)
        ours(event, args)

    greenlet.settrace(on_top)
    assert profiler.flush() is True  # greenprof cannot tell it chains ours: back on top
    assert greenlet.gettrace() is not on_top
    beta.join()
    profiler.stop()
    assert greenlet.gettrace() is on_top  # what the program had is put back
    greenlet.settrace(None)
    assert seen  # on_top still saw every switch, through greenprof's tracer
    assert profiler.stats.tracer_reinstalls == 1
    # on_top called greenprof's old tracer too: that call was ignored
    assert events(profiler.snapshots) == Counter(switch_in=6, switch_out=5, exit=1)


class FaultyGreenlet(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet whose frame cannot be read once it runs: recording it fails."""

    @property
    def gr_frame(self) -> Any:
        if self:  # started and not dead
            raise RuntimeError("no frame for you")
        return None


def test_an_error_inside_the_tracer_never_reaches_the_program() -> None:
    main = greenlet.getcurrent()
    results: list[int] = []

    def body() -> None:
        for i in range(5):
            results.append(i)
            main.switch(i)

    glet = FaultyGreenlet(body)
    profiler = greenprof.Profiler()
    profiler.start(glet)
    values = [glet.switch() for _ in range(5)]
    glet.switch()
    tracer_during = greenlet.gettrace()
    profiler.stop()
    assert values == [0, 1, 2, 3, 4]
    assert results == [0, 1, 2, 3, 4]
    assert tracer_during is not None  # greenlet did not uninstall it
    assert profiler.stats.tracer_errors == 5  # each switch-out failed
    assert events(profiler.snapshots) == Counter(switch_in=6, exit=1)


class InterruptingGreenlet(greenlet.greenlet):  # type: ignore[misc]
    @property
    def gr_frame(self) -> Any:
        if self:
            raise KeyboardInterrupt
        return None


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="needs the main thread"
)
@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
    reason="Ctrl-C is ignored in this process (started with nohup or in the background)",
)
def test_ctrl_c_inside_the_tracer_still_reaches_the_program() -> None:
    main = greenlet.getcurrent()
    glet = InterruptingGreenlet(lambda: main.switch())
    profiler = greenprof.Profiler()
    profiler.start(glet)
    try:
        with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - it arrives a little later
            glet.switch()  # the tracer swallows it and re-raises it in the main thread
            for _ in range(1000):
                sum(range(10))
    finally:
        profiler.stop()
        glet.throw(greenlet.GreenletExit)


def test_greenprof_does_not_import_gevent() -> None:
    import subprocess

    code = "import sys, greenprof; print('gevent' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_tracer_on_top_is_never_probed_with_a_switch() -> None:
    main = greenlet.getcurrent()
    partner = greenlet.greenlet(lambda: [main.switch() for _ in range(3)])
    profiler = greenprof.Profiler()
    profiler.start()  # the calling greenlet itself
    ours = greenlet.gettrace()
    targets: list[greenlet.greenlet] = []

    def on_top(event: str, args: Any) -> None:
        targets.append(args[1])
        ours(event, args)

    greenlet.settrace(on_top)
    try:
        partner.switch()
        profiler.flush()  # an unknown tracer on top: greenprof switches nowhere to find out
        partner.switch()
    finally:
        profiler.stop()
        greenlet.settrace(None)
    # Only greenlets the program switched into: none of greenprof's making.
    assert set(targets) <= {partner, main}
    snapshots = profiler.snapshots
    assert [s.event for s in snapshots] == ["start", *["switch_out", "switch_in"] * 2, "stop"]
    for snapshot in snapshots:
        assert not any(f.filename.startswith(GREENPROF_DIR) for f in snapshot.stack)
        assert snapshot.stack[-1].function == function_name(
            test_an_unknown_tracer_on_top_is_never_probed_with_a_switch
        )


def test_a_saved_greenprof_tracer_put_back_later_keeps_recording_right() -> None:
    main = greenlet.getcurrent()
    glet = greenlet.greenlet(lambda: [main.switch() for _ in range(6)])
    profiler = greenprof.Profiler()
    profiler.start(glet)
    saved = greenlet.gettrace()  # a library saves the tracer ...

    def intruder(event: str, args: Any) -> None:
        return None

    greenlet.settrace(intruder)  # ... installs its own, chaining nothing ...
    glet.switch()  # missed
    profiler.flush()  # greenprof re-installs itself, chaining the intruder
    glet.switch()
    greenlet.settrace(saved)  # ... and finally puts back what it saved
    glet.switch()
    glet.switch()
    profiler.stop()
    assert greenlet.gettrace() is intruder  # greenprof's own previous tracer
    greenlet.settrace(None)
    assert profiler.stats.tracer_reinstalls == 1
    # one round trip missed while the intruder ruled; three recorded after it
    assert events(profiler.snapshots) == Counter(switch_in=3, switch_out=3)


def test_tracer_stopped_under_gevents_monitor_leaves_once_the_monitor_goes() -> None:
    from .conftest import run_python

    result = run_python(
        """
        import json, gevent, greenlet, greenprof

        keeper = greenlet.greenlet(lambda: None)
        profiler = greenprof.Profiler()
        profiler.start(keeper)             # ours first ...
        gevent.sleep(0)                    # ... then the hub's monitor on top
        on_top = type(greenlet.gettrace()).__name__
        profiler.stop()                    # cannot take ours from under it
        still_chained = greenlet.gettrace() is not None
        gevent.get_hub().destroy(destroy_loop=True)   # monitor gone: ours on top
        greenlet.greenlet(lambda: None).switch()      # first switch: ours leaves
        print(json.dumps({"on_top": on_top, "still_chained": still_chained,
                          "after": repr(greenlet.gettrace())}))
        """,
        GEVENT_MONITOR_THREAD_ENABLE="true",
    )
    assert result == {"on_top": "GreenletTracer", "still_chained": True, "after": "None"}


# -- ids reused ------------------------------------------------------------------------------


def greenlet_at(address: int, run: Any) -> greenlet.greenlet | None:
    """A new greenlet at ``address`` (a freed one's), if the allocator gives one."""
    missed = []  # held, so that their own addresses are not offered again
    for _ in range(1000):
        glet = greenlet.greenlet(run)
        if id(glet) == address:
            return glet
        missed.append(glet)
    return None


@pytest.mark.parametrize(
    "options", [{"follow_spawned": True}, {"mode": "hybrid"}, {"mode": "thread"}], ids=str
)
def test_a_new_target_at_an_ended_ones_address_leaves_nothing_running_after_stop(
    options: dict[str, Any],
) -> None:
    interval = sys.getswitchinterval()
    profiler = greenprof.Profiler(dump_period=0.001, **options)

    def nothing() -> None:
        return None

    first = greenlet.greenlet(nothing)
    profiler.start(first)
    first.switch()  # it ends
    address = id(first)
    del first  # freed: a greenlet made soon after is usually made where it was
    second = greenlet_at(address, nothing)
    if second is None:
        profiler.stop()
        pytest.skip("memory did not hand the ended greenlet's address out again")
    profiler.start(second)  # same id: the ended target's record is replaced
    second.switch()
    profiler.stop()
    # Nothing of the first target's is left running: no tracer looking at
    # every switch, no sampling thread, the switch interval restored.
    assert greenlet.gettrace() is None
    assert installed_dispatcher(thread_ident()) is None
    assert sys.getswitchinterval() == interval
    assert not SAMPLER._takers
    assert SAMPLER.thread_id is None


def test_a_greenlet_at_an_ended_targets_address_picked_up_then_started_on_leaves_nothing() -> None:
    main = greenlet.getcurrent()
    profiler = greenprof.Profiler(follow_all=True)
    first = greenlet.greenlet(main.switch)
    profiler.start(first)  # a target, not a greenlet the session picks up
    first.switch()
    address = id(first)
    first.throw(greenlet.GreenletExit)
    del first
    second = greenlet_at(address, main.switch)
    if second is None:
        profiler.stop()
        pytest.skip("the allocator put no new greenlet there")
    second.switch()  # picked up
    profiler.start(second)  # recorded already: nothing to add, nothing to hide
    profiler.stop()
    second.throw(greenlet.GreenletExit)
    assert greenlet.gettrace() is None
    assert installed_dispatcher(thread_ident()) is None


def test_a_follow_all_target_at_an_ended_ones_address_still_picks_every_greenlet_up() -> None:
    main = greenlet.getcurrent()
    profiler = greenprof.Profiler(follow_all=True)
    first = greenlet.greenlet(main.switch)
    profiler.start(first)  # the target whose buffer picks the thread's greenlets up
    first.switch()
    address = id(first)
    first.throw(greenlet.GreenletExit)
    del first
    second = greenlet_at(address, main.switch)
    if second is None:
        profiler.stop()
        pytest.skip("the allocator put no new greenlet there")
    profiler.start(second)  # replaces the first, taken down with what it picked up
    other = greenlet.greenlet(lambda: None)  # no target spawned it
    other.switch()
    profiler.stop()
    second.throw(greenlet.GreenletExit)
    recorded = [s.event for s in profiler.snapshots if s.greenlet_id == id(other)]
    assert recorded == ["switch_in", "exit"]
    assert greenlet.gettrace() is None


def test_threads_that_end_and_reuse_idents_get_fresh_dispatchers() -> None:
    from greenprof._dispatcher import _registry

    reinstalls: list[int] = []
    idents: list[int] = []
    for _ in range(6):
        profiler = greenprof.Profiler()
        started, stopped = threading.Event(), threading.Event()

        def first(
            profiler: greenprof.Profiler = profiler,
            started: threading.Event = started,
            stopped: threading.Event = stopped,
        ) -> None:
            profiler.start()
            started.set()
            stopped.wait()  # its session is stopped from the main thread, then it ends

        thread = threading.Thread(target=first)
        thread.start()
        assert started.wait(10)
        profiler.stop()  # from another thread: its tracer goes at its next switch
        stopped.set()
        thread.join()
        idents.append(thread.ident or 0)

        def second() -> None:  # often the same ident as the thread that ended
            with greenprof.profile() as later:
                greenlet.greenlet(lambda: None).switch()
            reinstalls.append(later.stats.tracer_reinstalls)

        other = threading.Thread(target=second)
        other.start()
        other.join()
    assert reinstalls == [0] * 6  # no re-install that never happened
    alive = set(sys._current_frames())
    assert set(_registry) <= alive  # no dispatcher of an ended thread stays
    assert len(set(idents)) < len(idents)  # idents were reused: the case under test


def test_a_thread_takes_its_own_dispatcher_back_without_looking_for_ended_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server that serves one request at a time retires its thread's
    # dispatcher at each stop() and takes it back at the next start(): no
    # look at every thread of the process then (only a new dispatcher can
    # make the registry grow).
    from greenprof import _dispatcher

    looked: list[int] = []
    forget = _dispatcher._forget_dead_threads
    monkeypatch.setattr(_dispatcher, "_forget_dead_threads", lambda: looked.append(1) or forget())
    scope = greenprof.profile()
    made = []
    for _ in range(5):
        with scope as profiler:
            greenlet.greenlet(lambda: None).switch()
        assert greenlet.gettrace() is None  # retired at each stop()
        made.append(_dispatcher._spares[threading.get_ident()])
        assert [s.event for s in profiler.snapshots].count("switch_out") == 1
    assert all(dispatcher is made[0] for dispatcher in made)
    assert len(looked) <= 1  # the first start() may make it

    def in_a_new_thread() -> None:
        with scope:
            greenlet.greenlet(lambda: None).switch()

    thread = threading.Thread(target=in_a_new_thread)
    thread.start()
    thread.join()
    assert len(looked) >= 1  # a new thread's new dispatcher looks


def test_a_thread_given_an_ident_whose_thread_ended_profiling_gets_its_own_dispatcher() -> None:
    left: list[tuple[greenprof.Profiler, greenlet.greenlet, int]] = []
    after: dict[int, object] = {}

    def ends_with_a_session_running() -> None:
        main = greenlet.getcurrent()
        glet = greenlet.greenlet(main.switch)
        glet.switch()  # suspended, and kept alive below
        profiler = greenprof.Profiler()
        profiler.start(glet)
        left.append((profiler, glet, thread_ident()))

    def profiles_and_stops() -> None:
        with greenprof.profile():
            greenlet.greenlet(lambda: None).switch()
        after[thread_ident()] = greenlet.gettrace()

    ending = threading.Thread(target=ends_with_a_session_running)
    ending.start()
    ending.join()
    ident = left[0][2]
    for _ in range(50):  # when a new thread gets that ident is the OS's business
        thread = threading.Thread(target=profiles_and_stops)
        thread.start()
        thread.join()
        if ident in after:
            break
    else:
        pytest.skip("no new thread got the ended thread's ident")
    assert after[ident] is None  # its last session stopped: no tracer left
    assert installed_dispatcher(ident) is None
    left[0][0].stop()  # from another thread: what it held goes with it


def test_a_greenlet_suspended_in_a_c_callable_is_not_taken_for_ended() -> None:
    # Its run is a builtin (another greenlet's switch): no Python frame while
    # suspended, like an ended greenlet, but it is alive and comes back.
    main = greenlet.getcurrent()
    glet = greenlet.greenlet(main.switch)
    with greenprof.profile(glet) as profiler:
        glet.switch()  # suspended inside main.switch
        glet.switch()  # ended
    assert [s.event for s in profiler.snapshots] == ["switch_in", "switch_out", "switch_in", "exit"]
    assert profiler.snapshots[1].stack == ()


def test_a_session_stopped_in_its_own_greenlet_captures_nothing_more_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A request's session stops in the request's greenlet, which goes on
    # (writes the response, waits for the next request) while other
    # sessions keep the tracer installed: its next switch-outs are nobody's,
    # and walking its stack for them is wasted on every request.
    from greenprof import _dispatcher

    walks: list[int] = []
    capture, walk_whole = _dispatcher.capture, _dispatcher.walk_whole

    def counted(frame: Any, depth: int, **options: Any) -> Any:
        walks.append(depth)
        return capture(frame, depth, **options)

    def counted_whole(frame: Any, depth: int) -> Any:  # before 3.12
        walks.append(depth)
        return walk_whole(frame, depth)

    main = greenlet.getcurrent()
    scope = greenprof.profile()

    def wait_elsewhere() -> None:
        main.switch()  # a frame no walk has seen

    sessions: list[greenprof.Profiler] = []

    def request() -> None:
        with scope as profiler:
            main.switch()
        sessions.append(profiler)
        walks.clear()
        for _ in range(3):
            wait_elsewhere()

    idle = greenlet.greenlet(lambda: None)  # never runs: keeps the tracer installed
    other = greenprof.Profiler()
    other.start(idle)
    try:
        monkeypatch.setattr(_dispatcher, "capture", counted)
        monkeypatch.setattr(_dispatcher, "walk_whole", counted_whole)
        glet = greenlet.greenlet(request)
        while not glet.dead:
            glet.switch()
    finally:
        other.stop()
    assert walks == []
    assert [s.event for s in sessions[0].snapshots] == ["start", "switch_out", "switch_in", "stop"]


@pytest.mark.parametrize("follow_spawned", [False, True])  # a request's stop(), the general one
@pytest.mark.parametrize("min_duration", [0.0, 3600.0])
def test_a_session_too_short_to_keep_walks_nothing_where_it_stops(
    monkeypatch: pytest.MonkeyPatch, min_duration: float, follow_spawned: bool
) -> None:
    # Its records are dropped unread: the stop record's stack is not walked.
    from greenprof import _session

    walks: list[int] = []
    capture = _session.capture

    def counted(frame: Any, depth: int, **options: Any) -> Any:
        walks.append(depth)
        return capture(frame, depth, **options)

    def counted_to_root(frame: Any, depth: int, root: Any) -> Any:
        walks.append(depth)
        return walk_to_root(frame, depth, root)

    monkeypatch.setattr(_session, "capture", counted)
    walk_to_root = _session.walk_to_root
    monkeypatch.setattr(_session, "walk_to_root", counted_to_root)
    profiler = greenprof.Profiler(min_duration=min_duration, follow_spawned=follow_spawned)
    profiler.start()
    walks.clear()
    profiler.stop()
    if min_duration:
        assert walks == []
        assert profiler.discarded
        assert profiler.snapshots == []
    else:
        assert walks == [profiler.options.max_depth]
        assert [s.event for s in profiler.snapshots] == ["start", "stop"]
        assert profiler.snapshots[-1].stack[-1].function == function_name(
            test_a_session_too_short_to_keep_walks_nothing_where_it_stops
        )


def test_an_inner_session_stopped_in_the_greenlet_leaves_the_outer_one_recording() -> None:
    # Stopping a session in its own greenlet lets the tracer forget that
    # greenlet only when no other session watches it.
    main = greenlet.getcurrent()
    scope = greenprof.profile()

    def wait_here() -> None:
        main.switch()

    def body() -> None:
        with scope:
            main.switch()
        wait_here()  # after the inner session: the outer one's alone

    def run() -> None:
        with greenprof.profile() as outer:
            body()
        sessions.append(outer)

    sessions: list[greenprof.Profiler] = []
    glet = greenlet.greenlet(run)
    while not glet.dead:
        glet.switch()
    outs = [s for s in sessions[0].snapshots if s.event == "switch_out"]

    def name(frame: Frame) -> str:
        return frame.function.rsplit(".", 1)[-1]

    assert [name(s.stack[-1]) for s in outs] == ["body", "wait_here"]
    assert [name(s.stack[-2]) for s in outs] == ["run", "body"]
