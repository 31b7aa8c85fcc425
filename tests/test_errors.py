"""Bad input: every misuse raises a greenprof exception that says what to do."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator

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
    WrongThreadError,
)
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
