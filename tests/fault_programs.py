"""Random gevent and greenlet programs for the fault-injection test, and the
greenprof sessions that one of their runs starts and stops as it goes.

``Program(seed)`` draws a program: greenlets that sleep, idle,
wait on events, queues and async results, spawn and join children, kill
each other (before they ran, too), raise and catch, exit early, drive raw
greenlets (switch, throw, sibling switches, greenlets dropped while
suspended), recurse, step generators and free objects whose finalizers log.
Everything it will do is drawn up front, the greenprof calls included, so a
profiled and an unprofiled run of one seed execute the same steps.

``execute(program, profiled=...)`` runs it in a fresh OS thread (a hub of
its own, nothing left over from other tests) with the cyclic garbage
collector off, so that objects are freed by reference counting alone: at
the same point of both runs, unless something holds on to them. Every step
appends what the program saw to ``Outcome.trace``; the greenprof calls
append nothing (``profiled=False`` skips them).
"""

from __future__ import annotations

import gc
import logging
import math
import random
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import gevent.queue
import greenlet

import greenprof
from greenprof import Profiler, ProfileScope, Snapshot
from greenprof._dispatcher import installed_dispatcher
from greenprof._options import Options
from greenprof._threads import thread_ident
from greenprof.sinks import MemorySink

Step = tuple[Any, ...]
Entry = tuple[Any, ...]

#: How long one run may take before it counts as a hang.
RUN_TIMEOUT = 120.0
#: Rounds of the driver's deadlock breaking before a run counts as a hang.
MAX_UNSTICKS = 20_000


class Boom(ValueError):
    """What the program raises itself."""


class Halt(Exception):
    """What ``kill()`` throws when it is not ``GreenletExit``."""


class EarlyExit(Exception):
    """Leaves a greenlet's steps with a value, from any depth."""

    def __init__(self, value: object) -> None:
        super().__init__(value)
        self.value = value


#: Exceptions whose arguments are the program's own (logged whole); for any
#: other only the type is logged (gevent's messages carry addresses).
OWN_EXCEPTIONS = (Boom, Halt, EarlyExit, greenlet.GreenletExit)


# -- drawing a program ---------------------------------------------------------------


class Program:
    """Everything one seed's program will do, greenprof calls included."""

    def __init__(self, seed: int, *, greenlets: tuple[int, int] = (10, 60)) -> None:
        self.seed = seed
        rng = random.Random(seed)
        #: Plain greenlets only: no gevent, no hub; the thread's main
        #: greenlet drives them all.
        self.plain = rng.random() < 0.2
        self.events = rng.randint(1, 4)
        self.queues = [rng.choice([None, None, 1, 2]) for _ in range(rng.randint(1, 3))]
        self.results = rng.randint(1, 2)
        budget = rng.randint(*greenlets)
        top = rng.randint(min(3, budget), max(3, budget // 3))
        builder = _Builder(rng, budget=budget - top, program=self)
        self.top: list[list[Step]] = []
        #: In a plain program: the main greenlet's raw step, driving the top ones.
        self.plain_step: Step = ("raw", [], [], [])
        if self.plain:
            self.plain_step = builder.raw_step(top, drives=rng.randint(3 * top, 8 * top), nest=0)
        else:
            self.top = [builder.greenlet_steps(nest=0) for _ in range(top)]
        self.profilers = [_profiler_options(rng) for _ in range(rng.randint(1, 4))]
        self.scopes = [_profiler_options(rng, scope=True) for _ in range(rng.randint(1, 3))]
        #: What an ``only=`` filter answers for a greenlet (picked by its name).
        self.verdicts = [rng.choice(["keep", "keep", "mute", "raise"]) for _ in range(64)]
        #: Profilers the main greenlet starts on itself before anything runs
        #: and that no step stops: with ``follow_*`` they record the whole
        #: program.
        self.lasting = [_profiler_options(rng, lasting=True) for _ in range(rng.randint(0, 2))]


_GEVENT_STEPS = {
    "sleep0": 12,
    "idle": 3,
    "set": 3,
    "clear": 1,
    "wait": 3,
    "put": 3,
    "get": 3,
    "get_nowait": 1,
    "ar_set": 1,
    "ar_get": 1,
    "spawn": 7,
    "join": 4,
    "kill": 5,
    "raise_caught": 3,
    "raise": 1,
    "exit": 1,
    "greenlet_exit": 1,
    "recurse": 3,
    "gen": 2,
    "local": 3,
    "guard": 2,
    "raw": 3,
    "name": 1,
    "rename": 1,
    "prof": 9,
    "with": 3,
    "decorated": 3,
}
#: Raw greenlets never wait on gevent: they run only while the greenlet
#: that drives them is inside ``switch()`` or ``throw()``.
_RAW_STEPS: dict[str, int] = {
    "yield": 10,
    "sibling": 2,
    "raise_caught": 3,
    "raise": 1,
    "exit": 1,
    "greenlet_exit": 1,
    "recurse": 3,
    "gen": 1,
    "local": 2,
    "spawn": 1,
    "set": 1,
    "put_nowait": 1,
    "get_nowait": 1,
    "kill": 1,
    "name": 1,
    "raw": 1,
    "prof": 7,
    "with": 2,
    "decorated": 2,
}
#: In a program without gevent.
_PLAIN_STEPS = {
    kind: weight
    for kind, weight in _RAW_STEPS.items()
    if kind not in ("spawn", "set", "put_nowait", "get_nowait", "kill", "name")
}
_TERMINAL = {"raise", "exit", "greenlet_exit"}
#: Steps that hold other steps.
_NESTING = {"recurse", "gen", "local", "guard", "with", "decorated"}
_PROFILER_OPS = {
    "start": 6,
    "stop": 4,
    "flush": 1,
    "read": 2,
    "scope_start": 2,
    "scope_stop": 2,
    "add_sink": 1,
}


class _Builder:
    def __init__(self, rng: random.Random, *, budget: int, program: Program) -> None:
        self.rng = rng
        self.budget = budget
        self.program = program
        self.labels = 0
        self.raw_depth = 0

    def raw_step(self, count: int, *, drives: int, nest: int) -> Step:
        """Make ``count`` raw greenlets, switch into them or throw into them
        ``drives`` times, then end, drop or leave each."""
        rng = self.rng
        self.raw_depth += 1
        try:
            kids = [
                self.steps(rng.randint(1, 6), raw=True, nest=nest, frames=2 * nest)
                for _ in range(count)
            ]
        finally:
            self.raw_depth -= 1
        drive = []
        for _ in range(drives):
            action = rng.choices(["switch", "throw"], weights=[5, 1])[0]
            kind_of_throw = rng.choice(["halt", "boom", "exit"])
            drive.append((action, rng.randrange(count), self.label(), kind_of_throw))
        ends = [rng.choice(["throw", "abandon", "leave"]) for _ in kids]
        return ("raw", kids, drive, ends)

    def label(self) -> int:
        self.labels += 1
        return self.labels

    def greenlet_steps(self, *, nest: int) -> list[Step]:
        return self.steps(self.rng.randint(2, 10), raw=False, nest=nest, frames=0)

    def steps(self, count: int, *, raw: bool, nest: int, frames: int) -> list[Step]:
        steps: list[Step] = []
        for _ in range(count):
            step = self.step(raw=raw, nest=nest, frames=frames)
            steps.append(step)
            if step[0] in _TERMINAL:
                break
        return steps

    def step(self, *, raw: bool, nest: int, frames: int) -> Step:
        rng = self.rng
        table = (_PLAIN_STEPS if self.program.plain else _RAW_STEPS) if raw else _GEVENT_STEPS
        kind = rng.choices(list(table), weights=list(table.values()))[0]
        if kind in _NESTING and nest >= 3:
            kind = "yield" if raw else "sleep0"
        if kind == "spawn" and self.budget <= 0:
            kind = "yield" if raw else "sleep0"
        if kind == "raw" and self.raw_depth >= 2:
            kind = "yield" if raw else "sleep0"
        program = self.program

        def inner(count: int = 3, extra_frames: int = 1) -> list[Step]:
            return self.steps(
                rng.randint(1, count), raw=raw, nest=nest + 1, frames=frames + extra_frames
            )

        if kind in ("set", "clear", "wait"):
            return (kind, rng.randrange(program.events))
        if kind in ("put", "put_nowait"):
            return (kind, rng.randrange(len(program.queues)), self.label())
        if kind in ("get", "get_nowait"):
            return (kind, rng.randrange(len(program.queues)))
        if kind == "ar_set":
            return (kind, rng.randrange(program.results), self.label(), rng.random() < 0.3)
        if kind == "ar_get":
            return (kind, rng.randrange(program.results))
        if kind == "spawn":
            self.budget -= 1
            how = rng.choice(["spawn", "spawn", "spawn", "start", "unstarted_kill", "spawn_kill"])
            return (kind, self.greenlet_steps(nest=nest), how, _kill_kind(rng), rng.random() < 0.5)
        if kind == "join":
            how = rng.choice(["join", "join", "get", "joinall"])
            return (kind, [rng.randrange(1000) for _ in range(rng.randint(1, 3))], how)
        if kind == "kill":
            block = False if raw else rng.random() < 0.5
            return (kind, rng.randrange(1000), _kill_kind(rng), block)
        if kind in ("raise_caught", "raise"):
            return (kind, self.label(), rng.choice([0, 0, 1, 5, 20]))
        if kind in ("exit", "greenlet_exit", "rename"):
            return (kind, self.label())
        if kind == "recurse":
            # Varied depths: past small max_depth values, and deep enough that
            # a walk's limit and 3.12's marks both matter, within the
            # interpreter's recursion limit however blocks nest.
            depth = rng.choice([1, 2, 3, 8, 30, 60, 120])
            depth = min(depth, max(0, 400 - frames))
            return (kind, depth, inner(extra_frames=depth))
        if kind == "gen":
            count = rng.randint(1, 4)
            return (kind, self.label(), count, inner(2), rng.randrange(count + 1))
        if kind == "local":
            return (kind, self.label(), inner())
        if kind == "guard":
            return (kind, inner())
        if kind == "raw":
            return self.raw_step(rng.randint(1, 3), drives=rng.randint(1, 10), nest=nest + 1)
        if kind == "yield":
            return (kind, self.label(), rng.random() < 0.3)
        if kind == "sibling":
            return (kind, rng.randrange(3), self.label())
        if kind == "name":
            return (kind, rng.randrange(1000))
        if kind == "prof":
            op = rng.choices(list(_PROFILER_OPS), weights=list(_PROFILER_OPS.values()))[0]
            target = -1 if rng.random() < 0.4 else rng.randrange(1000)
            return (kind, op, rng.randrange(1000), target, rng.randrange(1000))
        if kind == "with":
            target = -1 if rng.random() < 0.7 else rng.randrange(1000)
            return (kind, rng.randrange(1000), target, inner())
        if kind == "decorated":
            return (kind, rng.randrange(1000), inner(extra_frames=2), self.label())
        return (kind,)


def _kill_kind(rng: random.Random) -> str:
    return rng.choice(["exit", "exit", "halt", "halt_class"])


def _profiler_options(
    rng: random.Random, *, scope: bool = False, lasting: bool = False
) -> dict[str, Any]:
    # A lasting profiler records the whole program: keep most of it.
    mode = rng.choices(["greenlet", "hybrid", "thread"], weights=[6, 2, 0 if lasting else 1])[0]
    options: dict[str, Any] = {
        "mode": mode,
        "max_snapshots": rng.choice([50, 10_000] if lasting else [1, 2, 5, 50, 10_000]),
        "max_depth": rng.choice([1, 2, 5, 16, 128, 1000]),
        "min_duration": 0.0 if lasting else rng.choice([0.0, 0.0, 0.0, 1e-4, 10.0, math.inf]),
        "dump_period": rng.choice([0.001, 0.002, 0.005]),
        "flush_timeout": rng.choice([0.0, 1.0, None]),
        "keep_snapshots": rng.random() < 0.8,
        "tags": {"seed": "fault"} if rng.random() < 0.3 else None,
        "sinks": rng.choice([[], ["memory"], ["raising"], ["memory", "flaky"], ["flaky"]]),
    }
    if mode != "thread":
        follow = rng.choice(["spawned", "all"] if lasting else ["none", "none", "spawned", "all"])
        options["follow_spawned"] = follow == "spawned"
        options["follow_all"] = follow == "all"
        options["only"] = rng.random() < 0.25
    if scope:
        options["bare"] = rng.random() < 0.2  # @greenprof.profile with no arguments
    return options


# -- sinks -----------------------------------------------------------------------------


class RaisingSink:
    """A sink whose collector is always down."""

    def __init__(self) -> None:
        self.calls = 0

    def export(self, batch: object) -> None:
        self.calls += 1
        raise RuntimeError("the collector is down")

    def export_sessions(self, sessions: object) -> None:
        raise RuntimeError("the collector is down")

    def flush(self, timeout: float | None = None) -> bool:
        return False

    def close(self) -> None:
        pass


class FlakySink(MemorySink):
    """Every other ``export`` fails; what failed comes again later."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def export(self, batch: Any) -> None:
        self.calls += 1
        if self.calls % 2:
            raise OSError("the network hiccuped")
        super().export(batch)


def _flush_timeout(sinks: list[Any]) -> float:
    """A timeout for a flush of ``sinks`` mid-flight that lets no other
    greenlet run: a flush waits for a sink flushed in a thread of its own
    (``RaisingSink``) cooperatively, and the program's other greenlets run
    meanwhile, as they would during any gevent wait: another schedule than
    the unprofiled run's. Flushes of sinks that flush in place (the memory
    ones) and flushes of zero seconds never switch."""
    if all(getattr(sink, "flush_never_blocks", False) for sink in sinks):
        return 1.0
    return 0.0


def _make_sinks(kinds: list[str]) -> list[Any]:
    made = {"memory": MemorySink, "raising": RaisingSink, "flaky": FlakySink}
    return [made[kind]() for kind in kinds]


# -- running it ------------------------------------------------------------------------


class Actor:
    """One greenlet of the program, as the program knows it."""

    __slots__ = ("name", "raw", "raw_sessions", "ref", "session", "spawned", "waiting")

    def __init__(self, name: str, *, raw: bool = False) -> None:
        self.name = name
        self.raw = raw
        self.ref: Callable[[], greenlet.greenlet | None] = lambda: None
        #: What it blocks on now, for the driver to resolve if all block.
        self.waiting: tuple[str, int] | None = None
        self.spawned = 0
        self.raw_sessions: list[RawSession] = []
        #: A raw greenlet's siblings, and itself.
        self.session: RawSession | None = None


class RawSession:
    """Raw greenlets one greenlet made and drives (their parent)."""

    __slots__ = ("kids",)

    def __init__(self) -> None:
        self.kids: list[greenlet.greenlet | None] = []


class Token:
    """A local object whose finalizer the program observes."""

    __slots__ = ("elsewhere", "label", "thread", "trace")

    def __init__(self, outcome: Outcome, label: int) -> None:
        self.trace = outcome.trace
        self.elsewhere = outcome.freed_elsewhere
        self.label = label
        self.thread = threading.get_ident()

    def __del__(self) -> None:
        self.trace.append(("~", "freed", self.label))
        if threading.get_ident() != self.thread:
            self.elsewhere.append(self.label)


class Outcome:
    """What one run left: the program's trace, and for a profiled run what
    greenprof recorded and any problem found while it ran."""

    def __init__(self) -> None:
        self.trace: list[Entry] = []
        self.problems: list[str] = []
        self.error: str | None = None
        self.profiling: Profiling | None = None
        #: ``id()`` -> name of every greenlet of the run (see ``reused``).
        self.names: dict[int, str] = {}
        #: ``id()`` of a greenlet -> ``id()`` of the greenlet that spawned it.
        self.spawners: dict[int, int] = {}
        self.hub_id = 0
        self.main_id = 0
        #: ``id()`` values that named two greenlets (a dropped raw greenlet's,
        #: reused): what the checks know of them is ambiguous.
        self.reused: set[int] = set()
        #: Labels of tokens freed in another thread than the run's: by
        #: greenprof's sampling thread, which held a frame that referred to
        #: one as the frame's call returned (see ``SAMPLER_HELD``).
        self.freed_elsewhere: list[int] = []


class Execution:
    """One run of a program, in the calling OS thread."""

    def __init__(self, program: Program, outcome: Outcome, *, profiled: bool) -> None:
        self.program = program
        self.outcome = outcome
        self.trace = outcome.trace
        self.profiled = profiled
        self.actors: list[Actor] = []
        #: Every gevent greenlet made, in order: kept alive for the run, so
        #: ``id()`` names one greenlet throughout.
        self.glets: list[gevent.Greenlet] = []
        #: Raw greenlets, held weakly: some are dropped while suspended.
        self.raw_refs: list[weakref.ref[greenlet.greenlet]] = []
        self.labels = 0
        #: The thread's hub; None in a plain program.
        self.hub: Any = None
        self.events: list[Any] = []
        self.queues: list[Any] = []
        self.results: list[Any] = []
        self.profiling: Profiling | None = None

    # -- the program's side ----------------------------------------------------

    def log(self, actor: Actor, *entry: Any) -> None:
        self.trace.append((actor.name, *entry))

    def run(self) -> None:
        program = self.program
        self.main = greenlet.getcurrent()
        self.outcome.main_id = id(self.main)
        self.outcome.names[id(self.main)] = "main"
        self.driver = Actor("driver")
        if not program.plain:
            self.hub = gevent.get_hub()
            self.outcome.hub_id = id(self.hub)
            self.outcome.names[id(self.hub)] = "hub"
            self.hub.handle_error = self.hub_error
            self.events = [gevent.event.Event() for _ in range(program.events)]
            self.queues = [gevent.queue.Queue(size) for size in program.queues]
            self.results = [gevent.event.AsyncResult() for _ in range(program.results)]
        if self.profiled:
            self.profiling = self.outcome.profiling = Profiling(self)
        else:
            self.profiling = None
        try:
            if self.profiling is not None:
                self.profiling.start_lasting()
            if program.plain:
                self.run_steps(self.driver, [program.plain_step])
            else:
                for steps in program.top:
                    self.spawn(self.driver, steps, "spawn", "exit", False)
                self.drive()
            self.end_leftovers()
            self.final_state()
        finally:
            if self.profiling is not None:
                self.profiling.finish()
        # What happens as the thread and its hub go is not the program's.
        self.outcome.trace = list(self.trace)
        self.outcome.freed_elsewhere = list(self.outcome.freed_elsewhere)

    def release(self) -> Any:
        """Let go of the run as its thread ends; the hub, if any, to destroy.

        Destroying it throws ``LoopExit`` through the frames that called
        ``destroy()``, and gevent keeps that exception (and so those frames)
        alive: by then they must hold nothing of the run."""
        self.glets.clear()
        self.actors.clear()
        self.raw_refs.clear()
        self.events = self.queues = self.results = []
        if self.profiling is not None:
            self.profiling.execution = None  # type: ignore[assignment]
        hub, self.hub = self.hub, None
        if hub is not None:
            del hub.handle_error
        return hub

    def hub_error(self, context: object, kind: type, value: object, tb: object) -> None:
        name = self.outcome.names.get(id(context), type(context).__name__)
        self.trace.append(("hub", "error", name, describe(value)))
        if context is None or issubclass(kind, self.hub.SYSTEM_ERROR):
            type(self.hub).handle_error(self.hub, context, kind, value, tb)

    def drive(self) -> None:
        """Let the greenlets run; when all of them block, resolve one wait."""
        unsticks = 0
        while True:
            seen = len(self.trace)
            gevent.idle()
            if len(self.trace) != seen:
                continue
            live = [a for a in self.actors if not a.raw and not a.ref().dead]  # type: ignore[union-attr]
            if not live:
                return
            unsticks += 1
            if unsticks > MAX_UNSTICKS:
                msg = "the program never finished"
                raise RuntimeError(msg)
            self.unstick(live)

    def unstick(self, live: list[Actor]) -> None:
        for actor in live:
            if actor.waiting is None:
                continue
            kind, number = actor.waiting
            if kind == "event" and not self.events[number].is_set():
                self.events[number].set()
                self.log(self.driver, "set", number)
                return
            if kind == "get" and self.queues[number].empty():
                self.labels += 1
                self.queues[number].put_nowait(("driver", self.labels))
                self.log(self.driver, "put", number, self.labels)
                return
            if kind == "put" and self.queues[number].full():
                self.log(self.driver, "took", number, describe(self.queues[number].get_nowait()))
                return
            if kind == "result" and not self.results[number].ready():
                self.results[number].set(("driver",))
                self.log(self.driver, "result", number)
                return
        victim = next((a for a in live if a.waiting is not None), live[0])
        self.log(self.driver, "kill", victim.name)
        victim.ref().kill(block=False)  # type: ignore[union-attr]

    def end_leftovers(self) -> None:
        """End the raw greenlets still suspended: a greenlet that drove one
        may have ended first, and one dropped may still be held (by an
        exception's traceback, say). Their ``with`` blocks and decorated
        calls end with them."""
        current = greenlet.getcurrent()
        for actor in self.actors:
            kid = actor.ref()
            if actor.raw and kid is not None and not kid.dead:
                kid.parent = current  # its own may be gone: come back here
                self.log(
                    self.driver, "ended", actor.name, describe(kid.throw(greenlet.GreenletExit))
                )
            del kid

    def final_state(self) -> None:
        for actor in self.actors:
            glet = actor.ref()
            if actor.raw:
                self.log(actor, "final", glet is None or glet.dead)
                continue
            assert glet is not None
            self.log(
                actor,
                "final",
                glet.dead,
                glet.successful(),
                describe(glet.value),
                describe(glet.exception),
            )
        if self.program.plain:
            return
        self.log(self.driver, "events", [event.is_set() for event in self.events])
        self.log(self.driver, "queues", [describe(tuple(q.queue)) for q in self.queues])
        self.log(
            self.driver,
            "results",
            [(r.ready(), describe(r.value), describe(r.exception)) for r in self.results],
        )

    def register(self, actor: Actor, glet: greenlet.greenlet) -> None:
        if id(glet) in self.outcome.names:
            self.outcome.reused.add(id(glet))
        self.outcome.names[id(glet)] = actor.name
        self.outcome.spawners[id(glet)] = id(greenlet.getcurrent())
        self.actors.append(actor)

    def new_actor(self, parent: Actor, *, raw: bool) -> Actor:
        parent.spawned += 1
        prefix = "" if parent is self.driver else f"{parent.name}."
        name = f"{prefix}{'r' if raw else 'g'}{parent.spawned}"
        return Actor(name, raw=raw)

    def spawn(self, parent: Actor, steps: list[Step], how: str, kill: str, block: bool) -> None:
        actor = self.new_actor(parent, raw=False)
        if how == "spawn" or how == "spawn_kill":
            glet = gevent.spawn(self.body, actor, steps)
        else:
            glet = gevent.Greenlet(self.body, actor, steps)
        actor.ref = weakref.ref(glet)
        self.glets.append(glet)
        self.register(actor, glet)
        self.log(parent, "spawn", actor.name, how)
        if how == "start":
            glet.start()
        elif how in ("spawn_kill", "unstarted_kill"):
            glet.kill(kill_exception(kill, actor.name), block=block)
            self.log(parent, "killed", actor.name, glet.dead)

    def body(self, actor: Actor, steps: list[Step]) -> object:
        self.log(actor, "begin")
        try:
            self.run_steps(actor, steps)
        except EarlyExit as exc:
            self.log(actor, "return", describe(exc.value))
            return exc.value
        finally:
            self.log(actor, "finally")
            self.end_raw_sessions(actor)
        return ("done", actor.name)

    def run_steps(self, actor: Actor, steps: list[Step]) -> None:
        for step in steps:
            getattr(self, "do_" + step[0])(actor, *step[1:])

    def wait_on(self, actor: Actor, what: tuple[str, int], call: Callable[[], Any]) -> Any:
        actor.waiting = what
        try:
            return call()
        finally:
            actor.waiting = None

    # Steps, in the order of _GEVENT_STEPS and _RAW_STEPS.

    def do_sleep0(self, actor: Actor) -> None:
        gevent.sleep(0)
        self.log(actor, "slept")

    def do_idle(self, actor: Actor) -> None:
        self.wait_on(actor, ("idle", 0), gevent.idle)
        self.log(actor, "idled")

    def do_set(self, actor: Actor, number: int) -> None:
        self.events[number].set()
        self.log(actor, "set", number)

    def do_clear(self, actor: Actor, number: int) -> None:
        self.events[number].clear()
        self.log(actor, "clear", number)

    def do_wait(self, actor: Actor, number: int) -> None:
        got = self.wait_on(actor, ("event", number), self.events[number].wait)
        self.log(actor, "waited", number, got)

    def do_put(self, actor: Actor, number: int, label: int) -> None:
        self.wait_on(actor, ("put", number), lambda: self.queues[number].put((actor.name, label)))
        self.log(actor, "put", number, label)

    def do_put_nowait(self, actor: Actor, number: int, label: int) -> None:
        try:
            self.queues[number].put_nowait((actor.name, label))
        except gevent.queue.Full:
            self.log(actor, "full", number)
        else:
            self.log(actor, "put", number, label)

    def do_get(self, actor: Actor, number: int) -> None:
        item = self.wait_on(actor, ("get", number), self.queues[number].get)
        self.log(actor, "got", number, describe(item))

    def do_get_nowait(self, actor: Actor, number: int) -> None:
        try:
            item = self.queues[number].get_nowait()
        except gevent.queue.Empty:
            self.log(actor, "empty", number)
        else:
            self.log(actor, "got", number, describe(item))

    def do_ar_set(self, actor: Actor, number: int, label: int, failure: bool) -> None:
        if failure:
            self.results[number].set_exception(Boom(actor.name, label))
        else:
            self.results[number].set((actor.name, label))
        self.log(actor, "ar_set", number, label, failure)

    def do_ar_get(self, actor: Actor, number: int) -> None:
        try:
            got = self.wait_on(actor, ("result", number), self.results[number].get)
        except Boom as exc:
            self.log(actor, "ar_raised", number, describe(exc))
        else:
            self.log(actor, "ar_got", number, describe(got))

    def do_spawn(self, actor: Actor, steps: list[Step], how: str, kill: str, block: bool) -> None:
        self.spawn(actor, steps, how, kill, block)

    def do_join(self, actor: Actor, picks: list[int], how: str) -> None:
        current = greenlet.getcurrent()
        targets = [self.glets[pick % len(self.glets)] for pick in picks]
        targets = [glet for glet in targets if glet is not current]
        names = [self.outcome.names[id(glet)] for glet in targets]
        if not targets:
            self.log(actor, "join_nothing")
            return
        if how == "joinall":
            done = self.wait_on(actor, ("join", 0), lambda: gevent.joinall(targets))
            self.log(actor, "joined_all", names, len(done))
            return
        target = targets[0]
        if how == "get":
            try:
                value = self.wait_on(actor, ("join", 0), target.get)
            except (Boom, Halt) as exc:
                self.log(actor, "get_raised", names[0], describe(exc))
            else:
                self.log(actor, "get", names[0], describe(value))
            return
        self.wait_on(actor, ("join", 0), target.join)
        self.log(
            actor,
            "joined",
            names[0],
            target.dead,
            target.successful(),
            describe(target.value),
            describe(target.exception),
        )

    def do_kill(self, actor: Actor, pick: int, kind: str, block: bool) -> None:
        target = self.glets[pick % len(self.glets)]
        name = self.outcome.names[id(target)]
        self.log(actor, "kill", name, kind, block)
        exception = kill_exception(kind, actor.name)
        self.wait_on(actor, ("kill", 0), lambda: target.kill(exception, block=block))
        self.log(actor, "killed", name, target.dead)

    def do_raise_caught(self, actor: Actor, label: int, depth: int) -> None:
        try:
            _raise_at(depth, Boom(actor.name, label))
        except Boom as exc:
            self.log(actor, "caught", describe(exc))

    def do_raise(self, actor: Actor, label: int, depth: int) -> None:
        self.log(actor, "raise", label)
        _raise_at(depth, Boom(actor.name, label))

    def do_exit(self, actor: Actor, label: int) -> None:
        raise EarlyExit((actor.name, label))

    def do_greenlet_exit(self, actor: Actor, label: int) -> None:
        self.log(actor, "greenlet_exit", label)
        raise greenlet.GreenletExit(actor.name, label)

    def do_recurse(self, actor: Actor, depth: int, steps: list[Step]) -> None:
        self.descend(actor, depth, steps)
        self.log(actor, "climbed", depth)

    def descend(self, actor: Actor, depth: int, steps: list[Step]) -> None:
        if depth:
            self.descend(actor, depth - 1, steps)
        else:
            self.run_steps(actor, steps)

    def do_gen(self, actor: Actor, label: int, count: int, steps: list[Step], stop: int) -> None:
        def produce() -> Iterator[int]:
            try:
                for number in range(count):
                    self.run_steps(actor, steps)
                    yield number
            finally:
                self.log(actor, "gen_finally", label)

        values = produce()
        for value in values:
            self.log(actor, "gen_value", label, value)
            if value == stop:
                break
        del values  # closed now, if it did not end
        self.log(actor, "gen_done", label)

    def do_local(self, actor: Actor, label: int, steps: list[Step]) -> None:
        token = Token(self.outcome, label)  # noqa: F841 - freed when this call returns
        self.run_steps(actor, steps)
        self.log(actor, "local_end", label)

    def do_guard(self, actor: Actor, steps: list[Step]) -> None:
        try:
            self.run_steps(actor, steps)
        except Halt as exc:
            self.log(actor, "guard_caught", describe(exc))

    def do_name(self, actor: Actor, pick: int) -> None:
        # gevent makes a name up when first asked (Greenlet-N, numbered in
        # the order greenlets are asked): greenprof must never ask.
        target = self.glets[pick % len(self.glets)]
        self.log(actor, "name", self.outcome.names[id(target)], target.name)

    def do_rename(self, actor: Actor, label: int) -> None:
        greenlet.getcurrent().name = f"named-{label}"
        self.log(actor, "renamed", label)

    def do_prof(self, actor: Actor, op: str, handle: int, target: int, extra: int) -> None:
        if self.profiling is not None:
            self.profiling.call(actor, op, handle, target, extra)

    def do_with(self, actor: Actor, scope: int, target: int, steps: list[Step]) -> None:
        profiling = self.profiling
        made = profiling.scope_for(scope, target) if profiling is not None else None
        if made is None:
            self.run_steps(actor, steps)
            self.log(actor, "block_done")
            return
        handle = None
        try:
            with made[0] as profiler:
                handle = made[1](profiler)
                self.run_steps(actor, steps)
        finally:
            if handle is not None:
                handle.check_stats()
        self.log(actor, "block_done")

    def do_decorated(self, actor: Actor, scope: int, steps: list[Step], label: int) -> None:
        call = self.decorated_body
        if self.profiling is not None:
            call = self.profiling.decorated(scope)
        self.log(actor, "decorated_returned", describe(call(actor, steps, label)))

    def decorated_body(self, actor: Actor, steps: list[Step], label: int) -> object:
        self.run_steps(actor, steps)
        return ("decorated", label)

    # Raw greenlets.

    def do_raw(
        self, actor: Actor, kids: list[list[Step]], drive: list[Step], ends: list[str]
    ) -> None:
        session = RawSession()
        actor.raw_sessions.append(session)
        for steps in kids:
            kid_actor = self.new_actor(actor, raw=True)
            kid_actor.session = session
            # The run holds only what the greenlet's own frames hold (the
            # session, not the greenlet): dropping it from the session
            # frees it, as a program that forgets a greenlet would.
            kid = greenlet.greenlet(_RawRun(self, kid_actor, steps, session))
            kid_actor.ref = weakref.ref(kid)
            self.raw_refs.append(kid_actor.ref)
            self.register(kid_actor, kid)
            session.kids.append(kid)
            self.log(actor, "raw", kid_actor.name)
            del kid
        for action, number, label, kind in drive:
            self.drive_kid(actor, session, action, number % len(session.kids), label, kind)
        for number, end in enumerate(ends):
            if end == "throw":
                self.end_kid(actor, session, number)
            elif end == "abandon":
                name = self.kid_name(session, number)
                session.kids[number] = None  # suspended ones are killed as they are freed
                self.log(actor, "abandoned", name)
        if all(kid is None or kid.dead for kid in session.kids):
            actor.raw_sessions.remove(session)

    def kid_name(self, session: RawSession, number: int) -> str | None:
        kid = session.kids[number]
        return None if kid is None else self.outcome.names[id(kid)]

    def drive_kid(
        self, actor: Actor, session: RawSession, action: str, number: int, label: int, kind: str
    ) -> None:
        kid = session.kids[number]
        if kid is None:
            self.log(actor, "gone", number)
            return
        name = self.outcome.names[id(kid)]
        try:
            if action == "switch":
                got = kid.switch((actor.name, label))
            else:
                got = kid.throw(kill_exception(kind, actor.name))
        except (Boom, Halt) as exc:
            self.log(actor, action + "_raised", name, describe(exc))
        else:
            self.log(actor, action + "_got", name, describe(got))

    def end_kid(self, actor: Actor, session: RawSession, number: int) -> None:
        kid = session.kids[number]
        if kid is None or kid.dead:
            return
        name = self.outcome.names[id(kid)]
        got = kid.throw(greenlet.GreenletExit)
        self.log(actor, "ended", name, describe(got))

    def end_raw_sessions(self, actor: Actor) -> None:
        while actor.raw_sessions:
            session = actor.raw_sessions.pop()
            for number in range(len(session.kids)):
                self.end_kid(actor, session, number)

    def raw_body(self, actor: Actor, steps: list[Step], session: RawSession, first: object) -> Any:
        self.log(actor, "raw_begin", describe(first))
        try:
            self.run_steps(actor, steps)
        except EarlyExit as exc:
            self.log(actor, "return", describe(exc.value))
            return ("returned", exc.value)
        finally:
            self.log(actor, "raw_finally")
            self.end_raw_sessions(actor)
        return ("done", actor.name)

    def do_yield(self, actor: Actor, label: int, catch: bool) -> None:
        # No local refers to the greenlet itself: it may be dropped while
        # suspended here.
        try:
            got = greenlet.getcurrent().parent.switch((actor.name, label))
        except (Boom, Halt) as exc:
            if not catch:
                raise
            self.log(actor, "yield_caught", describe(exc))
        else:
            self.log(actor, "resumed", describe(got))

    def do_sibling(self, actor: Actor, number: int, label: int) -> None:
        kids = actor.session.kids  # type: ignore[union-attr]
        kid = kids[number % len(kids)]
        if kid is None or kid is greenlet.getcurrent():
            self.log(actor, "no_sibling")
            return
        name = self.outcome.names[id(kid)]
        got = kid.switch((actor.name, label))
        del kid
        self.log(actor, "sibling_got", name, describe(got))


class _RawRun:
    """A raw greenlet's ``run``, holding what it needs but not the greenlet."""

    __slots__ = ("actor", "execution", "session", "steps")

    def __init__(
        self, execution: Execution, actor: Actor, steps: list[Step], session: RawSession
    ) -> None:
        self.execution, self.actor, self.steps, self.session = execution, actor, steps, session

    def __call__(self, first: object) -> Any:
        return self.execution.raw_body(self.actor, self.steps, self.session, first)


def kill_exception(kind: str, by: str) -> Any:
    if kind == "halt":
        return Halt(by)
    if kind == "halt_class":
        return Halt
    if kind == "boom":
        return Boom(by)
    return greenlet.GreenletExit


def _raise_at(depth: int, exc: BaseException) -> None:
    if depth:
        _raise_at(depth - 1, exc)
    raise exc


def describe(value: object) -> Any:
    """What the program observes of ``value``: the same in both runs."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(describe(item) for item in value)
    if isinstance(value, BaseException):
        args = describe(value.args) if isinstance(value, OWN_EXCEPTIONS) else ()
        return ("exception", type(value).__name__, args)
    return ("object", type(value).__name__)


# -- the profiler's side -----------------------------------------------------------------


class SessionRecord:
    """A session the program started: enough to tell which greenlets it may record."""

    def __init__(self, session_id: str, options: Options) -> None:
        self.session_id = session_id
        self.options = options
        #: ``id()`` of its targets (0: a thread).
        self.targets: list[int] = []


class Handle:
    """A profiler some greenlet of the program holds, and its sessions."""

    def __init__(self, profiling: Profiling, profiler: Profiler, sinks: list[Any]) -> None:
        self.profiling = profiling
        self.profiler = profiler
        self.sinks = sinks
        self.sessions: list[SessionRecord] = []
        #: The running session's targets, to start none twice.
        self.live: list[weakref.ref[Any]] = []

    def started(self, target: object, new: bool) -> None:
        if new:
            self.sessions.append(SessionRecord(self.profiler.session_id, self.profiler.options))
            self.live = []
        if isinstance(target, threading.Thread):
            self.sessions[-1].targets.append(0)
        else:
            self.sessions[-1].targets.append(id(target))
        self.live.append(weakref.ref(target))

    def is_live_target(self, target: object) -> bool:
        return self.profiler.is_running and any(ref() is target for ref in self.live)

    def check_stats(self) -> None:
        """Its tracer swallowed nothing (as read now: a thread's next session
        starts its counts afresh)."""
        errors = self.profiler.stats.tracer_errors
        if errors:
            self.profiling.problem(f"a profiler's stats say {errors} tracer errors")


class Profiling:
    """The greenprof calls of a profiled run."""

    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        program = execution.program
        self.problems = execution.outcome.problems
        self.only = _Only(execution.outcome, program.verdicts)
        #: The profilers the program's steps start, stop and read.
        self.handles: list[Handle] = []
        for options in program.profilers:
            kwargs, sinks = self.options(options)
            self.handles.append(Handle(self, Profiler(sinks=sinks, **kwargs), sinks))
        #: Those that run from the start to the end.
        self.lasting: list[Handle] = []
        for options in program.lasting:
            kwargs, sinks = self.options(options)
            self.lasting.append(Handle(self, Profiler(sinks=sinks, **kwargs), sinks))
        self.scopes: list[tuple[ProfileScope, dict[str, Any], list[Any]]] = []
        self.decorated_calls: list[Callable[..., Any]] = []
        #: ``id()`` of the greenlets that called a decorated function, per scope.
        self.callers: list[list[int]] = []
        #: Options of each decorated function's sessions.
        self.decorated_options: list[Options] = []
        for options in program.scopes:
            kwargs, sinks = self.options(options)
            scope = greenprof.profile(sinks=sinks, **kwargs)
            self.scopes.append((scope, kwargs, sinks))
            if options["bare"]:
                decorated = greenprof.profile(execution.decorated_body)
                kwargs = {}
            else:
                decorated = scope(execution.decorated_body)
            self.decorated_calls.append(decorated)
            self.decorated_options.append(Options.of(**kwargs))
            self.callers.append([])
        self.trace_before = greenlet.gettrace()

    def every_handle(self) -> list[Handle]:
        return [*self.lasting, *self.handles]

    def start_lasting(self) -> None:
        for handle in self.lasting:
            handle.profiler.start()
            handle.started(greenlet.getcurrent(), True)

    def options(self, drawn: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        kwargs = {k: v for k, v in drawn.items() if k not in ("sinks", "bare")}
        if kwargs.get("only"):
            kwargs["only"] = self.only
        else:
            kwargs.pop("only", None)
        return kwargs, _make_sinks(drawn["sinks"])

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def raw_kids(self) -> list[greenlet.greenlet]:
        return [kid for ref in self.execution.raw_refs if (kid := ref()) is not None]

    def targets(self) -> list[greenlet.greenlet]:
        execution = self.execution
        hub = [] if execution.hub is None else [execution.hub]
        return [execution.main, *hub, *execution.glets, *self.raw_kids()]

    def pick(self, number: int) -> greenlet.greenlet | None:
        """The target ``number`` stands for: None, the calling greenlet."""
        if number < 0:
            return None
        targets = self.targets()
        return targets[number % len(targets)]

    def call(self, actor: Actor, op: str, handle: int, target: int, extra: int) -> None:
        try:
            getattr(self, "op_" + op)(handle, target, extra)
        except Exception:
            self.problem(f"{op} by {actor.name} raised:\n{traceback.format_exc()}")
        self.check_dispatcher(f"after {op} by {actor.name}")

    def check_dispatcher(self, where: str) -> None:
        dispatcher = installed_dispatcher(thread_ident())
        if dispatcher is not None and (dispatcher.errors or dispatcher.previous_errors):
            self.problem(
                f"{where}: the tracer swallowed {dispatcher.errors} errors of its own "
                f"and {dispatcher.previous_errors} of the previous tracer"
            )
            dispatcher.errors = dispatcher.previous_errors = 0  # report each once

    def startable(self, handle: Handle, target: greenlet.greenlet | None) -> bool:
        glet = target if target is not None else greenlet.getcurrent()
        return not glet.dead and not handle.is_live_target(glet)

    def op_start(self, number: int, target: int, extra: int) -> None:
        handle = self.handles[number % len(self.handles)]
        profiler = handle.profiler
        new = not profiler.is_running
        if profiler.mode == "thread" and extra % 3 == 0:
            thread = threading.current_thread()
            if not handle.is_live_target(thread):
                profiler.start(thread)
                handle.started(thread, new)
            return
        glet = self.pick(target)
        if self.startable(handle, glet):
            profiler.start(glet)
            handle.started(glet if glet is not None else greenlet.getcurrent(), new)

    def op_stop(self, number: int, target: int, extra: int) -> None:
        handle = self.handles[number % len(self.handles)]
        if handle.profiler.is_running:
            handle.profiler.stop()
            handle.check_stats()

    def op_flush(self, number: int, target: int, extra: int) -> None:
        if extra % 2:
            scope, _, sinks = self.scopes[number % len(self.scopes)]
            scope.flush(timeout=_flush_timeout(sinks))
        else:
            handle = self.handles[number % len(self.handles)]
            handle.profiler.flush(timeout=_flush_timeout(handle.sinks))

    def op_read(self, number: int, target: int, extra: int) -> None:
        profiler = self.handles[number % len(self.handles)].profiler
        what = extra % 6
        if what == 0:
            len(profiler.snapshots)
        elif what == 1:
            len(profiler.sessions)
        elif what == 2:
            profiler.stats  # noqa: B018 - reading it is the point
        elif what == 3:
            profiler.report()
        elif what == 4:
            len(profiler.bounds)
        else:
            profiler.tags = {"read": str(extra)}

    def op_scope_start(self, number: int, target: int, extra: int) -> None:
        scope, _, sinks = self.scopes[number % len(self.scopes)]
        glet = self.pick(target)
        if glet is not None and glet.dead:
            return
        profiler = scope.start(glet)
        handle = Handle(self, profiler, sinks)
        handle.started(glet if glet is not None else greenlet.getcurrent(), True)
        self.handles.append(handle)

    def op_scope_stop(self, number: int, target: int, extra: int) -> None:
        running = [h for h in self.handles if h.profiler.is_running]
        if running:
            handle = running[number % len(running)]
            handle.profiler.stop()
            handle.check_stats()

    def op_add_sink(self, number: int, target: int, extra: int) -> None:
        handle = self.handles[number % len(self.handles)]
        sink = MemorySink() if extra % 2 else RaisingSink()
        handle.profiler.add_sink(sink)
        handle.sinks.append(sink)

    def scope_for(
        self, number: int, target: int
    ) -> tuple[ProfileScope, Callable[[Profiler], Handle]] | None:
        """A scope to enter for a ``with`` block, and what to call with its profiler."""
        scope, kwargs, sinks = self.scopes[number % len(self.scopes)]
        glet = self.pick(target)
        if glet is greenlet.getcurrent():
            glet = None
        if glet is not None and glet.dead:
            return None
        if glet is not None and glet in self.raw_kids():
            # A scope holds its target, as any object holds what it is
            # given: the block would keep a raw greenlet the program drops
            # alive. (The program's gevent greenlets live all run long.)
            return None
        if glet is not None:
            scope = greenprof.profile(glet, sinks=sinks, **kwargs)
        # Weakly: the block's frame holds this function while it runs.
        who = weakref.ref(glet if glet is not None else greenlet.getcurrent())

        def entered(profiler: Profiler) -> Handle:
            handle = Handle(self, profiler, sinks)
            handle.started(who(), True)
            self.handles.append(handle)
            return handle

        return scope, entered

    def decorated(self, number: int) -> Callable[..., Any]:
        self.callers[number % len(self.callers)].append(id(greenlet.getcurrent()))
        return self.decorated_calls[number % len(self.decorated_calls)]

    def finish(self) -> None:
        """Stop what the program left running, as its thread ends."""
        self.check_dispatcher("at the end")
        for handle in self.every_handle():
            if handle.profiler.is_running:
                handle.profiler.stop()
            handle.check_stats()
        after = greenlet.gettrace()
        if after is not self.trace_before:
            self.problem(f"a tracer was left installed: {after!r}")
        dispatcher = installed_dispatcher(thread_ident())
        if dispatcher is not None:
            names = self.execution.outcome.names
            watched = sorted(names.get(id(watch()), "?") for watch in dispatcher.watches)
            self.problem(
                "greenprof's dispatcher is still registered for the thread: watching "
                f"{watched}, tracking {dispatcher.tracking}, following {dispatcher.following}"
            )
        for handle in self.every_handle():
            handle.profiler.flush(timeout=1.0)
        for scope, _, _ in self.scopes:
            scope.flush(timeout=1.0)


class _Only:
    """An ``only=`` filter: keeps, mutes, or raises, by the greenlet's index."""

    def __init__(self, outcome: Outcome, verdicts: list[str]) -> None:
        self.outcome = outcome
        self.verdicts = verdicts

    def verdict(self, glet_id: int) -> str:
        name = self.outcome.names.get(glet_id)
        if name is None:
            return "keep"  # the hub and the thread's main greenlet
        return self.verdicts[sum(map(ord, name)) % len(self.verdicts)]

    def __call__(self, glet: greenlet.greenlet) -> bool:
        verdict = self.verdict(id(glet))
        if verdict == "raise":
            msg = "a filter that fails"
            raise LookupError(msg)
        return verdict == "keep"


# -- one run in its own thread ---------------------------------------------------------


def execute(program: Program, *, profiled: bool, tracer: Any = None) -> Outcome:
    """Run ``program`` in a new OS thread; ``tracer``: a greenlet tracer to
    install in that thread first (to check that the oracle sees it)."""
    outcome = Outcome()
    # The thread holds the run only until it ends (see release()).
    box: list[Any] = [outcome, program]

    def thread_main() -> None:
        hub = _run_here(box, profiled=profiled, tracer=tracer)
        box.clear()
        if hub is not None:
            hub.destroy(destroy_loop=True)

    # A program may keep log records (a buffering handler): greenprof's
    # must not keep the program's objects alive through them.
    keeper = _RecordKeeper()
    logger = logging.getLogger("greenprof")
    logger.addHandler(keeper)
    enabled = gc.isenabled()
    gc.disable()  # freed by reference counting alone: at the same point in both runs
    try:
        thread = threading.Thread(target=thread_main, name=f"fault-{program.seed}", daemon=True)
        thread.start()
        thread.join(RUN_TIMEOUT)
        if thread.is_alive():
            outcome.error = f"the run hung for {RUN_TIMEOUT:.0f} s"
    finally:
        if enabled:
            gc.enable()
        logger.removeHandler(keeper)
    return outcome


def _run_here(box: list[Any], *, profiled: bool, tracer: Any) -> Any:
    """Run the program in the calling thread; its hub, to destroy."""
    outcome, program = box
    execution = Execution(program, outcome, profiled=profiled)
    try:
        if tracer is not None:
            greenlet.settrace(tracer)
        try:
            execution.run()
        finally:
            if tracer is not None:
                greenlet.settrace(None)
    except BaseException:
        outcome.error = traceback.format_exc()
    return execution.release()


class _RecordKeeper(logging.Handler):
    """Keeps every record, as a buffering handler does."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# -- checking what greenprof recorded ------------------------------------------------------


def allowed_greenlets(options: Any, targets: list[int], outcome: Outcome) -> set[int]:
    """``id()`` of every greenlet a session with ``options`` started on
    ``targets`` may record."""
    everyone = set(outcome.names)
    if options.mode == "thread":
        return everyone | {0}  # samples are labelled with whatever ran
    if options.follow_all:
        return (everyone - {outcome.hub_id}) | set(targets)
    allowed = set(targets)
    if options.follow_spawned:
        grew = True
        while grew:
            more = {g for g, spawner in outcome.spawners.items() if spawner in allowed}
            grew = not more <= allowed
            allowed |= more
    return allowed


def check_recorded(outcome: Outcome) -> list[str]:
    """What is wrong with the snapshots of a profiled run."""
    profiling = outcome.profiling
    assert profiling is not None
    problems: list[str] = []
    records = {r.session_id: r for h in profiling.every_handle() for r in h.sessions}
    decorated: set[int] = set()
    for callers, options in zip(profiling.callers, profiling.decorated_options, strict=True):
        decorated |= allowed_greenlets(options, callers, outcome)
    names = outcome.names
    reused = outcome.reused

    def check(snapshot: Snapshot, where: str) -> None:
        record = records.get(snapshot.session_id)
        if record is None:
            allowed, options = decorated, None
        else:
            allowed = allowed_greenlets(record.options, record.targets, outcome)
            options = record.options
        glet = snapshot.greenlet_id
        name = names.get(glet, hex(glet))
        ambiguous = glet in reused
        if glet not in allowed:
            problems.append(f"{where}: a {snapshot.event} snapshot of {name}, not profiled")
        if (
            options is not None
            and options.only is not None
            and snapshot.event != "sample"
            and not ambiguous
            and profiling.only.verdict(glet) == "mute"
        ):
            problems.append(f"{where}: a snapshot of {name}, which only= left out")
        parent = snapshot.parent_id
        if parent is not None and not ambiguous and parent != outcome.spawners.get(glet):
            problems.append(f"{where}: {name}'s parent_id is not the greenlet that spawned it")

    for number, handle in enumerate(profiling.every_handle()):
        where = f"profiler {number}"
        kept: dict[tuple[str, int], list[str]] = {}
        for snapshot in handle.profiler.snapshots:
            check(snapshot, where)
            kept.setdefault((snapshot.session_id, snapshot.greenlet_id), []).append(snapshot.event)
        limit = handle.profiler.max_snapshots
        for (_, glet), events in kept.items():
            # (Two greenlets may share an id, one freed before the other was
            # made: greenlet_id is an id().)
            if handle.profiler.mode != "thread" and len(events) > limit and glet not in reused:
                problems.append(
                    f"{where} ({handle.profiler.mode} mode) kept more than "
                    f"max_snapshots={limit} of {names.get(glet)} in a session: {events}"
                )
        for sink in handle.sinks:
            for snapshot in getattr(sink, "snapshots", ()):
                check(snapshot, f"{where}'s {type(sink).__name__}")
    for number, (_, _, sinks) in enumerate(profiling.scopes):
        for sink in sinks:
            for snapshot in getattr(sink, "snapshots", ()):
                check(snapshot, f"scope {number}'s {type(sink).__name__}")
    return problems


def first_difference(expected: list[Entry], got: list[Entry]) -> str:
    """Where two traces part, with a few entries around it."""
    index = next(
        (i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b),
        min(len(expected), len(got)),
    )
    start = max(0, index - 4)
    lines = [f"the traces part at entry {index} (lengths {len(expected)} and {len(got)}):"]
    for i in range(start, min(index + 4, max(len(expected), len(got)))):
        a = expected[i] if i < len(expected) else "(none)"
        b = got[i] if i < len(got) else "(none)"
        mark = "  " if a == b else "!!"
        lines.append(f"{mark} {i}: unprofiled {a!r}")
        if a != b:
            lines.append(f"{mark} {i}:   profiled {b!r}")
    return "\n".join(lines)
