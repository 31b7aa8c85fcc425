"""Inside the SkyWalking Python agent: greenprof profiles the requests its
profile tasks select, instead of the agent's own profilers."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import attrs

from .._entries import runs_the_program
from .._options import Options
from .._pipeline import Pipeline
from .._profiler import Profiler
from ..exceptions import ConfigurationError, MissingDependencyError
from ._sink import SkyWalkingSink

__all__ = ["AgentTakeover", "install"]


@attrs.define
class _AgentSlot:
    """One request greenprof profiles for the agent, in one of its slots."""

    trace_context: Any
    profiler: Profiler
    profile_status: Any
    stopped: bool = False

    def matches(self, trace_context: Any) -> bool:
        return trace_context is self.trace_context

    def start_profiling_if_need(self) -> None:
        """What the agent's own sampling thread calls on a pending slot: an
        agent thread started before :func:`install` finds nothing to do."""

    def stop_profiling(self, stopped: Any, sink: SkyWalkingSink) -> None:
        self.stopped = True  # one not started yet never will be
        if self.profiler.is_running:
            self.profiler.stop()
        sink.unbind(self.profiler.session_id)
        self.profile_status.update_status(stopped)


@attrs.define
class AgentTakeover:
    """What :func:`install` changed; :meth:`uninstall` puts it back."""

    sink: SkyWalkingSink
    #: ``(class, attribute name, original)`` for everything replaced.
    originals: list[tuple[Any, str, Any]]
    #: Stops every request greenprof profiles for the agent right now.
    stop_all: Callable[[], None]

    def uninstall(self) -> None:
        """Give profiling back to the agent: stop greenprof's requests first."""
        self.stop_all()
        for owner, name, original_value in self.originals:
            setattr(owner, name, original_value)
        self.sink.close()


def _agent_modules() -> tuple[Any, ...]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        agent_version = version("apache-skywalking")
    except PackageNotFoundError:
        msg = (
            "greenprof.integrations.skywalking.install() works inside the "
            "SkyWalking Python agent, which is not installed: pip install "
            "'apache-skywalking==1.2.0'."
        )
        raise MissingDependencyError(msg) from None
    try:
        import skywalking.profile as profile  # type: ignore[import-untyped,import-not-found,unused-ignore]
        from skywalking import config  # type: ignore[import-untyped,import-not-found,unused-ignore]
        from skywalking.profile import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            profile_constants,
            profile_context,
            profile_service,
            profile_status,
        )
        from skywalking.trace import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            context as trace_context,
        )
    except ImportError as exc:
        msg = (
            f"apache-skywalking {agent_version} cannot be used: importing its "
            f"profiler failed ({exc}). Version 1.3.0 on PyPI ships without its "
            "generated protocol modules; install apache-skywalking==1.2.0."
        )
        raise MissingDependencyError(msg) from None
    return (
        config,
        profile,
        profile_context,
        profile_status,
        trace_context,
        profile_service,
        profile_constants,
    )


def install(*, mode: str = "greenlet", max_depth: int | None = None) -> AgentTakeover:
    """Let greenprof profile requests for the running SkyWalking Python agent.

    Call it after ``skywalking.agent.start()``. The agent keeps polling
    profile tasks and reporting them finished; when a task selects a request
    (its entry span's operation name is the task's endpoint), greenprof
    profiles the request's greenlet in ``mode`` instead of the agent's own
    profilers, with the task's dump period and minimum duration, and sends
    the snapshots under the agent's segment id, to the agent's collector,
    with its authentication token, service and instance names.
    """
    (
        config,
        profile,
        profile_context,
        profile_status,
        trace_module,
        profile_service,
        profile_constants,
    ) = _agent_modules()
    if mode not in ("greenlet", "hybrid", "thread"):
        msg = f"mode must be 'greenlet', 'hybrid' or 'thread', not {mode!r}."
        raise ConfigurationError(msg)
    depth = max_depth or int(getattr(config, "agent_profile_dump_max_stack_depth", 500))
    sink = SkyWalkingSink(
        str(config.agent_collector_backend_services).split(",")[0],
        service=config.agent_name,
        instance=config.agent_instance_name,
        authentication=config.agent_authentication or None,
        max_depth=depth,
        secure=bool(getattr(config, "agent_force_tls", False)),
    )
    pipelines: dict[tuple[int, int], Pipeline] = {}

    def pipeline_for(dump_period_ms: int, min_duration_ms: int) -> Pipeline:
        """One pipeline (options checked once) per task's settings."""
        pipeline = pipelines.get((dump_period_ms, min_duration_ms))
        if pipeline is None:
            options = Options(
                mode=mode,
                dump_period=max(dump_period_ms, 1) / 1000,
                min_duration=max(min_duration_ms, 0) / 1000,
                max_depth=depth,
            )
            pipeline = pipelines[(dump_period_ms, min_duration_ms)] = Pipeline(options, [sink])
        return pipeline

    context_class = profile_context.ProfileTaskExecutionContext
    status = profile_status.ProfileStatus
    status_reference = profile_status.ProfileStatusReference
    span_context_class = trace_module.SpanContext
    names = ("start_profiling", "stop_profiling", "attempt_profiling", "stop_tracing_profile")
    originals = [(context_class, name, context_class.__dict__[name]) for name in names]
    original_stop = span_context_class.__dict__["stop"]
    originals.append((span_context_class, "stop", original_stop))
    original_start = span_context_class.__dict__["start"]
    originals.append((span_context_class, "start", original_start))
    # Sessions chosen for a request whose entry span has not started yet:
    # they start with it, so that they lie within the span.
    pending: weakref.WeakKeyDictionary[Any, _AgentSlot] = weakref.WeakKeyDictionary()

    def start_profiling(self: Any) -> None:
        """The agent's sampling thread is not started: greenprof profiles."""

    def stop_profiling(self: Any) -> None:
        for index, slot in enumerate(list(self.profiling_segment_slots)):
            if isinstance(slot, _AgentSlot):
                self.profiling_segment_slots.set(index, None)
                slot.stop_profiling(status.STOPPED, sink)
                self._current_profiling_cnt.add_and_get(-1)

    def attempt_profiling(
        self: Any, trace_context: Any, segment_id: str, first_span_opname: str
    ) -> Any:
        task = self.task
        using = self._current_profiling_cnt.get()
        if (
            using >= config.agent_profile_max_parallel
            or task.first_span_op_name != first_span_opname
            or not self._current_profiling_cnt.compare_and_set(using, using + 1)
        ):
            return status_reference.create_with_none()
        # Count first, then check: two OS threads cannot both take the last one.
        if self._total_started_profiling_cnt.add_and_get(1) > task.max_sampling_count:
            self._total_started_profiling_cnt.add_and_get(-1)
            self._current_profiling_cnt.add_and_get(-1)
            return status_reference.create_with_none()
        profiler = Profiler._of(
            pipeline_for(int(task.thread_dump_period), int(task.min_duration_threshold))
        )
        profiler.tags.update(
            endpoint=str(first_span_opname), segment_id=str(segment_id), task_id=str(task.task_id)
        )
        # The agent passes its segment ID object; its str() is the id on the wire.
        sink.bind(profiler.session_id, task_id=str(task.task_id), segment_id=str(segment_id))
        slot = _AgentSlot(trace_context, profiler, status_reference.create_with_pending())
        for index in range(self.profiling_segment_slots.length()):
            if self.profiling_segment_slots.compare_and_set(index, None, slot):
                # The status stays "pending" for the agent: its own sampling
                # thread, if one started before install(), leaves it alone.
                # The agent asks before it starts the entry span (unless the
                # span's name changed once it ran): start with the span.
                if getattr(trace_context, "_nspans", 0):
                    profiler.start()
                else:
                    pending[trace_context] = slot
                return slot.profile_status
        self._current_profiling_cnt.add_and_get(-1)
        return status_reference.create_with_none()

    def stop_tracing_profile(self: Any, trace_context: Any) -> None:
        for index, slot in enumerate(self.profiling_segment_slots):
            if slot is not None and slot.matches(trace_context):
                self.profiling_segment_slots.set(index, None)
                if isinstance(slot, _AgentSlot):
                    slot.stop_profiling(status.STOPPED, sink)
                else:
                    slot.stop_profiling()
                self._current_profiling_cnt.add_and_get(-1)
                break

    @runs_the_program  # the agent's own start, its tracing
    def start(self: Any, span: Any) -> Any:
        started = original_start(self, span)
        slot = pending.pop(self, None)
        if slot is not None and not slot.stopped:
            slot.profiler.start()
        return started

    @runs_the_program  # the agent's own stop
    def stop(self: Any, span: Any) -> Any:
        # The agent never ends a request's profiling when its segment ends
        # (its profilers run until the task does); greenprof stops there:
        # just before the last span ends, so that the session (and its last
        # snapshot) lies within the segment, or else right after.
        if getattr(self, "_nspans", None) == 1:
            stop_profiling_of(self)
        finished = original_stop(self, span)
        if finished:
            stop_profiling_of(self)
        return finished

    def stop_profiling_of(trace_context: Any) -> None:
        reference = getattr(trace_context, "profile_status", None)
        if reference is not None and reference.is_being_watched():
            execution = profile.profile_task_execution_service.task_execution_context.get()
            if execution is not None:
                execution.stop_tracing_profile(trace_context)

    # A task the agent started before install() keeps the agent's sampling
    # thread until the task ends (stopping it would end the task): it finds
    # greenprof's slots "pending" and leaves them alone.
    service_class = profile_service.ProfileTaskExecutionService
    original_check = service_class.__dict__["_check_profile_task"]
    originals.append((service_class, "_check_profile_task", original_check))

    def _check_profile_task(self: Any, task: Any) -> tuple[bool, str]:
        # The agent's own check reads ``Queue.mutex``, which gevent's Queue
        # (under monkey.patch_all) does not have: every task then fails.
        if hasattr(self._profile_task_list, "mutex"):
            result: tuple[bool, str] = original_check(self, task)
            return result
        limits = profile_constants.ProfileConstants
        if not task.first_span_op_name:
            return False, "endpoint name is empty"
        if not limits.TASK_DURATION_MIN_MINUTE <= task.duration <= limits.TASK_DURATION_MAX_MINUTE:
            return False, f"monitor duration {task.duration} minutes is out of range"
        if task.min_duration_threshold < 0:
            return False, "min duration threshold must be >= 0"
        if task.thread_dump_period < limits.TASK_DUMP_PERIOD_MIN_MILLIS:
            return False, f"dump period must be >= {limits.TASK_DUMP_PERIOD_MIN_MILLIS} ms"
        if not 0 < task.max_sampling_count < limits.TASK_MAX_SAMPLING_COUNT:
            return False, f"max sampling count must be below {limits.TASK_MAX_SAMPLING_COUNT}"
        finish = self._cal_profile_task_finish_time(task)
        for queued in list(getattr(self._profile_task_list, "queue", ())):
            if task.start_time <= finish <= self._cal_profile_task_finish_time(queued):
                return False, "another task already runs in that time range"
        return True, ""

    service_class._check_profile_task = _check_profile_task
    span_context_class.stop = stop
    span_context_class.start = start
    context_class.start_profiling = start_profiling
    context_class.stop_profiling = stop_profiling
    context_class.attempt_profiling = attempt_profiling
    context_class.stop_tracing_profile = stop_tracing_profile

    def stop_all() -> None:
        service = getattr(profile, "profile_task_execution_service", None)
        execution = service.task_execution_context.get() if service is not None else None
        if execution is not None:
            stop_profiling(execution)

    return AgentTakeover(sink, originals, stop_all)
