"""A profiler's options, checked once: a request-scoped profiler (the
decorator, the middleware) makes them once, not once per request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs
import greenlet

from ._validate import check_positive_int, check_tags, check_wait, is_number
from .exceptions import ConfigurationError
from .snapshot import MODES

__all__ = [
    "DEFAULT_DUMP_PERIOD",
    "DEFAULT_FLUSH_TIMEOUT",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_SNAPSHOTS",
    "MIN_DUMP_PERIOD",
    "Options",
]

#: Snapshots a session keeps per greenlet; later ones are dropped and counted.
DEFAULT_MAX_SNAPSHOTS: Final = 10_000
#: Frames kept per snapshot, innermost first (SkyWalking's agent keeps 500).
DEFAULT_MAX_DEPTH: Final = 128
#: Seconds ``flush()`` gives the sinks, all together.
DEFAULT_FLUSH_TIMEOUT: Final = 5.0
#: Seconds between two samples in ``hybrid`` and ``thread`` modes.
DEFAULT_DUMP_PERIOD: Final = 0.010
#: The shortest dump period greenprof accepts.
MIN_DUMP_PERIOD: Final = 0.001


@attrs.frozen(kw_only=True)
class Options:
    """What a :class:`~greenprof.Profiler` was asked to do; see README.rst,
    "Three ways to use it", for each option."""

    max_snapshots: int = DEFAULT_MAX_SNAPSHOTS
    max_depth: int = DEFAULT_MAX_DEPTH
    flush_timeout: float | None = DEFAULT_FLUSH_TIMEOUT
    mode: str = "greenlet"
    dump_period: float = DEFAULT_DUMP_PERIOD
    min_duration: float = 0.0
    follow_spawned: bool = False
    only: Callable[[greenlet.greenlet], bool] | None = None
    #: Every session starts with these tags.
    tags: dict[str, str] = attrs.field(factory=dict)
    #: The dump period and ``min_duration`` in nanoseconds.
    period_ns: int = attrs.field(init=False, default=0)
    min_duration_ns: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        mode, only = self.mode, self.only
        if mode not in MODES:
            msg = f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}."
            raise ConfigurationError(msg)
        if not is_number(self.dump_period) or not self.dump_period >= MIN_DUMP_PERIOD:
            msg = (
                f"dump_period is in seconds and must be at least {MIN_DUMP_PERIOD} "
                f"(1 ms), not {self.dump_period!r}."
            )
            raise ConfigurationError(msg)
        if self.dump_period * 1e9 > 2**62:
            msg = f"dump_period is in seconds; {self.dump_period!r} is longer than a program runs."
            raise ConfigurationError(msg)
        if not is_number(self.min_duration) or not self.min_duration >= 0:
            msg = f"min_duration is in seconds and must be >= 0, not {self.min_duration!r}."
            raise ConfigurationError(msg)
        check_positive_int("max_snapshots", self.max_snapshots)
        check_positive_int("max_depth", self.max_depth)
        check_wait("flush_timeout", self.flush_timeout)
        if self.follow_spawned and mode == "thread":
            msg = (
                "follow_spawned needs switch snapshots: use mode='greenlet' or "
                "'hybrid' with it (thread mode samples every greenlet anyway)."
            )
            raise ConfigurationError(msg)
        if only is not None and not callable(only):
            msg = (
                "only must be a function that takes a greenlet and returns whether "
                f"to record it, not {type(only).__name__} {only!r}."
            )
            raise ConfigurationError(msg)
        if only is not None and mode == "thread":
            msg = (
                "only picks greenlets by their switches: use mode='greenlet' or "
                "'hybrid' with it (thread mode samples whichever greenlet runs)."
            )
            raise ConfigurationError(msg)
        object.__setattr__(self, "follow_spawned", bool(self.follow_spawned))
        object.__setattr__(self, "tags", check_tags(self.tags))
        object.__setattr__(self, "period_ns", round(self.dump_period * 1e9))
        min_ns = 2**63 if self.min_duration == float("inf") else round(self.min_duration * 1e9)
        object.__setattr__(self, "min_duration_ns", min_ns)

    @classmethod
    def of(cls, **options: Any) -> Options:
        """Options from ``Profiler``'s keywords (``tags=None``: none)."""
        if options.get("tags", ()) is None:
            del options["tags"]
        return cls(**options)
