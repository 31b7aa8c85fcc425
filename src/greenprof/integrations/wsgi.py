"""WSGI middleware: profile each request's greenlet, keep the slow ones.

Works under any server that runs a request in one greenlet (gevent.pywsgi,
gunicorn's gevent worker) or one thread.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from .._entries import runs_the_program
from .._options import Options
from .._pipeline import Pipeline
from .._profiler import Profiler
from .._validate import check_sinks, check_tags, is_number
from ..exceptions import ConfigurationError
from ..typing import Sink

__all__ = ["TAGS_KEY", "ProfilerMiddleware"]

Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Any], Iterable[bytes]]

#: An app may put a ``dict[str, str]`` of its own tags in the environ under
#: this key (e.g. the route template, from a Flask ``before_request``); the
#: request's session gets them.
TAGS_KEY: Final = "greenprof.tags"

_logger = logging.getLogger("greenprof")


class ProfilerMiddleware:
    """Profiles each request of ``app`` and sends what it keeps to ``sinks``.

    - ``min_duration`` (seconds): a request faster than this sends nothing.
    - ``sample_rate`` (0 to 1): the share of requests profiled at all.
    - ``paths``: profile only requests whose path starts with one of these
      prefixes (default: every path).
    - ``on_profiled(profiler, environ)``: called after each profiled request
      that was kept, e.g. to log ``profiler.report()``.
    - ``request_tags(environ)``: returns more tags for a request's session
      (a mapping of strings); called once the response is complete.
    - Any other keyword (``mode``, ``max_depth``, ``dump_period``,
      ``follow_spawned``, ``tags``, ...) goes to each request's
      :class:`~greenprof.Profiler`.

    A request is profiled from the call into ``app`` until the server closes
    its response iterable (PEP 3333), so streamed bodies count too. Its
    session is tagged with ``method``, ``path``, ``status`` (the status code
    the app gave ``start_response``; absent if it raised before that, and
    then ``error`` names the exception) and ``duration_ms``, then with the
    app's own tags (``environ["greenprof.tags"]``) and ``request_tags``.
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
        request_tags: Callable[[Environ], Mapping[str, str]] | None = None,
        random_source: Callable[[], float] = random.random,
        **options: Any,
    ) -> None:
        if not is_number(sample_rate) or not 0 <= sample_rate <= 1:
            msg = f"sample_rate must be a number from 0 to 1, not {sample_rate!r}."
            raise ConfigurationError(msg)
        if request_tags is not None and not callable(request_tags):
            msg = (
                "request_tags must be a function that takes the WSGI environ and "
                f"returns a dict of string tags, not {request_tags!r}."
            )
            raise ConfigurationError(msg)
        if on_profiled is not None and not callable(on_profiled):
            msg = (
                "on_profiled must be a function that takes the request's profiler "
                f"and the WSGI environ, not {on_profiled!r}."
            )
            raise ConfigurationError(msg)
        self.app = app
        self.sinks = check_sinks(sinks)
        self.sample_rate = sample_rate
        self.paths = _prefixes(paths)
        self.on_profiled = on_profiled
        self.request_tags = request_tags
        self._random = random_source
        # Made once: options checked now, not at the first request.
        self._pipeline = Pipeline(Options.of(min_duration=min_duration, **options), self.sinks)
        #: Requests profiled and kept, and profiled but faster than min_duration.
        self.kept = 0
        self.discarded = 0

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every sink sent what the requests handed it
        (``timeout`` seconds in all, default ``flush_timeout``): a request
        never waits for a sink. False if one could not."""
        return self._pipeline.flush(timeout)

    def _wanted(self, environ: Environ) -> bool:
        if self.paths is not None:
            path = str(environ.get("PATH_INFO", ""))
            if not path.startswith(self.paths):
                return False
        return self.sample_rate >= 1 or self._random() < self.sample_rate

    @runs_the_program
    def __call__(self, environ: Environ, start_response: Any) -> Iterable[bytes]:
        if not self._wanted(environ):
            return self.app(environ, start_response)
        request = _Request(self, environ, Profiler._of(self._pipeline))
        request.start()
        try:
            body = self.app(environ, request.start_response(start_response))
        except BaseException as exc:
            request.error = type(exc).__name__
            request.finish()
            raise
        return _ProfiledBody(body, request.finish)


def _prefixes(paths: object) -> tuple[str, ...] | None:
    """``paths`` as a tuple for ``str.startswith``, or ConfigurationError:
    a lone string would match each of its characters."""
    if paths is None:
        return None
    if isinstance(paths, str) or not isinstance(paths, Iterable):
        msg = (
            "paths must be a list of path prefixes, e.g. paths=['/api'] (or None for "
            f"every path), not {type(paths).__name__} {paths!r}."
        )
        raise ConfigurationError(msg)
    prefixes = tuple(paths)
    if not all(isinstance(prefix, str) for prefix in prefixes):
        msg = f"paths must be strings that request paths start with, like '/api', not {paths!r}."
        raise ConfigurationError(msg)
    return prefixes


class _Request:
    """One profiled request: its profiler and what its tags need."""

    __slots__ = ("environ", "error", "middleware", "profiler", "server_start_response", "status")

    def __init__(self, middleware: ProfilerMiddleware, environ: Environ, profiler: Profiler):
        self.middleware = middleware
        self.environ = environ
        self.profiler = profiler
        self.status: str | None = None
        self.error: str | None = None

    def start(self) -> None:
        profiler = self.profiler
        profiler.start()
        if self.middleware._pipeline.delivery.slice_watchers:
            # A BlockingMonitor reports a slice as it ends: with the request
            # it belongs to (else tagged only as the request ends).
            tags = profiler.tags
            tags["method"] = str(self.environ.get("REQUEST_METHOD", ""))
            tags["path"] = str(self.environ.get("PATH_INFO", ""))

    def start_response(self, start_response: Any) -> Any:
        """What the app is given as its ``start_response``: the server's,
        noting the status."""
        self.server_start_response = start_response
        return self._recording

    @runs_the_program  # the server's start_response runs under it
    def _recording(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        self.status = str(status).split(" ", 1)[0]
        return self.server_start_response(status, headers, exc_info)

    def finish(self) -> None:
        profiler = self.profiler
        if not profiler.is_running:
            return
        environ = self.environ
        tags = profiler.tags
        tags["method"] = str(environ.get("REQUEST_METHOD", ""))
        tags["path"] = str(environ.get("PATH_INFO", ""))
        if self.status is not None:
            tags["status"] = self.status
        if self.error is not None:
            tags["error"] = self.error
        tags.update(self._more_tags())
        profiler._on_stop = _tag_duration
        profiler.stop()
        middleware = self.middleware
        if profiler.discarded:
            middleware.discarded += 1
            return
        middleware.kept += 1
        if middleware.on_profiled is not None:
            middleware.on_profiled(profiler, environ)

    def _more_tags(self) -> dict[str, str]:
        """The app's own tags and ``request_tags``'; a bad one is logged and
        left out: a tag must never break the request."""
        more: dict[str, str] = {}
        sources: list[Callable[[], object]] = [lambda: self.environ.get(TAGS_KEY)]
        function = self.middleware.request_tags
        if function is not None:
            sources.append(lambda: function(self.environ))
        for source in sources:
            try:
                found = source()
                if found is not None:
                    more.update(check_tags(found))
            except Exception as exc:
                _logger.warning("greenprof: request tags left out: %s", exc)
        return more


def _tag_duration(profiler: Profiler, duration_ns: int) -> None:
    # The session's own duration, to the microsecond.
    profiler.tags["duration_ms"] = f"{duration_ns / 1e6:.3f}"


class _ProfiledBody:
    """The app's response iterable; closing it ends the request's profile."""

    def __init__(self, body: Iterable[bytes], finish: Callable[[], None]) -> None:
        self._body = body
        self._finish = finish

    @runs_the_program
    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    @runs_the_program
    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()
