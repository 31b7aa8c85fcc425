"""``greenprof.profile``: a context manager and a decorator over :class:`Profiler`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

import greenlet

from ._entries import runs_the_program
from ._options import Options
from ._pipeline import Pipeline
from ._profiler import Profiler
from .exceptions import ConfigurationError, NotAGreenletError
from .typing import Sink

F = TypeVar("F", bound=Callable[..., Any])


class ProfileScope:
    """What :func:`profile` returns: enter it, or decorate a function with it.

    Every ``with`` block and every call of a decorated function gets a fresh
    :class:`Profiler` sharing this scope's sinks, options and clock, made
    once here (checked now, not at the first request).
    """

    def __init__(
        self,
        target: greenlet.greenlet | None,
        *,
        sinks: Iterable[Sink],
        options: dict[str, Any],
    ) -> None:
        self.target = target
        self._pipeline = Pipeline(Options.of(**options), sinks)
        # Profilers of the open ``with`` blocks, per greenlet: one scope may
        # be entered by many greenlets at once.
        self._open: dict[int, list[Profiler]] = {}

    @property
    def sinks(self) -> list[Sink]:
        return self._pipeline.delivery.sinks

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every sink sent what the calls handed it (``timeout``
        seconds in all, default ``flush_timeout``): ``stop()`` never waits."""
        return self._pipeline.flush(timeout)

    def start(self, target: greenlet.greenlet | None = None) -> Profiler:
        """A profiler of this scope, started on ``target`` (default: the
        scope's, else the calling greenlet): for code that cannot use a
        ``with`` block or a decorator. Stop it with its ``stop()``."""
        profiler = Profiler._of(self._pipeline)
        profiler.start(target if target is not None else self.target)
        return profiler

    def __enter__(self) -> Profiler:
        profiler = Profiler._of(self._pipeline)
        profiler.start(self.target)
        self._open.setdefault(id(greenlet.getcurrent()), []).append(profiler)
        return profiler

    def __exit__(self, *exc_info: object) -> None:
        key = id(greenlet.getcurrent())
        stack = self._open.get(key)
        if not stack:
            return
        profiler = stack.pop()
        if not stack:
            del self._open[key]
        if profiler.is_running:
            profiler.stop()

    def __call__(self, func: F) -> F:
        if self.target is not None:
            msg = (
                "profile(greenlet) profiles that greenlet in a with block; to "
                "decorate a function use @profile or @profile(sinks=...), which "
                "profile whichever greenlet runs each call."
            )
            raise ConfigurationError(msg)
        if not callable(func):
            msg = f"@profile decorates functions, not {type(func).__name__} objects."
            raise ConfigurationError(msg)
        if inspect.isgeneratorfunction(func) or inspect.iscoroutinefunction(func):
            msg = (
                f"@profile cannot decorate {func.__qualname__}: it is a generator "
                "or coroutine function, whose body runs after the call returns. "
                "Use `with greenprof.profile():` inside it instead."
            )
            raise ConfigurationError(msg)

        @runs_the_program
        @functools.wraps(func)
        def profiled(*args: Any, **kwargs: Any) -> Any:
            profiler = Profiler._of(self._pipeline)
            profiler.start()
            try:
                return func(*args, **kwargs)
            finally:
                profiler.stop()

        return profiled  # type: ignore[return-value]


@overload
def profile(target: F, /) -> F: ...
@overload
def profile(
    target: greenlet.greenlet | None = None, /, *, sinks: Iterable[Sink] = (), **options: Any
) -> ProfileScope: ...
def profile(target: Any = None, /, *, sinks: Iterable[Sink] = (), **options: Any) -> Any:
    """Profile a greenlet in a ``with`` block, or every call of a function.

    - ``with profile(g) as profiler:`` profiles ``g`` (default: the current
      greenlet) for the block; ``profiler`` is a :class:`Profiler`.
    - ``@profile`` / ``@profile(sinks=[...])`` on a function profiles the
      greenlet running each call, from entry to return, and hands the result
      to the sinks when the call returns.

    ``options`` are :class:`Profiler`'s: ``max_snapshots``, ``max_depth``,
    ``flush_timeout``, ``mode``, ``dump_period``, ``min_duration``,
    ``follow_spawned``, ``follow_all``, ``only`` and ``tags``.
    """
    if target is None or isinstance(target, greenlet.greenlet):
        return ProfileScope(target, sinks=sinks, options=options)
    if callable(target) and not options:
        return ProfileScope(None, sinks=sinks, options=options)(target)
    msg = (
        f"profile() takes a greenlet to profile, a function to decorate, or "
        f"nothing (the current greenlet), not {type(target).__name__} {target!r}."
    )
    raise NotAGreenletError(msg)
