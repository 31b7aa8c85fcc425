"""SkyWalking profile tasks: poll the OAP for them and profile matching requests.

A :class:`ProfileTaskPoller` asks the collector for profile tasks the way the
SkyWalking Python agent does, and :meth:`ProfileTaskPoller.profile_request`
profiles a request whose endpoint a running task names, with that task's
settings, sending snapshots through a :class:`~greenprof.sinks.SkyWalkingSink`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .._entries import runs_the_program
from .._loop import BackgroundLoop
from .._options import Options
from .._pipeline import Pipeline
from .._profiler import Profiler
from .._threads import allocate_real_lock
from .._validate import check_positive_int, seconds
from ..exceptions import ConfigurationError, WireFormatError
from . import _wire as wire
from ._sink import SkyWalkingSink

__all__ = ["ProfileTask", "ProfileTaskPoller"]

_logger = logging.getLogger("greenprof")


@attrs.frozen
class ProfileTask:
    """A ``ProfileTaskQuery`` command: what to profile, how, and for how long."""

    task_id: str
    serial_number: str
    endpoint_name: str
    #: Epoch milliseconds.
    start_time_ms: int
    create_time_ms: int
    duration_min: int
    min_duration_threshold_ms: int
    dump_period_ms: int
    #: How many requests (trace segments) the task profiles at most.
    max_sampling_count: int

    @property
    def end_time_ms(self) -> int:
        return self.start_time_ms + self.duration_min * 60_000

    @classmethod
    def from_command(cls, command: wire.Command) -> ProfileTask:
        args = command.args

        def number(name: str, default: int = 0) -> int:
            try:
                return int(args.get(name, default))
            except ValueError:
                return default

        return cls(
            task_id=args.get("TaskId", ""),
            serial_number=args.get("SerialNumber", ""),
            endpoint_name=args.get("EndpointName", ""),
            start_time_ms=number("StartTime"),
            create_time_ms=number("CreateTime"),
            duration_min=number("Duration"),
            min_duration_threshold_ms=number("MinDurationThreshold"),
            dump_period_ms=number("DumpPeriod", 10),
            max_sampling_count=number("MaxSamplingCount", 5),
        )


class ProfileTaskPoller:
    """Polls ``getProfileTaskCommands`` and runs the tasks it hands out.

    Like the agent: polls every ``interval`` seconds with the service and
    instance names and ``lastCommandTime`` (the largest ``CreateTime`` seen,
    -1 at first), skips a ``SerialNumber`` it has seen, profiles at most
    ``max_parallel`` requests at once and ``MaxSamplingCount`` requests per
    task in all, and sends ``reportTaskFinish`` once a
    task's ``StartTime + Duration`` has passed.
    """

    def __init__(
        self,
        sink: SkyWalkingSink,
        *,
        service: str | None = None,
        instance: str | None = None,
        interval: float = 20.0,
        max_parallel: int = 5,
        mode: str = "greenlet",
        max_depth: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        service = service or sink.service
        instance = instance or sink.instance
        if not service or not instance:
            msg = (
                "ProfileTaskPoller needs the service and instance names the "
                "collector knows: pass service= and instance= (here or to the sink)."
            )
            raise ConfigurationError(msg)
        check_positive_int("max_parallel", max_parallel)
        every = seconds(interval)
        if every is None or not 0 < every < math.inf:
            msg = f"interval is the seconds between two polls, a number > 0, not {interval!r}."
            raise ConfigurationError(msg)
        # Checked now: found at the first task, they would fail its requests.
        Options(mode=mode, max_depth=max_depth)
        self.sink = sink
        self.service = service
        self.instance = instance
        self.interval = interval
        self.max_parallel = max_parallel
        self.mode = mode
        self.max_depth = max_depth
        self._clock = clock
        self._client = sink.client
        self._lock = allocate_real_lock()
        self._loop = BackgroundLoop(self._step, name="greenprof's profile task poller")
        # One pipeline (options checked once) per task's settings.
        self._pipelines: dict[tuple[str, int, int], Pipeline] = {}
        self._last_command_time = -1
        self._serials: set[str] = set()
        self._tasks: dict[str, ProfileTask] = {}
        self._active = 0
        self._started: dict[str, int] = {}
        #: Tasks whose finish report the collector acknowledged.
        self.finished: list[str] = []
        #: Failed calls to the collector (each retried at the next poll),
        #: answers that were not the message expected, and tasks whose
        #: settings greenprof cannot use.
        self.failures = 0
        self._told_of_nonsense = False

    # -- the polling thread ------------------------------------------------------------

    def start(self) -> ProfileTaskPoller:
        """Poll every ``interval`` seconds, in a background thread, from now."""
        self._loop.start()
        return self

    def stop(self) -> None:
        """Stop polling and wait for the polling thread to end."""
        # A round may wait on the collector for ``timeout`` per call.
        self._loop.stop(timeout=2 * self._client.timeout + 1.0)

    def _step(self) -> float:
        self.poll()
        return self.interval

    def poll(self) -> None:
        """One round: fetch new tasks, report those that ended. A collector
        that fails or answers nonsense is counted in ``failures`` (the first
        nonsense is logged); it never raises out of here."""
        try:
            answer = self._client.task_commands(
                service=self.service,
                instance=self.instance,
                last_command_time=self._last_command_time,
            )
        except self._client.RpcError:
            self.failures += 1
        else:
            try:
                commands = wire.decode_commands(answer)
            except WireFormatError as exc:
                self._nonsense(f"getProfileTaskCommands answered with no Commands message ({exc})")
            else:
                for command in commands:
                    if command.command == "ProfileTaskQuery":
                        self._accept(ProfileTask.from_command(command))
        self._report_ended()

    def _nonsense(self, what: str) -> None:
        """Count an answer greenprof cannot use; log the first one."""
        self.failures += 1
        if self._told_of_nonsense:
            return
        self._told_of_nonsense = True
        _logger.warning(
            "greenprof: the collector at %s: %s. Is it a SkyWalking OAP's gRPC port "
            "(11800)? Polling goes on; later ones are counted in poller.failures.",
            self.sink.address,
            what,
        )

    def _accept(self, task: ProfileTask) -> None:
        with self._lock:
            self._last_command_time = max(self._last_command_time, task.create_time_ms)
            if task.serial_number in self._serials:
                return
            self._serials.add(task.serial_number)  # seen: a bad one is refused once
        try:
            self._options_for(task)
        except ConfigurationError as exc:  # found at its first request, it would fail it
            self._nonsense(f"task {task.task_id!r} has settings greenprof cannot use: {exc}")
            return
        with self._lock:
            self._tasks[task.task_id] = task

    def _report_ended(self) -> None:
        now_ms = int(self._clock() * 1000)
        with self._lock:
            ended = [t for t in self._tasks.values() if t.end_time_ms <= now_ms]
        for task in ended:
            if not self._loop.running and self._loop.thread_id is not None:
                return  # stopping
            try:
                self._client.report_finish(
                    service=self.service, instance=self.instance, task_id=task.task_id
                )
            except self._client.RpcError:
                self.failures += 1
                continue
            with self._lock:
                self._tasks.pop(task.task_id, None)
            self.finished.append(task.task_id)

    # -- profiling requests --------------------------------------------------------------

    def task_for(self, endpoint_name: str) -> ProfileTask | None:
        """The running task that names ``endpoint_name``, if any."""
        now_ms = int(self._clock() * 1000)
        with self._lock:
            for task in self._tasks.values():
                if (
                    task.endpoint_name == endpoint_name
                    and task.start_time_ms <= now_ms < task.end_time_ms
                ):
                    return task
        return None

    @contextlib.contextmanager
    def profile_request(self, endpoint_name: str, segment_id: str) -> Iterator[Profiler | None]:
        """Profile the calling greenlet if a task names ``endpoint_name``.

        Yields the :class:`~greenprof.Profiler`, or None when no task applies
        or ``max_parallel`` requests are already being profiled. Snapshots go
        to the sink under the task's id and ``segment_id``, the id of the
        request's trace segment.
        """
        task = self.task_for(endpoint_name)
        if task is not None:
            with self._lock:
                started = self._started.get(task.task_id, 0)
                if self._active >= self.max_parallel or started >= task.max_sampling_count:
                    task = None
                else:
                    self._active += 1
                    self._started[task.task_id] = started + 1
        if task is None:
            yield None
            return
        try:
            profiler = Profiler._of(self._pipeline_for(task))
            profiler.tags.update(
                endpoint=endpoint_name, segment_id=segment_id, task_id=task.task_id
            )
            self.sink.bind(profiler.session_id, task_id=task.task_id, segment_id=segment_id)
            profiler.start()
            try:
                yield profiler
            finally:
                profiler.stop()
                self.sink.unbind(profiler.session_id)
        finally:
            with self._lock:
                self._active -= 1

    def _pipeline_for(self, task: ProfileTask) -> Pipeline:
        """The pipeline of a task's settings, made once."""
        key = (self.mode, task.dump_period_ms, task.min_duration_threshold_ms)
        pipeline = self._pipelines.get(key)
        if pipeline is None:
            pipeline = self._pipelines[key] = Pipeline(self._options_for(task), [self.sink])
        return pipeline

    def _options_for(self, task: ProfileTask) -> Options:
        """A task's settings as options, or ConfigurationError."""
        return Options(
            mode=self.mode,
            dump_period=max(task.dump_period_ms, 1) / 1000,
            min_duration=max(task.min_duration_threshold_ms, 0) / 1000,
            max_depth=self.max_depth,
        )

    def wsgi(
        self,
        app: Any,
        *,
        endpoint_name: Callable[[dict[str, Any]], str] = lambda environ: str(
            environ.get("PATH_INFO", "")
        ),
        segment_id: Callable[[dict[str, Any]], str] | None = None,
    ) -> Callable[[dict[str, Any], Any], Any]:
        """Wrap a WSGI ``app`` so each request is offered to :meth:`profile_request`.

        ``endpoint_name`` names a request the way the task's ``EndpointName``
        does (the agent's Flask plugin uses the path); ``segment_id`` gives
        the request's trace segment id (default: a new unique id, for when
        no agent traces the request).
        """
        import uuid

        make_segment = segment_id or (lambda environ: uuid.uuid4().hex)

        @runs_the_program
        def profiled_app(environ: dict[str, Any], start_response: Any) -> Any:
            with self.profile_request(endpoint_name(environ), make_segment(environ)):
                return app(environ, start_response)

        return profiled_app
