"""A profiler's options, checked once: a request-scoped profiler (the
decorator, the middleware) makes them once, not once per request."""

from __future__ import annotations

import reprlib
import threading
from collections.abc import Callable
from typing import Any, Final

import attrs
import greenlet

from ._validate import check_positive_int, check_tags, check_wait, seconds
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
#: The longest: 2**62 ns (146 years), so that periods add up without overflow.
MAX_DUMP_PERIOD: Final = 2**62 / 1e9


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
    #: Every greenlet of the session's threads, not only those it spawned.
    follow_all: bool = False
    only: Callable[[greenlet.greenlet], bool] | None = None
    #: False: snapshots handed to the sinks are not kept (long runs).
    keep_snapshots: bool = True
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
        period = seconds(self.dump_period)
        if period is None or not period >= MIN_DUMP_PERIOD:
            msg = (
                f"dump_period is in seconds and must be at least {MIN_DUMP_PERIOD} "
                f"(1 ms), not {reprlib.repr(self.dump_period)}."
            )
            raise ConfigurationError(msg)
        if period > MAX_DUMP_PERIOD:
            msg = (
                f"dump_period is in seconds; {reprlib.repr(self.dump_period)} is longer than "
                f"a program runs. Pass a period like {DEFAULT_DUMP_PERIOD} (10 ms) or a few "
                "seconds."
            )
            raise ConfigurationError(msg)
        min_duration = seconds(self.min_duration)
        if min_duration is None or not min_duration >= 0:
            msg = (
                "min_duration is in seconds and must be >= 0 (float('inf') keeps no "
                f"session), not {reprlib.repr(self.min_duration)}."
            )
            raise ConfigurationError(msg)
        check_positive_int("max_snapshots", self.max_snapshots)
        check_positive_int("max_depth", self.max_depth)
        check_wait("flush_timeout", self.flush_timeout)
        timeout = self.flush_timeout if self.flush_timeout is None else seconds(self.flush_timeout)
        for name in ("follow_spawned", "follow_all", "keep_snapshots"):
            if type(getattr(self, name)) is not bool:
                msg = (
                    f"{name} must be True or False, not {getattr(self, name)!r}: "
                    "any other value would be taken as one of them."
                )
                raise ConfigurationError(msg)
        for name in ("follow_spawned", "follow_all"):
            if getattr(self, name) and mode == "thread":
                msg = (
                    f"{name} needs switch snapshots: use mode='greenlet' or "
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
        # Following every greenlet follows what they spawn, with its parent.
        object.__setattr__(self, "follow_spawned", self.follow_spawned or self.follow_all)
        object.__setattr__(self, "tags", check_tags(self.tags))
        # Floats from here: an int of seconds may be too large to multiply into one.
        object.__setattr__(self, "dump_period", period)
        object.__setattr__(self, "min_duration", min_duration)
        # A timeout longer than a lock can wait (10**400 s) is none: a
        # sink's wait would refuse it. (Infinity is refused above: None is
        # the way to say "no limit".)
        forever = timeout is not None and timeout > threading.TIMEOUT_MAX
        object.__setattr__(self, "flush_timeout", None if forever else timeout)
        object.__setattr__(self, "period_ns", round(period * 1e9))
        # Longer than any session (292 years): keep none, as float('inf') does.
        min_ns = 2**63 if min_duration * 1e9 >= 2**63 else round(min_duration * 1e9)
        object.__setattr__(self, "min_duration_ns", min_ns)

    @classmethod
    def of(cls, **options: Any) -> Options:
        """Options from ``Profiler``'s keywords (``tags=None``: none)."""
        if options.get("tags", ()) is None:
            del options["tags"]
        return cls(**options)
