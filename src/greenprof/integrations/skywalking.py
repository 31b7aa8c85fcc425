"""SkyWalking profile tasks: poll the OAP for them and profile matching requests.

A :class:`ProfileTaskPoller` asks the collector for profile tasks the way the
SkyWalking Python agent does, and :meth:`ProfileTaskPoller.profile_request`
profiles a request whose endpoint a running task names, with that task's
settings, sending snapshots through a :class:`~greenprof.sinks.SkyWalkingSink`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .. import _skywalking_wire as wire
from .._profiler import Profiler
from .._threads import allocate_real_lock, original
from ..exceptions import ConfigurationError
from ..sinks._skywalking import SkyWalkingSink, _identity

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
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
            msg = f"max_parallel must be a whole number >= 1, not {max_parallel!r}."
            raise ConfigurationError(msg)
        self.sink = sink
        self.service = service
        self.instance = instance
        self.interval = interval
        self.max_parallel = max_parallel
        self.mode = mode
        self.max_depth = max_depth
        self._clock = clock
        channel = sink._channel
        self._query = channel.unary_unary(
            wire.GET_PROFILE_TASK_COMMANDS,
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        self._finish = channel.unary_unary(
            wire.REPORT_TASK_FINISH,
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        self._lock = allocate_real_lock()
        self._wake = allocate_real_lock()
        self._wake.acquire()
        self._exited = allocate_real_lock()
        self._running = False
        self._stopping = False
        self._last_command_time = -1
        self._serials: set[str] = set()
        self._tasks: dict[str, ProfileTask] = {}
        self._active = 0
        self._started: dict[str, int] = {}
        #: Tasks whose finish report the collector acknowledged.
        self.finished: list[str] = []
        #: Failed calls to the collector (each retried at the next poll).
        self.failures = 0

    # -- the polling thread ------------------------------------------------------------

    def start(self) -> ProfileTaskPoller:
        with self._lock:
            if self._running:
                return self
            self._running = True
            self._stopping = False
            self._exited.acquire()
        original("start_new_thread")(self._run, ())
        return self

    def stop(self) -> None:
        with self._lock:
            if not self._running:
                return
            self._stopping = True
        with contextlib.suppress(RuntimeError):
            self._wake.release()
        if self._exited.acquire(True, self.sink.timeout + 5.0):
            self._exited.release()

    def poll(self) -> None:
        """One round: fetch new tasks, report those that ended."""
        try:
            answer = self._query(
                wire.encode_command_query(
                    service=self.service,
                    instance=self.instance,
                    last_command_time=self._last_command_time,
                ),
                timeout=self.sink.timeout,
                metadata=self.sink._metadata,
            )
        except self.sink._grpc.RpcError:
            self.failures += 1
        else:
            for command in wire.decode_commands(answer):
                if command.command == "ProfileTaskQuery":
                    self._accept(ProfileTask.from_command(command))
        self._report_ended()

    def _accept(self, task: ProfileTask) -> None:
        with self._lock:
            self._last_command_time = max(self._last_command_time, task.create_time_ms)
            if task.serial_number in self._serials:
                return
            self._serials.add(task.serial_number)
            self._tasks[task.task_id] = task

    def _report_ended(self) -> None:
        now_ms = int(self._clock() * 1000)
        with self._lock:
            ended = [t for t in self._tasks.values() if t.end_time_ms <= now_ms]
        for task in ended:
            try:
                self._finish(
                    wire.encode_finish_report(
                        service=self.service, instance=self.instance, task_id=task.task_id
                    ),
                    timeout=self.sink.timeout,
                    metadata=self.sink._metadata,
                )
            except self.sink._grpc.RpcError:
                self.failures += 1
                continue
            with self._lock:
                self._tasks.pop(task.task_id, None)
            self.finished.append(task.task_id)

    def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    self.poll()
                except Exception:  # never let the thread die quietly
                    self.failures += 1
                    _logger.exception("greenprof: profile task poll failed")
                self._wake.acquire(True, self.interval)
        finally:
            with self._lock:
                self._running = False
            self._exited.release()

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
            profiler = Profiler(
                sinks=[self.sink],
                mode=self.mode,
                dump_period=max(task.dump_period_ms, 1) / 1000,
                min_duration=task.min_duration_threshold_ms / 1000,
                max_depth=self.max_depth,
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

        def profiled_app(environ: dict[str, Any], start_response: Any) -> Any:
            with self.profile_request(endpoint_name(environ), make_segment(environ)):
                return app(environ, start_response)

        return profiled_app
