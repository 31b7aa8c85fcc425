"""Bad input: every misuse raises a greenprof exception that says what to do."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import greenlet
import pytest

import greenprof
from greenprof import Snapshot
from greenprof.exceptions import (
    AlreadyProfilingError,
    ConfigurationError,
    DeadGreenletError,
    GreenprofError,
    InvalidSinkError,
    NotAGreenletError,
    NotMainThreadError,
    NotRunningError,
    UnknownSinkError,
    WireFormatError,
    WrongThreadError,
)
from greenprof.integrations.wsgi import ProfilerMiddleware
from greenprof.sinks import MemorySink


def wait_in_main(main: greenlet.greenlet) -> None:
    main.switch()


def worker(main: greenlet.greenlet, waits: int) -> None:
    for _ in range(waits):
        wait_in_main(main)


def make_worker(waits: int) -> greenlet.greenlet:
    return greenlet.greenlet(functools.partial(worker, greenlet.getcurrent(), waits))


def run(glet: greenlet.greenlet) -> None:
    while not glet.dead:
        glet.switch()


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (NotAGreenletError, TypeError),
        (DeadGreenletError, ValueError),
        (WrongThreadError, ValueError),
        (AlreadyProfilingError, RuntimeError),
        (NotRunningError, RuntimeError),
        (InvalidSinkError, TypeError),
        (UnknownSinkError, ValueError),
        (ConfigurationError, ValueError),
        (WireFormatError, ValueError),
        (NotMainThreadError, ValueError),
    ],
)
def test_every_error_is_a_greenprof_error_and_its_builtin(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, GreenprofError)
    assert issubclass(error, builtin)


# -- start() -------------------------------------------------------------------


def test_starting_on_a_non_greenlet_raises_not_a_greenlet_error() -> None:
    profiler = greenprof.Profiler()
    with pytest.raises(NotAGreenletError, match="not str objects") as info:
        profiler.start("not a greenlet")  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert "Pass a greenlet.greenlet or gevent.Greenlet" in str(info.value)
    assert greenlet.gettrace() is None
    assert not profiler.is_running


def test_starting_on_a_finished_greenlet_raises_dead_greenlet_error() -> None:
    glet = make_worker(1)
    run(glet)
    profiler = greenprof.Profiler()
    with pytest.raises(DeadGreenletError, match="has already finished") as info:
        profiler.start(glet)
    assert isinstance(info.value, ValueError)
    assert "Start profiling before it ends" in str(info.value)
    assert greenlet.gettrace() is None
    assert not profiler.is_running


@pytest.fixture
def greenlet_of_another_thread() -> Iterator[greenlet.greenlet]:
    """A greenlet created in another OS thread and suspended there until the test ends."""
    handed_over = threading.Event()
    release = threading.Event()
    box: list[greenlet.greenlet] = []

    def thread_main() -> None:
        glet = make_worker(1)
        glet.switch()  # now suspended in wait_in_main, in this thread
        box.append(glet)
        handed_over.set()
        release.wait()
        run(glet)  # finish it in its own thread

    thread = threading.Thread(target=thread_main)
    thread.start()
    try:
        handed_over.wait()
        yield box[0]
    finally:
        release.set()
        thread.join()
    assert box[0].dead


def test_starting_on_a_greenlet_of_another_thread_raises_wrong_thread_error(
    greenlet_of_another_thread: greenlet.greenlet,
) -> None:
    assert not greenlet_of_another_thread.dead
    profiler = greenprof.Profiler()
    with pytest.raises(WrongThreadError, match="belongs to another OS thread") as info:
        profiler.start(greenlet_of_another_thread)
    assert isinstance(info.value, ValueError)
    assert "works per thread" in str(info.value)
    assert "must be called from the thread that runs the greenlet" in str(info.value)
    assert greenlet.gettrace() is None
    assert not profiler.is_running


def test_starting_the_same_greenlet_twice_raises_already_profiling_error() -> None:
    glet = make_worker(1)
    sink = MemorySink()
    profiler = greenprof.Profiler(sinks=[sink])
    profiler.start(glet)
    with pytest.raises(AlreadyProfilingError, match="already profiling") as info:
        profiler.start(glet)
    assert isinstance(info.value, RuntimeError)
    assert "use a second Profiler" in str(info.value)
    # The failed start changed nothing: the first session records once.
    run(glet)
    profiler.stop()
    assert [s.event for s in sink.snapshots] == ["switch_in", "switch_out", "switch_in", "exit"]
    assert greenlet.gettrace() is None


def test_two_profilers_on_one_greenlet_both_record_the_same_switches() -> None:
    glet = make_worker(2)
    first, second = greenprof.Profiler(), greenprof.Profiler()
    first.start(glet)
    second.start(glet)
    run(glet)
    second.stop()
    first.stop()

    def essentials(profiler: greenprof.Profiler) -> list[tuple[int, str, int, tuple[object, ...]]]:
        return [(s.sequence, s.event, s.greenlet_id, s.stack) for s in profiler.snapshots]

    assert len(first.snapshots) == 6
    assert essentials(first) == essentials(second)
    assert {s.session_id for s in first.snapshots} == {first.session_id}
    assert {s.session_id for s in second.snapshots} == {second.session_id}
    assert first.session_id != second.session_id
    assert greenlet.gettrace() is None


# -- stop() ------------------------------------------------------------------------


def test_stopping_a_profiler_that_never_started_raises_not_running_error() -> None:
    profiler = greenprof.Profiler()
    with pytest.raises(NotRunningError, match=r"call start\(\) before stop\(\)") as info:
        profiler.stop()
    assert isinstance(info.value, RuntimeError)


def test_stopping_twice_raises_not_running_error() -> None:
    glet = make_worker(1)
    profiler = greenprof.Profiler()
    profiler.start(glet)
    run(glet)
    profiler.stop()
    with pytest.raises(NotRunningError, match=r"stop\(\) only once per start\(\)"):
        profiler.stop()
    assert len(profiler.snapshots) == 4


# -- sinks -------------------------------------------------------------------------


def test_adding_an_object_without_sink_methods_raises_invalid_sink_error() -> None:
    profiler = greenprof.Profiler()
    with pytest.raises(InvalidSinkError, match="has no callable export, flush, close") as info:
        profiler.add_sink(object())  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert "see greenprof.sinks.Sink" in str(info.value)
    assert profiler.sinks == []


def test_sink_missing_one_method_is_named_in_invalid_sink_error() -> None:
    class NoClose:
        def export(self, batch: object) -> None: ...

        def flush(self, timeout: float | None = None) -> bool:
            return True

    with pytest.raises(InvalidSinkError, match=r"has no callable close\. A sink needs"):
        greenprof.Profiler(sinks=[NoClose()])  # type: ignore[list-item]


def test_removing_a_sink_that_was_never_added_raises_unknown_sink_error() -> None:
    added = MemorySink()
    profiler = greenprof.Profiler(sinks=[added])
    with pytest.raises(UnknownSinkError, match="was never added to this profiler") as info:
        profiler.remove_sink(MemorySink())
    assert isinstance(info.value, ValueError)
    assert profiler.sinks == [added]


def test_removing_a_sink_twice_raises_unknown_sink_error() -> None:
    sink = MemorySink()
    profiler = greenprof.Profiler(sinks=[sink])
    profiler.remove_sink(sink)
    with pytest.raises(UnknownSinkError, match="nothing to remove"):
        profiler.remove_sink(sink)


# -- options -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_snapshots": 0}, "max_snapshots must be a whole number >= 1, not 0"),
        ({"max_snapshots": True}, "max_snapshots must be a whole number >= 1, not True"),
        ({"max_snapshots": 2.5}, "max_snapshots must be a whole number >= 1, not 2.5"),
        ({"max_depth": -1}, "max_depth must be a whole number >= 1, not -1"),
        ({"max_depth": 0}, "max_depth must be a whole number >= 1, not 0"),
        ({"flush_timeout": -1}, "flush_timeout must be a number of seconds >= 0 or None"),
        ({"flush_timeout": "5"}, "flush_timeout must be a number of seconds >= 0 or None"),
        ({"flush_timeout": False}, "flush_timeout must be a number of seconds >= 0 or None"),
    ],
)
def test_invalid_options_raise_configuration_error(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        greenprof.Profiler(**options)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert message in str(info.value)


def test_invalid_options_of_profile_raise_configuration_error_when_it_is_called() -> None:
    with pytest.raises(ConfigurationError, match="max_depth must be a whole number >= 1"):
        greenprof.profile(max_depth=0)
    assert greenlet.gettrace() is None


def test_edge_values_of_options_are_accepted() -> None:
    profiler = greenprof.Profiler(max_snapshots=1, max_depth=1, flush_timeout=0)
    assert (profiler.max_snapshots, profiler.max_depth, profiler.flush_timeout) == (1, 1, 0)
    assert greenprof.Profiler(flush_timeout=None).flush_timeout is None


def app(environ: dict[str, object], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


#: Every object that takes a profiler's options: each checks them when made.
MAKERS: dict[str, Callable[..., object]] = {
    "Profiler": greenprof.Profiler,
    "profile": greenprof.profile,
    "ProfilerMiddleware": functools.partial(ProfilerMiddleware, app),
}


@pytest.mark.parametrize("maker", MAKERS)
@pytest.mark.parametrize(
    ("sinks", "message"),
    [
        (
            5,
            "sinks must be a list of sinks, e.g. sinks=[JSONSink('profile.jsonl')] (or left "
            "out for none), not int 5.",
        ),
        (
            None,
            "sinks must be a list of sinks, e.g. sinks=[JSONSink('profile.jsonl')] (or "
            "left out for none), not NoneType None.",
        ),
        ("out.jsonl", "not str 'out.jsonl'."),
        (b"out.jsonl", "not bytes b'out.jsonl'."),
        (MemorySink(), "sinks is a list of sinks: pass sinks=[sink], not the MemorySink alone."),
    ],
)
def test_sinks_that_are_no_list_of_sinks_raise_configuration_error_when_made(
    maker: str, sinks: object, message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        MAKERS[maker](sinks=sinks)
    assert message in str(info.value)
    assert greenlet.gettrace() is None


@pytest.mark.parametrize("maker", MAKERS)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"dump_period": math.inf},
            "dump_period is in seconds; inf is longer than a program runs. Pass a period like 0.01",
        ),
        (
            {"dump_period": 10**400},
            "dump_period is in seconds; 100000000000000000...0000000000000000000 is longer",
        ),
        ({"dump_period": 1e30}, "1e+30 is longer than a program runs"),
        (
            {"dump_period": math.nan},
            "dump_period is in seconds and must be at least 0.001 (1 ms), not nan.",
        ),
        ({"dump_period": True}, "must be at least 0.001 (1 ms), not True."),
        ({"dump_period": "0.01"}, "must be at least 0.001 (1 ms), not '0.01'."),
        (
            {"min_duration": math.nan},
            "min_duration is in seconds and must be >= 0 (float('inf') keeps no session), not nan.",
        ),
        ({"min_duration": -math.inf}, "must be >= 0 (float('inf') keeps no session), not -inf."),
        ({"min_duration": -1}, "must be >= 0 (float('inf') keeps no session), not -1."),
        ({"min_duration": -(10**400)}, "must be >= 0 (float('inf') keeps no session), not -100"),
        ({"min_duration": False}, "must be >= 0 (float('inf') keeps no session), not False."),
        (
            {"flush_timeout": math.nan},
            "flush_timeout must be a number of seconds >= 0 or None (no limit), not nan.",
        ),
        ({"flush_timeout": -math.inf}, "flush_timeout must be a number of seconds >= 0 or None"),
        ({"max_snapshots": math.inf}, "max_snapshots must be a whole number >= 1, not inf."),
        (
            {"max_snapshots": 2**63},
            "max_snapshots is 9223372036854775808, more than a snapshot file can hold: "
            "pass a whole number below 2**63.",
        ),
        (
            {"max_depth": 10**30},
            "max_depth is 1000000000000000000000000000000, more than a snapshot file",
        ),
        ({"max_depth": 1.5}, "max_depth must be a whole number >= 1, not 1.5."),
        (
            {"tags": 5},
            "tags must map strings to strings, e.g. {'path': '/checkout'}, not 5. "
            "Convert numbers with str().",
        ),
        (
            {"tags": "path=/"},
            "tags must map strings to strings, e.g. {'path': '/checkout'}, not 'path=/'.",
        ),
        ({"tags": [("path", "/")]}, "tags must map strings to strings"),
        ({"tags": {"status": 200}}, "tags must map strings to strings"),
        (
            {"follow_spawned": "no"},
            "follow_spawned must be True or False, not 'no': any other value would be "
            "taken as one of them.",
        ),
        ({"follow_spawned": 1}, "follow_spawned must be True or False, not 1"),
        ({"mode": None}, "mode must be one of 'greenlet', 'hybrid', 'thread', not None."),
        ({"only": "handle_*"}, "only must be a function that takes a greenlet"),
    ],
)
def test_every_option_is_checked_when_the_object_taking_it_is_made(
    maker: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        MAKERS[maker](**options)
    assert message in str(info.value)
    assert greenlet.gettrace() is None


class WaitingSink(MemorySink):
    """A sink whose flush waits on a lock for its timeout, as one waiting for
    its own sender thread does: a lock refuses a wait past TIMEOUT_MAX."""

    def flush(self, timeout: float | None = None) -> bool:
        return threading.Lock().acquire(True, -1 if timeout is None else timeout)


@pytest.mark.parametrize("forever", [1e300, 10**400])
def test_a_flush_timeout_too_long_for_a_lock_is_no_timeout(forever: float) -> None:
    # (Infinity itself is refused: None is the way to say no limit.)
    sink = WaitingSink()
    profiler = greenprof.Profiler(sinks=[sink], flush_timeout=forever)
    assert profiler.flush_timeout is None
    glet = make_worker(1)
    profiler.start(glet)
    run(glet)
    profiler.stop()
    assert profiler.flush() is True
    assert profiler.stats.sink_failures == 0
    assert len(sink.snapshots) == 4


@pytest.mark.parametrize("never", [math.inf, 1e300, 10**400, 2**63 / 1e9])
def test_a_min_duration_longer_than_any_session_keeps_none(never: float) -> None:
    sink = MemorySink()
    profiler = greenprof.Profiler(sinks=[sink], min_duration=never)
    assert profiler.min_duration == (math.inf if never == 10**400 else float(never))
    assert profiler.options.min_duration_ns == 2**63
    glet = make_worker(1)
    profiler.start(glet)
    run(glet)
    profiler.stop()
    assert profiler.discarded
    assert sink.snapshots == []


def test_whole_seconds_are_kept_as_floats_and_nanoseconds() -> None:
    profiler = greenprof.Profiler(mode="hybrid", dump_period=2, min_duration=1, flush_timeout=3)
    options = profiler.options
    assert (options.dump_period, options.min_duration, options.flush_timeout) == (2.0, 1.0, 3.0)
    assert type(options.dump_period) is float
    assert (options.period_ns, options.min_duration_ns) == (2_000_000_000, 1_000_000_000)
    assert greenprof.Profiler(max_snapshots=2**63 - 1).max_snapshots == 2**63 - 1


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (
            "/api",
            "paths must be a list of path prefixes, e.g. paths=['/api'] (or None for "
            "every path), not str '/api'.",
        ),
        (
            5,
            "paths must be a list of path prefixes, e.g. paths=['/api'] (or None for "
            "every path), not int 5.",
        ),
        (
            [b"/api"],
            "paths must be strings that request paths start with, like '/api', not [b'/api'].",
        ),
    ],
)
def test_middleware_paths_that_are_no_list_of_prefixes_raise_configuration_error(
    paths: object, message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        ProfilerMiddleware(app, paths=paths)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_middleware_on_profiled_that_is_no_function_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="on_profiled must be a function that takes"):
        ProfilerMiddleware(app, on_profiled="print")  # type: ignore[arg-type]


# -- profile() -----------------------------------------------------------------------


def test_profile_of_a_non_greenlet_non_function_raises_not_a_greenlet_error() -> None:
    with pytest.raises(NotAGreenletError, match="not int 42") as info:
        greenprof.profile(42)  # type: ignore[call-overload]
    assert isinstance(info.value, TypeError)
    assert "a greenlet to profile, a function to decorate, or nothing" in str(info.value)
    assert greenlet.gettrace() is None


def test_profile_of_a_greenlet_used_as_decorator_raises_configuration_error() -> None:
    glet = make_worker(1)
    scope = greenprof.profile(glet)

    def handler() -> None: ...

    with pytest.raises(ConfigurationError, match="to decorate a function use @profile") as info:
        scope(handler)
    assert isinstance(info.value, ValueError)
    assert greenlet.gettrace() is None


def test_decorating_a_generator_function_raises_configuration_error() -> None:
    def produce() -> Iterator[int]:
        yield 1

    with pytest.raises(ConfigurationError, match="it is a generator or coroutine function") as info:
        greenprof.profile(produce)
    assert "Use `with greenprof.profile():` inside it instead" in str(info.value)
    with pytest.raises(ConfigurationError, match="produce"):
        greenprof.profile(sinks=[MemorySink()])(produce)
    assert greenlet.gettrace() is None


def test_decorating_a_coroutine_function_raises_configuration_error() -> None:
    async def serve() -> None: ...

    with pytest.raises(ConfigurationError, match=r"cannot decorate .*serve"):
        greenprof.profile(serve)


# -- Snapshot ------------------------------------------------------------------------


def test_snapshot_with_an_unknown_event_raises_value_error() -> None:
    with pytest.raises(ValueError, match=r"Snapshot\.event must be one of") as info:
        Snapshot(
            greenlet_id=1,
            greenlet_name="worker",
            thread_id=2,
            event="bogus",
            sequence=0,
            timestamp_ns=0,
            stack=(),
        )
    assert "switch_in, throw, switch_out, exit, sample, start, stop, not 'bogus'" in str(info.value)


# -- failed starts leave nothing behind ------------------------------------------------


def test_failed_starts_leave_no_tracer_and_a_usable_profiler(
    greenlet_of_another_thread: greenlet.greenlet,
) -> None:
    dead = make_worker(1)
    run(dead)
    profiler = greenprof.Profiler()
    for target, error in [
        ("not a greenlet", NotAGreenletError),
        (dead, DeadGreenletError),
        (greenlet_of_another_thread, WrongThreadError),
    ]:
        with pytest.raises(error):
            profiler.start(target)  # type: ignore[arg-type]
        assert greenlet.gettrace() is None
        assert not profiler.is_running
    # The same profiler still works afterwards.
    glet = make_worker(1)
    profiler.start(glet)
    run(glet)
    profiler.stop()
    assert [s.event for s in profiler.snapshots] == ["switch_in", "switch_out", "switch_in", "exit"]
    assert greenlet.gettrace() is None
