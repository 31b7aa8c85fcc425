"""Snapshots that share what did not change: frames marked through ``f_trace``
(Python 3.12+; before, nothing is marked and every stack is walked whole).

Every stack the switch path builds from marks must be exactly the stack
``traceback`` sees at that moment, whatever the greenlet did in between:
returned, called again from the same place, moved on in the same frame,
resumed a generator from another caller, raised, or went deeper than
``max_depth``. And marks must not hold frames, nor disturb a tracer or a
debugger.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import attrs
import greenlet
import pytest

import greenprof
from greenprof._dispatcher import installed_dispatcher
from greenprof._stack import MARKS, FrameFormatter, StackNode, height
from greenprof._threads import thread_ident

from .conftest import SwitchCounter


def short(stack: tuple[greenprof.Frame, ...]) -> list[tuple[str, str, int]]:
    # traceback names functions by co_name; compare the last name component.
    return [(f.filename, f.function.rsplit(".", 1)[-1], f.lineno) for f in stack]


class Script:
    """A seeded program of calls, returns, switches, raises and generator
    resumptions, run by a greenlet that switches back to the main one."""

    def __init__(self, seed: int, steps: int, main: greenlet.greenlet) -> None:
        rng = random.Random(seed)
        ops = ["call_a", "call_b", "ret", "switch_a", "switch_b", "raise", "gen", "twice"]
        weights = [5, 5, 6, 4, 4, 1, 2, 2]
        self.ops = iter(rng.choices(ops, weights, k=steps))
        self.main = main
        self.gen = self.produce()

    def produce(self) -> Iterator[int]:
        while True:
            self.main.switch()  # inside a generator, resumed from many callers
            yield 0

    def fail(self) -> None:
        self.main.switch()
        raise ValueError("unwinds through marked frames")

    def run(self) -> None:
        with contextlib.suppress(StopIteration):
            self.level_a(0)

    def level_a(self, depth: int) -> None:
        self.steps(depth)

    def level_b(self, depth: int) -> None:
        self.steps(depth)

    def steps(self, depth: int) -> None:
        while True:
            op = next(self.ops)
            if op == "call_a" and depth < 40:
                self.level_a(depth + 1)
            elif op == "call_b" and depth < 40:
                self.level_b(depth + 1)
            elif op == "ret" and depth:
                return
            elif op == "switch_a":
                self.main.switch()  # one place in this frame
            elif op == "switch_b":
                self.main.switch()  # another place in the same frame
            elif op == "twice":
                for _ in range(2):
                    self.main.switch()  # the same place twice in a row
            elif op == "raise":
                with contextlib.suppress(ValueError):
                    self.fail()
            elif op == "gen":
                next(self.gen)


def run_script(seed: int, steps: int, **options: Any) -> tuple[list[Any], list[Any]]:
    """(stacks greenprof recorded at each switch-out, stacks traceback saw)."""
    main = greenlet.getcurrent()
    script = Script(seed, steps, main)
    glet = greenlet.greenlet(script.run)
    counter = SwitchCounter(glet)
    got: list[Any] = []
    counter.install()
    try:
        # Two sessions one after the other: the second starts among marks
        # the first left, which must still be right.
        for _ in range(2):
            with greenprof.profile(glet, max_snapshots=100_000, **options) as profiler:
                for _ in range(steps // 4):
                    if glet.dead:
                        break
                    glet.switch()
            got += [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
    finally:
        counter.uninstall()
    return got, counter.stacks


def run_to_the_end(glet: greenlet.greenlet) -> tuple[list[Any], list[Any]]:
    """Profile ``glet`` until it ends: (greenprof's switch-out stacks, the
    stacks traceback saw at the same moments)."""
    counter = SwitchCounter(glet)
    counter.install()
    try:
        with greenprof.profile(glet) as profiler:
            while not glet.dead:
                glet.switch()
    finally:
        counter.uninstall()
    got = [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
    return got, counter.stacks


def switch_traced(glet: greenlet.greenlet, tracer: Any) -> object:
    """Switch into ``glet`` with ``tracer`` as the ``sys.settrace`` tracer;
    the tracer installed when it switched back."""
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        glet.switch()
        return sys.gettrace()
    finally:
        sys.settrace(previous)


@pytest.mark.parametrize("min_duration", [0.0, 1e-9], ids=["marking", "min_duration"])
def test_every_switch_out_is_the_stack_traceback_sees(min_duration: float) -> None:
    # With min_duration (here so short that every session is kept) the walks
    # leave no marks: whole stacks, the same as traceback's too.
    for seed in range(6):
        got, wanted = run_script(seed, 4000, max_depth=500, min_duration=min_duration)
        assert len(got) > 100
        assert got == wanted


def _marked_frames(frame: FrameType | None) -> int:
    marked = 0
    while frame is not None:
        marked += isinstance(frame.f_trace, StackNode)
        frame = frame.f_back
    return marked


def parked(depth: int, *, places: int = 1) -> greenlet.greenlet:
    """A greenlet switched into once, now ``depth`` + 1 frames of ``deep``
    down and switching back to the main greenlet for ever: at one place, or
    at two in turn (``places=2``), never twice in a row at the same one."""
    main = greenlet.getcurrent()

    def deep(n: int) -> None:
        if n:
            deep(n - 1)
        elif places == 1:
            while True:
                main.switch()
        else:
            while True:
                main.switch()
                main.switch()

    glet = greenlet.greenlet(deep)
    glet.switch(depth)
    return glet


@pytest.mark.skipif(not MARKS, reason="nothing is marked before 3.12")
def test_a_session_min_duration_will_likely_drop_marks_no_frame() -> None:
    # Marking pays off when snapshots are read; most sessions with a
    # min_duration are dropped unread, and walking their whole stacks costs
    # less than marking it. A session without one, on the same stack, marks.
    def switch_under(glet: greenlet.greenlet, **options: Any) -> greenprof.Profiler:
        with greenprof.profile(glet, **options) as profiler:
            for _ in range(4):
                glet.switch()
        return profiler

    glet = parked(12, places=2)
    dropped = switch_under(glet, min_duration=3600)
    assert dropped.discarded
    assert _marked_frames(glet.gr_frame) == 0
    kept = switch_under(glet, min_duration=1e-9)
    assert not kept.discarded
    assert _marked_frames(glet.gr_frame) == 0
    outs = [s.stack for s in kept.snapshots if s.event == "switch_out"]
    assert len(outs) == 4
    assert [f.function.rsplit(".", 1)[-1] for f in outs[0][-14:]] == ["deep"] * 13
    assert outs[0][-1].lineno != outs[1][-1].lineno
    switch_under(glet)
    assert _marked_frames(glet.gr_frame) >= 13


@pytest.mark.skipif(not MARKS, reason="nothing is marked before 3.12")
def test_a_min_duration_session_waiting_in_a_loop_marks_only_the_loop_frame() -> None:
    # Waiting at the same place a third time in a row, perhaps a loop in one
    # frame: that frame, and it alone, gets a node, and its next waits there
    # take the stack as it is, without a walk.
    glet = parked(12)
    dispatcher = None
    raws = []
    with greenprof.profile(glet, min_duration=1e-9) as profiler:
        dispatcher = installed_dispatcher(thread_ident())
        assert dispatcher is not None
        for _ in range(5):
            glet.switch()
            raws.append(dispatcher.watches[glet].last_stack)
    frame = glet.gr_frame
    assert frame is not None
    assert isinstance(frame.f_trace, StackNode)
    assert _marked_frames(frame.f_back) == 0
    # Suspended there when the session started, then two waits there: the
    # second is the third in a row, marked; every wait after takes the
    # node's stack, unwalked.
    assert raws[0] is not raws[1]
    assert raws[1] is raws[2] is raws[3] is raws[4]
    outs = [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
    assert len(outs) == 5
    assert all(out == outs[0] for out in outs)
    assert [name for _, name, _ in outs[0][-14:]] == ["deep"] * 13


@pytest.mark.skipif(not MARKS, reason="nothing is marked before 3.12")
def test_a_loop_calling_a_function_that_waits_gets_one_node_per_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gevent.sleep in a loop: the same place every time, in a new frame each
    # time, so a node never pays off; one per run of waits at most.
    from greenprof import _stack

    made: list[object] = []
    new_node = _stack._new_node

    def counted(cls: type) -> object:
        node = new_node(cls)
        made.append(node)
        return node

    monkeypatch.setattr(_stack, "_new_node", counted)
    main = greenlet.getcurrent()

    def wait() -> None:
        main.switch()

    def wait_too() -> None:
        main.switch()

    def loop() -> None:
        for _ in range(20):
            wait()
        for _ in range(20):
            wait_too()  # another place: another run

    glet = greenlet.greenlet(loop)
    with greenprof.profile(glet, min_duration=1e-9) as profiler:
        while not glet.dead:
            glet.switch()
    assert len(made) == 2
    outs = [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
    assert len(outs) == 40
    assert [name for _, name, _ in outs[0][-2:]] == ["loop", "wait"]
    assert [name for _, name, _ in outs[-1][-2:]] == ["loop", "wait_too"]
    assert len({tuple(out) for out in outs}) == 2


@pytest.mark.parametrize("order", ["marking first", "min_duration first"])
def test_a_greenlet_watched_by_both_kinds_of_session_records_exact_stacks(order: str) -> None:
    main = greenlet.getcurrent()
    script = Script(3, 3000, main)
    glet = greenlet.greenlet(script.run)
    counter = SwitchCounter(glet)
    marking = greenprof.Profiler(max_snapshots=100_000, max_depth=500)
    rare = greenprof.Profiler(max_snapshots=100_000, max_depth=500, min_duration=1e-9)
    first, second = (marking, rare) if order == "marking first" else (rare, marking)
    counter.install()
    try:
        first.start(glet)
        for _ in range(100):
            glet.switch()
        second.start(glet)
        for _ in range(400):
            if glet.dead:
                break
            glet.switch()
        if MARKS:  # the marking session's walks mark, whichever came first
            assert _marked_frames(glet.gr_frame) > 0
        second.stop()
        first.stop()
    finally:
        counter.uninstall()
    wanted = counter.stacks
    for profiler, skipped in ((first, 0), (second, 100)):
        got = [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
        assert len(got) > 100
        assert got == wanted[skipped : skipped + len(got)]


@pytest.mark.parametrize("marking_leaves", [True, False], ids=["leaves", "stays"])
def test_a_greenlet_stops_marking_when_its_marking_session_leaves(marking_leaves: bool) -> None:
    main = greenlet.getcurrent()

    def hop(n: int) -> None:
        if n:
            hop(n - 1)
        else:
            main.switch()

    glet = greenlet.greenlet(hop)
    rare = greenprof.Profiler(min_duration=1e-9)
    marking = greenprof.Profiler()
    rare.start(glet)
    marking.start(glet)
    try:
        if marking_leaves:
            marking.stop()
        glet.switch(6)  # its first switch-out: walked with marks only if marking stayed
        marked = _marked_frames(glet.gr_frame)
    finally:
        rare.stop()
        if marking.is_running:
            marking.stop()
    if marking_leaves or not MARKS:
        assert marked == 0
    else:
        assert marked >= 7
    outs = [s.stack for s in rare.snapshots if s.event == "switch_out"]
    assert [f.function.rsplit(".", 1)[-1] for f in outs[0][-7:]] == ["hop"] * 7


@pytest.mark.skipif(not MARKS, reason="nothing is marked before 3.12")
@pytest.mark.parametrize("min_duration", [3600.0, 1e-9], ids=["dropped", "kept"])
def test_a_min_duration_session_marks_only_the_frame_under_its_caller(
    min_duration: float,
) -> None:
    main = greenlet.getcurrent()
    marked: list[int] = []
    root_marked: list[bool] = []

    def request(n: int, **options: Any) -> None:
        if n:
            request(n - 1, **options)
            return
        with greenprof.profile(**options) as profiler:
            main.switch()
        marked.append(_marked_frames(sys._getframe()))
        root_marked.append(isinstance(sys._getframe(1).f_trace, StackNode))
        assert profiler.discarded is (options.get("min_duration", 0) > 1)

    for options in ({"min_duration": min_duration}, {}):
        glet = greenlet.greenlet(request)
        glet.switch(10, **options)
        glet.switch()
        assert glet.dead
    # Start, switch-out and stop: whole walks, down to the frame under the
    # one that started the session (its root), marked once at start().
    assert marked[0] == 1
    assert root_marked[0]
    # Without min_duration the start walk is the same; its switch-out and
    # stop walks mark the frames above the root they pass, the top one here.
    assert marked[1] == 2
    assert root_marked[1]


@pytest.mark.parametrize("min_duration", [0.0, 1e-9], ids=["marking", "min_duration"])
def test_greenlets_a_min_duration_session_follows_record_exact_stacks(
    min_duration: float,
) -> None:
    import gevent

    marked: list[int] = []

    def deep(n: int) -> None:
        if n:
            deep(n - 1)
            return
        for _ in range(3):
            gevent.sleep(0)
        marked.append(_marked_frames(sys._getframe()))

    with greenprof.profile(follow_spawned=True, min_duration=min_duration) as profiler:
        gevent.spawn(deep, 8).join()
    children = {s.greenlet_id for s in profiler.snapshots if s.parent_id is not None}
    assert len(children) == 1
    outs = [
        s.stack for s in profiler.snapshots if s.greenlet_id in children and s.event == "switch_out"
    ]
    assert len(outs) >= 3
    for stack in outs[:3]:
        names = [f.function.rsplit(".", 1)[-1] for f in stack]
        assert names[-1] == "sleep"
        assert names[-10:-1] == ["deep"] * 9
    if not MARKS or min_duration:
        assert marked == [0]  # the picked-up greenlet's walks marked nothing
    else:
        assert marked[0] >= 9


@pytest.mark.skipif(not MARKS, reason="one raw stack per path needs marks (3.12+)")
def test_stacks_stay_exact_when_the_table_of_raw_stacks_fills_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The table that makes one path one raw stack takes no more once full,
    # until a stop() clears it; stacks made before, while and after it is
    # full must all be right.
    from greenprof import _stack

    monkeypatch.setattr(_stack, "_INTERNED", {})
    monkeypatch.setattr(_stack, "MAX_INTERNED", 5)
    for seed in range(2):
        got, wanted = run_script(seed, 3000, max_depth=500)
        assert len(got) > 100
        assert got == wanted
        assert len(_stack._INTERNED) < 5  # the last stop() cleared it, full


def test_below_max_depth_stacks_are_the_innermost_frames() -> None:
    for seed in range(3):
        got, wanted = run_script(seed, 4000, max_depth=7)
        assert len(got) > 100
        assert got == [stack[-7:] for stack in wanted]
        assert any(len(stack) > 7 for stack in wanted)  # truncation happened


def test_the_same_wait_site_shares_one_formatted_stack() -> None:
    main = greenlet.getcurrent()

    def wait() -> None:
        while True:
            main.switch()

    glet = greenlet.greenlet(wait)
    with greenprof.profile(glet) as profiler:
        for _ in range(5):
            glet.switch()
    outs = [s for s in profiler.snapshots if s.event == "switch_out"]
    assert len(outs) == 5
    assert all(s.stack is outs[0].stack for s in outs)
    assert outs[0].stack[-1].function.endswith("wait")


def test_marks_hold_no_frame_and_no_local() -> None:
    main = greenlet.getcurrent()
    refs: list[weakref.ref[Any]] = []

    class Big:
        pass

    def hold() -> None:
        big = Big()
        refs.append(weakref.ref(big))
        main.switch()  # marked here, with ``big`` alive

    def body() -> None:
        hold()
        main.switch()  # ``hold`` has returned

    glet = greenlet.greenlet(body)
    with greenprof.profile(glet) as profiler:
        glet.switch()
        frame = glet.gr_frame
        assert frame is not None
        if MARKS:
            assert isinstance(frame.f_trace, StackNode)  # the mark is there
        else:
            assert frame.f_trace is None  # before 3.12 nothing is marked
        del frame
        glet.switch()
        assert refs[0]() is None  # gone as soon as ``hold`` returned
        glet.switch()
    events = [s.event for s in profiler.snapshots]
    assert events == ["switch_in", "switch_out"] * 2 + ["switch_in", "exit"]


def test_a_trace_function_someone_else_set_is_left_alone() -> None:
    main = greenlet.getcurrent()
    theirs_calls: list[str] = []

    def theirs(frame: FrameType, event: str, arg: Any) -> Any:
        theirs_calls.append(event)
        return theirs

    def body() -> None:
        here = sys._getframe()
        here.f_trace = theirs
        for _ in range(3):
            main.switch()  # walked every time, never marked
        assert here.f_trace is theirs

    outs, wanted = run_to_the_end(greenlet.greenlet(body))
    assert outs == wanted
    assert theirs_calls == []  # no sys.settrace tracer ran: nobody called it


def test_a_settrace_tracer_started_later_still_works_through_marked_frames() -> None:
    main = greenlet.getcurrent()
    seen: list[tuple[str, str]] = []

    def probe() -> int:
        total = 1
        total += 1
        return total

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code is probe.__code__:
            seen.append((event, frame.f_code.co_name))
            return tracer
        return None  # leave every other frame alone

    def body() -> None:
        main.switch()  # marked here
        x = 1  # line events of this frame go to its mark once tracing starts
        x += probe()
        main.switch()

    glet = greenlet.greenlet(body)
    with greenprof.profile(glet):
        glet.switch()
    frame = glet.gr_frame
    assert frame is not None
    assert isinstance(frame.f_trace, StackNode) is MARKS
    del frame
    assert switch_traced(glet, tracer) is tracer  # not dropped by an error in a mark
    assert ("call", "probe") in seen
    assert ("return", "probe") in seen
    assert sum(event == "line" for event, _ in seen) == 3
    glet.switch()
    assert glet.dead


def test_snapshots_built_by_the_profiler_equal_ones_built_by_their_class() -> None:
    main = greenlet.getcurrent()
    glet = greenlet.greenlet(lambda: [main.switch() for _ in range(3)])
    with greenprof.profile(glet) as profiler:
        while not glet.dead:
            glet.switch()
    snapshots = profiler.snapshots
    assert [s.event for s in snapshots] == ["switch_in", "switch_out"] * 3 + ["switch_in", "exit"]
    for snapshot in snapshots:
        rebuilt = greenprof.Snapshot(**attrs.asdict(snapshot, recurse=False))
        assert rebuilt == snapshot
        assert hash(rebuilt) == hash(snapshot)
        assert attrs.asdict(rebuilt) == attrs.asdict(snapshot)


# Python 3.12+ warns at a fork with threads running, as greenprof's own may
# be here (left by earlier tests): a fork a server makes with them running too.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_session_ids_are_unique_here_and_in_a_forked_child() -> None:
    ids = {greenprof.Profiler().session_id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report a few ids and leave at once
        try:
            os.write(write, " ".join(greenprof.Profiler().session_id for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    assert len(child) == 3
    assert not ids & set(child)
    # A fresh random half in the child, not its parent's continued.
    assert {i[:16] for i in child}.isdisjoint({i[:16] for i in ids})


def test_a_mark_copied_to_another_frame_is_not_trusted() -> None:
    main = greenlet.getcurrent()

    def inherit(frame: FrameType, event: str, arg: Any) -> Any:
        # "Trace callees like their caller": hands the caller's f_trace,
        # greenprof's mark, to the callee.
        if event == "call" and frame.f_back is not None:
            return frame.f_back.f_trace
        return None

    def callee() -> None:
        main.switch()  # its f_trace is its caller's mark here

    def caller() -> None:
        main.switch()  # marked here
        sys.settrace(inherit)
        try:
            callee()
        finally:
            sys.settrace(None)
        main.switch()

    outs, wanted = run_to_the_end(greenlet.greenlet(caller))
    assert len(outs) == 3
    assert outs == wanted
    assert outs[1][-1][1] == "callee"


def test_a_stack_that_deepens_little_by_little_stays_within_max_depth() -> None:
    main = greenlet.getcurrent()

    def down(level: int) -> None:
        main.switch()  # one switch at every level on the way down
        if level:
            down(level - 1)

    glet = greenlet.greenlet(lambda: down(600))
    counter = SwitchCounter(glet)
    heights: list[int] = []
    counter.install()
    try:
        with greenprof.profile(glet, max_depth=10) as profiler:
            dispatcher = installed_dispatcher(thread_ident())
            assert dispatcher is not None
            while not glet.dead:
                glet.switch()
                watch = dispatcher.watches.get(glet)
                if watch is not None and watch.last_stack is not None:
                    heights.append(height(watch.last_stack))
    finally:
        counter.uninstall()
    outs = [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
    assert len(outs) == 601
    assert outs == [stack[-10:] for stack in counter.stacks]
    # What is kept never grows past max_depth, however deep the greenlet goes.
    assert len(heights) >= 601
    assert max(heights) <= 10


SCRIPT_F_LINENO = """
import contextlib, sys
import greenlet, greenprof
main = greenlet.getcurrent()

def jumper():
    caller = sys._getframe(1)
    caller.f_lineno = caller.f_code.co_firstlineno + 5  # a program error

def victim():
    for item in range(2):
        main.switch()
        jumper()
        print("in loop", item)

glet = greenlet.greenlet(victim)
with greenprof.profile(glet) if sys.argv[1] == "profile" else contextlib.nullcontext():
    glet.switch()
    try:
        glet.switch()
    except ValueError as exc:
        print("ValueError:", exc)
print("done")
"""


def test_setting_f_lineno_outside_a_trace_function_fails_as_it_would_unprofiled() -> None:
    # Before 3.12 a frame's f_trace is what lets f_lineno be set: a mark
    # there would turn this ValueError into a crash. The outcome must be the
    # same with and without greenprof (whatever this Python does).
    outcomes = [
        subprocess.run(
            [sys.executable, "-c", SCRIPT_F_LINENO, how],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        for how in ("plain", "profile")
    ]
    plain, profiled = ((o.returncode, o.stdout) for o in outcomes)
    assert profiled == plain
    if plain[0] == 0:
        assert "ValueError" in plain[1]


def test_a_tracer_may_set_attributes_on_whatever_f_trace_it_finds() -> None:
    main = greenlet.getcurrent()
    found: list[object] = []

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_name == "enter" and frame.f_back is not None:
            theirs = frame.f_back.f_trace
            if theirs is not None:
                theirs.just_changed = True  # as some logging tracers do
                found.append(theirs)
        return None

    def enter() -> None:
        return None

    def body() -> None:
        main.switch()  # marked here (3.12+)
        enter()
        main.switch()

    glet = greenlet.greenlet(body)
    with greenprof.profile(glet) as profiler:
        glet.switch()
        still = switch_traced(glet, tracer)
        glet.switch()
    assert still is tracer
    assert len(found) == (1 if MARKS else 0)
    assert [s.event for s in profiler.snapshots][-1] == "exit"


def test_a_deeper_session_joining_gets_the_whole_stack_at_its_first_switch_in() -> None:
    main = greenlet.getcurrent()

    def down(level: int) -> None:
        if level:
            down(level - 1)
        else:
            while True:
                main.switch()  # suspended 20 frames deep

    glet = greenlet.greenlet(lambda: down(20))
    glet.switch()
    shallow = greenprof.Profiler(max_depth=3)
    shallow.start(glet)
    try:
        with greenprof.profile(glet, max_depth=50) as deep:
            glet.switch()
    finally:
        shallow.stop()
    first_in = next(s for s in deep.snapshots if s.event == "switch_in")
    first_out = next(s for s in deep.snapshots if s.event == "switch_out")
    assert len(first_in.stack) == len(first_out.stack) > 20
    assert first_in.stack == first_out.stack
    assert all(len(s.stack) == 3 for s in shallow.snapshots)


@pytest.mark.skipif(not MARKS, reason="nothing is marked before Python 3.12")
def test_a_sampler_reading_a_half_built_chain_gets_a_whole_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A sampler thread may read a greenlet's frames between the moment a walk
    # leaves its nodes in f_trace and the moment it measures them. Stand in
    # for it at exactly that point, in this thread.
    from greenprof import _stack

    main = greenlet.getcurrent()
    seen: list[list[str]] = []
    measure = _stack._measure

    def read_in_the_gap(nodes: Any, below: int, key: Any) -> Any:
        frame = glet.gr_frame
        if frame is not None:
            raw = _stack.capture(frame, 100, mark=False)
            seen.append([f.function for f in _stack.FrameFormatter().frames(raw)])
        return measure(nodes, below, key)

    def level(n: int) -> None:
        if n:
            level(n - 1)
        else:
            for _ in range(3):
                main.switch()

    glet = greenlet.greenlet(lambda: level(5))
    monkeypatch.setattr(_stack, "_measure", read_in_the_gap)
    with greenprof.profile(glet) as profiler:
        while not glet.dead:
            glet.switch()
    outs = [[f.function for f in s.stack] for s in profiler.snapshots if s.event == "switch_out"]
    assert seen
    assert all(stack == outs[0] for stack in seen)
    assert sum(name.endswith("level") for name in outs[0]) == 6


class CountingDict(dict[Any, Any]):
    """A formatter's content cache that counts its lookups."""

    lookups = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.lookups += 1
        return super().get(key, default)


def test_waiting_at_the_same_place_again_is_formatted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # From 3.12 the marks share the raw stack of a frame that waits again,
    # and a new frame waiting at the same place as the last one makes the
    # same raw stack. Before, each wait is walked into a
    # new raw stack, and formatting one just like the last one formatted
    # skips the content cache's key.
    from greenprof import _build, _stack

    formatter = _stack.FrameFormatter()
    formatter._stacks = counting = CountingDict()
    monkeypatch.setattr(_build, "FORMATTER", formatter)
    main = greenlet.getcurrent()

    def park() -> None:
        main.switch()

    def body() -> None:
        for _ in range(3):
            main.switch()  # the same frame each time
        for _ in range(3):
            park()  # a new frame each time, at the same place

    def run() -> None:
        body()  # so that every stack is more than one frame

    glet = greenlet.greenlet(run)
    glet.switch()
    with greenprof.profile(glet, max_depth=500) as profiler:
        dispatcher = installed_dispatcher(thread_ident())
        assert dispatcher is not None
        watch = dispatcher.watches[glet]
        raws = [watch.last_stack]
        while not glet.dead:
            glet.switch()
            raws.append(watch.last_stack)
    outs = [s.stack for s in profiler.snapshots if s.event == "switch_out"]
    assert [stack[-1].function.rsplit(".", 1)[-1] for stack in outs] == ["body"] * 2 + ["park"] * 3
    assert outs[0] is outs[1]
    assert outs[2] is outs[3] is outs[4]
    if MARKS:
        assert raws[0] is raws[1] is raws[2]
        # A new frame at the same place, on the same frames below: the very
        # same raw stack (made once, then found by its code, offset and the
        # raw stack below).
        assert raws[3] is raws[4] is raws[5]
        assert raws[3] is not raws[2]
    else:
        assert len({id(raw) for raw in raws[:6]}) == 6
        # The suspended stack at start and the first wait in park(): the
        # four other waits were each like the one before.
        assert counting.lookups == 2


def test_equal_code_from_another_file_is_another_stack() -> None:
    # Code objects compare equal when their bytecode, names and lines do,
    # whatever their file: only the very same code is the same stack.
    source = "def park(wait):\n    wait()\n"
    parks = []
    for filename in ("first.py", "second.py"):
        namespace: dict[str, Any] = {}
        exec(compile(source, filename, "exec"), namespace)
        parks.append(namespace["park"])
    assert parks[0].__code__ == parks[1].__code__
    main = greenlet.getcurrent()

    def wait() -> None:
        main.switch()  # the same top frame each time

    def body() -> None:
        for park in (*parks, *parks):
            park(wait)  # from the same place each time

    got, wanted = run_to_the_end(greenlet.greenlet(body))
    assert got == wanted
    assert [stack[-2][0] for stack in got] == ["first.py", "second.py"] * 2


def test_the_same_top_frame_from_other_callers_is_another_stack() -> None:
    main = greenlet.getcurrent()

    def park() -> None:
        main.switch()  # the same code and offset every time

    def deeper() -> None:
        park()

    def body() -> None:
        park()  # from one line
        park()  # from another
        deeper()  # one frame more
        park()

    def run() -> None:
        body()

    got, wanted = run_to_the_end(greenlet.greenlet(run))
    assert got == wanted
    callers = [stack[-2][1:] for stack in got]
    assert [name for name, _ in callers] == ["body", "body", "deeper", "body"]
    assert len(set(callers)) == 4
    assert [len(stack) for stack in got] == [len(got[0])] * 2 + [len(got[0]) + 1, len(got[0])]


def test_another_top_function_from_the_same_call_site_is_another_stack() -> None:
    main = greenlet.getcurrent()

    def park_a() -> None:
        main.switch()

    def park_b() -> None:
        main.switch()  # the same bytecode and offset as park_a

    def body() -> None:
        for park in (park_a, park_b):
            park()  # one call site

    def run() -> None:
        body()

    got, wanted = run_to_the_end(greenlet.greenlet(run))
    assert got == wanted
    assert [stack[-1][1] for stack in got] == ["park_a", "park_b"]


def test_the_same_frames_on_another_stack_below_are_another_stack() -> None:
    # A raw stack of several frames on top of another (a sampler's capture
    # on 3.12+), formatted twice in a row over different stacks below.
    codes = {}
    for name in ("a", "b", "middle", "top"):
        namespace: dict[str, Any] = {}
        exec(f"def {name}():\n    pass\n", namespace)
        codes[name] = namespace[name].__code__
    formatter = FrameFormatter()
    for bottom in ("a", "b"):
        raw = (codes["top"], 0, codes["middle"], 0, (codes[bottom], 0, None))
        assert [f.function for f in formatter.frames(raw)] == [bottom, "middle", "top"]


# -- sessions started in the greenlet they profile -------------------------------------


class SessionScript(Script):
    """The script, with sessions opened and closed from inside its greenlet
    at every depth: ``with profile()`` around a call, and a profiler
    started in one call and stopped in another (its start frame gone by
    then). With a ``min_duration`` (``options``), from 3.12, each
    switch-out is walked down to the frame under the one the session
    started from, which may have returned by then."""

    def __init__(self, seed: int, steps: int, main: greenlet.greenlet, counter: Any) -> None:
        super().__init__(seed, steps, main)
        rng = random.Random(seed + 1000)
        ops = ["call_a", "call_b", "ret", "switch_a", "switch_b", "raise", "gen", "twice"]
        ops += ["with", "open", "close"]
        weights = [5, 5, 6, 4, 4, 1, 2, 2, 1, 1, 1]
        self.ops = iter(rng.choices(ops, weights, k=steps))
        self.counter = counter
        self.open: list[tuple[greenprof.Profiler, int]] = []
        #: (profiler, first switch-out index, last) of each session.
        self.sessions: list[tuple[greenprof.Profiler, int, int]] = []
        #: Given to every session.
        self.options: dict[str, Any] = {}
        #: Each session's max_depth, by its profiler's id.
        self.depths: dict[int, int] = {}

    def level_a(self, depth: int) -> None:
        self.steps(depth)
        # Switches here after a session started in steps() above is gone:
        # this frame, the one under it, is in another place than then.
        self.main.switch()

    def session_options(self) -> dict[str, Any]:
        return self.options

    def steps(self, depth: int) -> None:
        while True:
            op = next(self.ops)
            options = self.session_options() if op in ("with", "open") else {}
            if op == "with" and depth < 40:
                first = len(self.counter.stacks)
                with greenprof.profile(max_snapshots=100_000, **options) as profiler:
                    self.depths[id(profiler)] = options.get("max_depth", 128)
                    self.level_b(depth + 1)
                self.sessions.append((profiler, first, len(self.counter.stacks)))
            elif op == "open":
                profiler = greenprof.Profiler(max_snapshots=100_000, **options)
                self.depths[id(profiler)] = options.get("max_depth", 128)
                profiler.start()
                self.open.append((profiler, len(self.counter.stacks)))
            elif op == "close" and self.open:
                profiler, first = self.open.pop()
                profiler.stop()
                self.sessions.append((profiler, first, len(self.counter.stacks)))
            elif op == "ret" and depth:
                return
            else:
                self.do(op, depth)

    def do(self, op: str, depth: int) -> None:
        if op == "call_a" and depth < 40:
            self.level_a(depth + 1)
        elif op == "call_b" and depth < 40:
            self.level_b(depth + 1)
        elif op in ("switch_a", "switch_b"):
            self.main.switch()
        elif op == "twice":
            for _ in range(2):
                self.main.switch()
        elif op == "raise":
            with contextlib.suppress(ValueError):
                self.fail()
        elif op == "gen":
            next(self.gen)


def _run_script(
    kind: type[SessionScript], seed: int, options: dict[str, Any]
) -> tuple[Any, SwitchCounter]:
    """Run a script of ``kind`` in a greenlet to its end, its sessions
    given ``options``, and stop the sessions it left open."""
    glet = greenlet.greenlet()
    counter = SwitchCounter(glet)
    script = kind(seed, 3000, greenlet.getcurrent(), counter)
    script.options = options
    glet.run = script.run
    _to_the_end(glet, counter)
    for profiler, _ in script.open:
        profiler.stop()
    return script, counter


def _to_the_end(glet: greenlet.greenlet, counter: SwitchCounter) -> None:
    """Switch into ``glet`` until it ends, ``counter`` counting."""
    counter.install()
    try:
        while not glet.dead:
            glet.switch()
    finally:
        counter.uninstall()


# min_duration (kept: 1 ns): from 3.12 whole walks, cut at each session's root.
@pytest.mark.parametrize("options", [{}, {"min_duration": 1e-9}], ids=["plain", "min_duration"])
def test_sessions_started_inside_their_greenlet_record_the_stacks_traceback_sees(
    options: dict[str, Any],
) -> None:
    checked = 0
    for seed in range(4):
        script, counter = _run_script(SessionScript, seed, options)
        for profiler, first, last in script.sessions:
            got = [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
            assert got == counter.stacks[first:last]
            checked += len(got)
            starts = [s for s in profiler.snapshots if s.event in ("start", "stop")]
            assert all(s.stack for s in starts)
    assert checked > 500


def _start(profiler: greenprof.Profiler) -> None:
    profiler.start()  # the session's start frame: gone before its first switch


def _caller_of_start(profiler: greenprof.Profiler, main: greenlet.greenlet) -> None:
    _start(profiler)
    main.switch()  # the frame under the start frame, in another place now
    _deeper(main)
    profiler.stop()


def _deeper(main: greenlet.greenlet) -> None:
    main.switch()


def test_a_session_whose_start_frame_returned_records_exact_stacks() -> None:
    main = greenlet.getcurrent()
    profiler = greenprof.Profiler()
    glet = greenlet.greenlet(lambda: _caller_of_start(profiler, main))
    counter = SwitchCounter(glet)
    _to_the_end(glet, counter)
    got = [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
    assert got == counter.stacks
    assert [f[1] for f in got[0][-2:]] == ["<lambda>", "_caller_of_start"]
    assert [f[1] for f in got[1][-2:]] == ["_caller_of_start", "_deeper"]


def test_a_tool_that_traces_only_frames_without_f_trace_sees_marked_frames_too() -> None:
    # A debugger or coverage tool gives its tracer to running frames only
    # where f_trace is None: greenprof's marks must not hide those frames.

    def run(profiled: bool) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        ours: tuple[object, ...] = ()

        def tool(frame: FrameType, event: str, arg: Any) -> Any:
            # One function for every event, as bdb's and coverage's tracers.
            if event == "call" and frame.f_code not in ours:
                return None
            seen.append((event, frame.f_code.co_name))
            return tool

        def work() -> int:
            greenlet.greenlet(lambda: None).switch()  # marks this greenlet's frames
            frame: FrameType | None = sys._getframe()
            while frame is not None and frame.f_code in ours:
                if frame.f_trace is None:  # the tool's rule
                    frame.f_trace = tool
                frame = frame.f_back
            sys.settrace(tool)
            a = 1
            a += 1
            return a

        def outer() -> int:
            b = work()
            b += 1
            return b

        ours = (run.__code__, outer.__code__, work.__code__)
        profiler = greenprof.Profiler()
        previous = sys.gettrace()
        if profiled:
            profiler.start()
        try:
            outer()
        finally:
            sys.settrace(previous)
            if profiled:
                profiler.stop()
        if profiled:
            marked = [s for s in profiler.snapshots if s.event == "switch_out"]
            assert marked
            assert marked[0].stack[-1].function.endswith("work")
        return seen

    unprofiled = run(False)
    assert ("return", "outer") in unprofiled
    assert run(True) == unprofiled


# -- a min_duration session's root (3.12+) ------------------------------------------


def _served(depth: int, request: Any) -> Any:
    """``request()`` called ``depth`` frames down: a server's frames under a handler."""
    if depth:
        return _served(depth - 1, request)
    return request()


def _waits(depth: int, main: greenlet.greenlet, times: int) -> None:
    if depth:
        _waits(depth - 1, main, times)
        return
    for _ in range(times):
        main.switch()


def _serve(under: int, request: Callable[[], None]) -> tuple[SwitchCounter, Any, list[Any]]:
    """Run ``request()`` ``under`` frames down in a greenlet, to its end:
    the switch counter; its watch's root, and how many roots its
    dispatcher had set aside, at its first switch-out, and that list; and
    the raw stack of each switch-out."""
    glet = greenlet.greenlet(lambda: _served(under, request))
    counter = SwitchCounter(glet)
    counter.install()
    raws = []
    try:
        glet.switch()
        dispatcher = installed_dispatcher(thread_ident())
        assert dispatcher is not None
        watch = dispatcher.watches[glet]
        roots = (watch.root, len(dispatcher.gone_roots), dispatcher.gone_roots)
        while not glet.dead:
            raws.append(watch.last_stack)
            glet.switch()
    finally:
        counter.uninstall()
    return counter, roots, raws


def _root_at(caller: FrameType, depth: int) -> Any:
    """The root a session started from ``caller`` would get (or None)."""
    from greenprof._stack import start_walk

    return start_walk(caller, depth, False)[1]


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_a_kept_sessions_start_marks_only_its_root_and_its_stacks_repeat() -> None:
    # A server's requests on one connection: new frames for each, the same
    # frames under them. A kept session's start walk marks the frame under
    # its caller alone; the frames under that one come out as the very same
    # tuple at every request, so every stack built on it does too, and the
    # formatter finds each of them by identity after the first request.
    main = greenlet.getcurrent()
    seen: list[Any] = []
    marked: list[int] = []
    raws: list[list[Any]] = []

    def request() -> None:
        with greenprof.profile() as profiler:
            _waits(3, main, 2)
        seen.append(profiler)
        marked.append(_marked_frames(sys._getframe(1)))
        (buffer,) = profiler._last.buffers  # its records, not read yet
        raws.append([record[2] for record in buffer.records])

    def serve() -> None:
        for _ in range(3):
            _served(2, request)

    glet = greenlet.greenlet(lambda: _served(12, serve))
    counter = SwitchCounter(glet)
    _to_the_end(glet, counter)
    assert marked == [1, 1, 1]  # request()'s caller, the root; nothing under it
    assert [len(raw) for raw in raws] == [6, 6, 6]  # start, 2 outs, 2 ins, stop
    for first, second, third in zip(*raws, strict=True):
        assert first is second is third  # the very same raw stacks
    stacks = [[s.stack for s in p.snapshots] for p in seen]
    for first, second, third in zip(*stacks, strict=True):
        assert first is second is third
    outs = [short(s.stack) for p in seen for s in p.snapshots if s.event == "switch_out"]
    assert outs == counter.stacks
    assert len(outs) == 6


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_frames_under_a_root_are_shared_only_for_the_same_code_objects() -> None:
    from greenprof._stack import start_walk

    formatter = FrameFormatter()
    source = "def twin(call):\n    return call()\n"
    twins = []
    for name in ("first.py", "second.py"):  # equal code objects, two files
        namespace: dict[str, Any] = {}
        exec(compile(source, name, "exec"), namespace)
        twins.append(namespace["twin"])
    assert twins[0].__code__ == twins[1].__code__

    def caller() -> Any:
        return start_walk(sys._getframe(), 1000, True)

    def root() -> Any:
        return caller()

    def common() -> Any:  # the top frame under the root: the same code each time
        return root()

    def walk(twin: Any) -> Any:
        return _served(3, lambda: twin(common))

    first, second = twins
    starts = [walk(twin)[0] for twin in (first, first, second, second)]
    # caller, root, common, then the twin
    assert [formatter.frames(start)[-4].filename for start in starts] == [
        "first.py",
        "first.py",
        "second.py",
        "second.py",
    ]
    below = [start[2][2] for start in starts]  # caller, root, then the rest
    assert below[1] is below[0]  # the same code objects: the same tuple
    assert below[2] == below[0]  # equal, yet not the same code objects
    assert below[2] is not below[0]
    assert below[3] is below[2]


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_a_sessions_root_stays_while_other_sessions_start_and_stop_on_its_greenlet() -> None:
    # Only a session that marks nothing keeps a root on the greenlet's watch
    # (one that marks finds the root by its node), and a session started
    # while the greenlet has a root leaves it alone.
    def watch_root() -> Any:
        dispatcher = installed_dispatcher(thread_ident())
        assert dispatcher is not None
        return dispatcher.watches[greenlet.getcurrent()].root

    roots: dict[str, Any] = {}

    def marking_first() -> None:  # the root of both sessions
        marking = greenprof.Profiler()
        rare = greenprof.Profiler(min_duration=1e-9)
        (lambda: marking.start())()
        (lambda: rare.start())()
        roots["both"] = watch_root()
        marking.stop()
        roots["rare alone"] = watch_root()
        rare.stop()

    def two_rare() -> None:
        first = greenprof.Profiler(min_duration=1e-9)
        second = greenprof.Profiler(min_duration=1e-9)
        (lambda: first.start())()
        roots["first"] = watch_root()
        (lambda: second.start())()  # another call site in the same root frame
        roots["second"] = watch_root()
        roots["node"] = sys._getframe().f_trace
        second.stop()
        first.stop()

    glet = greenlet.greenlet(lambda: (_served(8, marking_first), _served(8, two_rare)))
    glet.switch()
    assert glet.dead
    assert roots["both"] is not None
    assert roots["rare alone"] is roots["both"]  # the rare one's, kept
    assert roots["first"] is not None
    assert roots["second"] is roots["first"]
    assert roots["node"] is roots["first"][0]  # still in the root frame


def _started(box: dict[str, Any]) -> None:
    """Start a min_duration profiler into ``box``: a hook that returns."""
    box["profiler"] = greenprof.Profiler(min_duration=1e-9)
    box["profiler"].start()


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_a_min_duration_sessions_walks_stop_at_the_frame_under_its_caller() -> None:
    # The frames under that one stay as start() found them while it runs:
    # every switch-out takes the very raw stack start() walked for them.
    main = greenlet.getcurrent()
    seen: list[Any] = []

    def request() -> None:
        with greenprof.profile(min_duration=1e-9) as profiler:
            _waits(4, main, 3)
        seen.append(profiler)

    counter, (root, _, _), raws = _serve(12, request)
    assert root is not None
    node, below, _ = root
    assert node.code is _served.__code__  # the frame under request()'s
    assert height(below) >= 12
    assert len(raws) == 3
    # The frames above the root, then the root, then what start() walked.
    for raw in raws:
        chain = []
        while raw is not None:
            chain.append(raw)
            raw = raw[-1]
        assert any(part is below for part in chain)
        assert len([part for part in chain if part is not below]) <= 2  # then a top's node
    (profiler,) = seen
    outs = [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
    assert outs == counter.stacks


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_a_walk_that_cannot_reach_its_root_within_max_depth_keeps_the_innermost_frames() -> None:
    main = greenlet.getcurrent()
    seen: list[Any] = []

    def request() -> None:
        with greenprof.profile(min_duration=1e-9, max_depth=20) as profiler:
            _waits(2, main, 1)  # root reachable: 5 frames above it
            _waits(25, main, 1)  # not within 20 frames: the innermost 20
        seen.append(profiler)

    counter, (root, _, _), _ = _serve(8, request)
    assert root is not None
    (profiler,) = seen
    outs = [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
    assert [len(out) for out in outs] == [len(counter.stacks[0]), 20]
    assert outs == [counter.stacks[0], counter.stacks[1][-20:]]


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_no_root_where_another_tool_set_f_trace_or_in_a_generator() -> None:
    def tool(frame: FrameType, event: str, arg: Any) -> None:
        return None

    def caller_of(callee: Any) -> Any:
        return callee()

    def here() -> Any:
        return _root_at(sys._getframe(), 128)

    assert caller_of(here) is not None  # the frame under here(): caller_of's
    assert caller_of(here) is not None  # found marked the second time: the same

    def traced_root() -> Any:
        frame = sys._getframe()
        frame.f_trace = tool
        try:
            return here()
        finally:
            assert frame.f_trace is tool  # left alone

    assert traced_root() is None

    def generator() -> Iterator[Any]:
        yield here()

    assert next(generator()) is None
    assert _root_at(sys._getframe(), 3) is None  # a stack cut at max_depth


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_a_walk_down_to_a_root_is_the_whole_walk_for_any_depth() -> None:
    from greenprof._stack import start_walk, walk_to_root, walk_whole

    formatter = FrameFormatter()
    rng = random.Random(5)
    rooted = 0
    for _ in range(300):
        under, above, depth = rng.randint(0, 20), rng.randint(1, 30), rng.randint(1, 60)
        walks: list[Any] = []

        def at_root(depth: int = depth, above: int = above, walks: list[Any] = walks) -> None:
            def make_root() -> Any:
                caller = sys._getframe()
                whole = walk_whole(caller, depth)
                for read in (False, True):
                    start, root = start_walk(caller, depth, read)
                    # The same frames (the top one on another line here).
                    started, walked = formatter.frames(start), formatter.frames(whole)
                    assert started[:-1] == walked[:-1]
                    assert started[-1].function == walked[-1].function
                return root

            root = make_root()

            def top() -> None:
                frame = sys._getframe()
                if root is not None:
                    walks.append((walk_whole(frame, depth), walk_to_root(frame, depth, root)))

            _served(above, top)

        _served(under, at_root)
        for whole, to_root in walks:
            rooted += 1
            assert height(to_root) == height(whole) == min(depth, height(whole))
            assert formatter.frames(to_root) == formatter.frames(whole)
    assert rooted > 30  # the rest: stacks cut at depth, or too few frames under the root


def _inherit_f_trace(frame: FrameType, event: str, arg: Any) -> Any:
    """A tracer that gives each new frame its caller's ``f_trace``, as some do."""
    if event == "call" and frame.f_back is not None:
        return frame.f_back.f_trace
    return None


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_a_root_node_copied_into_a_callee_is_not_the_root() -> None:
    main = greenlet.getcurrent()
    box: dict[str, Any] = {}

    def callee() -> None:
        main.switch()

    def handler() -> None:  # the root: _started() is the frame that starts the session
        _started(box)
        sys.settrace(_inherit_f_trace)
        try:
            callee()  # its f_trace: the root's node
        finally:
            sys.settrace(None)
        box["profiler"].stop()

    counter, _, _ = _serve(6, handler)
    outs = [short(s.stack) for s in box["profiler"].snapshots if s.event == "switch_out"]
    assert [name for _, name, _ in outs[0][-2:]] == ["handler", "callee"]
    assert outs == counter.stacks


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_a_start_walk_takes_no_root_node_copied_from_the_roots_caller() -> None:
    def here() -> Any:
        return _root_at(sys._getframe(), 128)

    def root() -> Any:  # its f_trace: outer()'s node, copied at its call
        return here()

    def outer() -> Any:
        assert here() is not None  # marks outer()'s frame
        assert type(sys._getframe().f_trace) is StackNode
        sys.settrace(_inherit_f_trace)
        try:
            return root()
        finally:
            sys.settrace(None)

    assert _served(6, outer) is None


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_no_root_for_a_stack_cut_at_max_depth() -> None:
    from greenprof._stack import MIN_UNDER_ROOT

    def here(depth: int) -> Any:
        return _root_at(sys._getframe(), depth)

    deep_enough = MIN_UNDER_ROOT + 4
    assert _served(20, lambda: here(200)) is not None
    assert _served(20, lambda: here(deep_enough)) is None  # 20 frames: cut


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_a_root_that_returned_is_let_go_and_stacks_stay_exact() -> None:
    # Started from a hook that returns (Flask's before_request, say): the
    # root is the hook's caller, which returns too. The first walk that
    # reaches the bottom without meeting it lets it go: whole walks after,
    # without looking for it.
    main = greenlet.getcurrent()
    box: dict[str, Any] = {}

    def preprocess() -> None:
        _started(box)

    def handler() -> None:
        preprocess()  # the root: returned by the time anything waits
        _waits(3, main, 2)
        box["profiler"].stop()

    counter, (root, gone, gone_roots), _ = _serve(6, handler)
    assert root is None
    assert gone == 1  # set aside, not freed, by the tracer
    assert gone_roots == []  # freed by stop()
    outs = [short(s.stack) for s in box["profiler"].snapshots if s.event == "switch_out"]
    assert outs == counter.stacks


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_a_truncated_walk_to_a_root_is_never_marked_whole_for_a_deeper_session() -> None:
    # Waiting at one place again and again, 30 frames above its root with a
    # max_depth of 20: the node for its top frame must not claim those 20
    # frames are the whole stack, or a deeper session joining records them.
    main = greenlet.getcurrent()

    def request() -> None:
        with greenprof.profile(min_duration=1e-9, max_depth=20):
            _waits(30, main, 6)

    glet = greenlet.greenlet(lambda: _served(8, request))
    counter = SwitchCounter(glet)
    counter.install()
    try:
        for _ in range(4):
            glet.switch()
        with greenprof.profile(glet, max_depth=500) as deep:
            while not glet.dead:
                glet.switch()
    finally:
        counter.uninstall()
    outs = [short(s.stack) for s in deep.snapshots if s.event == "switch_out"]
    assert outs
    assert outs == counter.stacks[4 : 4 + len(outs)]


class DepthsScript(SessionScript):
    """The script, each session with a ``min_duration`` and a random
    ``max_depth``, nested in one greenlet: roots of sessions of every depth."""

    def __init__(self, seed: int, steps: int, main: greenlet.greenlet, counter: Any) -> None:
        super().__init__(seed, steps, main, counter)
        self.rng = random.Random(seed + 77)

    def session_options(self) -> dict[str, Any]:
        return {"min_duration": 1e-9, "max_depth": self.rng.choice([3, 6, 9, 12, 20, 30, 128])}


@pytest.mark.skipif(not MARKS, reason="whole walks stop at a root from 3.12")
def test_nested_sessions_of_every_depth_record_the_stacks_traceback_sees() -> None:
    checked = 0
    for seed in range(3):
        script, counter = _run_script(DepthsScript, seed, {})
        for profiler, first, last in script.sessions:
            max_depth = script.depths[id(profiler)]
            got = [short(s.stack) for s in profiler.snapshots if s.event == "switch_out"]
            assert got == [stack[-max_depth:] for stack in counter.stacks[first:last]]
            checked += len(got)
    assert checked > 500
