"""WSGI middleware: profile each request's greenlet, keep the slow ones.

Works under any server that runs a request in one greenlet (gevent.pywsgi,
gunicorn's gevent worker) or one thread.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .._profiler import Profiler
from .._validate import is_number
from ..exceptions import ConfigurationError
from ..sinks._base import Sink

__all__ = ["ProfilerMiddleware"]

Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Any], Iterable[bytes]]


class ProfilerMiddleware:
    """Profiles each request of ``app`` and sends what it keeps to ``sinks``.

    - ``min_duration`` (seconds): a request faster than this sends nothing.
    - ``sample_rate`` (0 to 1): the share of requests profiled at all.
    - ``paths``: profile only requests whose path starts with one of these
      prefixes (default: every path).
    - ``on_profiled(profiler, environ)``: called after each profiled request
      that was kept, e.g. to log ``profiler.report()``.
    - Any other keyword (``mode``, ``max_depth``, ``dump_period``,
      ``follow_spawned``, ...) goes to each request's
      :class:`~greenprof.Profiler`.

    A request is profiled from the call into ``app`` until the server closes
    its response iterable (PEP 3333), so streamed bodies count too.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        sinks: Sequence[Sink] = (),
        min_duration: float = 0.0,
        sample_rate: float = 1.0,
        paths: Iterable[str] | None = None,
        on_profiled: Callable[[Profiler, Environ], None] | None = None,
        random_source: Callable[[], float] = random.random,
        **options: Any,
    ) -> None:
        if not is_number(sample_rate) or not 0 <= sample_rate <= 1:
            msg = f"sample_rate must be a number from 0 to 1, not {sample_rate!r}."
            raise ConfigurationError(msg)
        self.app = app
        self.sinks = list(sinks)
        self.sample_rate = sample_rate
        self.paths = tuple(paths) if paths is not None else None
        self.on_profiled = on_profiled
        self._random = random_source
        self._options = {"min_duration": min_duration, "flush_timeout": 0, **options}
        Profiler(**self._options)  # check the options now, not at the first request
        #: Requests profiled and kept, and profiled but faster than min_duration.
        self.kept = 0
        self.discarded = 0

    def _wanted(self, environ: Environ) -> bool:
        if self.paths is not None:
            path = str(environ.get("PATH_INFO", ""))
            if not path.startswith(self.paths):
                return False
        return self.sample_rate >= 1 or self._random() < self.sample_rate

    def __call__(self, environ: Environ, start_response: Any) -> Iterable[bytes]:
        if not self._wanted(environ):
            return self.app(environ, start_response)
        profiler = Profiler(sinks=self.sinks, **self._options)
        profiler.start()
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._finish(profiler, environ)
            raise
        return _ProfiledBody(body, lambda: self._finish(profiler, environ))

    def _finish(self, profiler: Profiler, environ: Environ) -> None:
        if not profiler.is_running:
            return
        profiler.stop()
        if profiler.discarded:
            self.discarded += 1
            return
        self.kept += 1
        if self.on_profiled is not None:
            self.on_profiled(profiler, environ)


class _ProfiledBody:
    """The app's response iterable; closing it ends the request's profile."""

    def __init__(self, body: Iterable[bytes], finish: Callable[[], None]) -> None:
        self._body = body
        self._finish = finish

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()
