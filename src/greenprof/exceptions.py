"""Every exception greenprof raises on purpose.

Each message says what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AlreadyProfilingError",
    "ConfigurationError",
    "DeadGreenletError",
    "GreenprofError",
    "InvalidSinkError",
    "LoadError",
    "MissingDependencyError",
    "NotAGreenletError",
    "NotMainThreadError",
    "NotRunningError",
    "SinkClosedError",
    "UnknownSinkError",
    "UnsupportedFormatError",
    "WireFormatError",
    "WrongThreadError",
]


class GreenprofError(Exception):
    """Base class of every error greenprof raises on purpose."""


class ConfigurationError(GreenprofError, ValueError):
    """An option has a value greenprof cannot work with."""


class NotAGreenletError(GreenprofError, TypeError):
    """A profiling target is not a ``greenlet.greenlet``."""


class DeadGreenletError(GreenprofError, ValueError):
    """A profiling target has already finished and will never switch again."""


class WrongThreadError(GreenprofError, ValueError):
    """A profiling target belongs to another OS thread than the caller."""


class NotMainThreadError(ConfigurationError, WrongThreadError):
    """Something only the main thread can do (installing a signal handler)
    was called from another OS thread."""


class AlreadyProfilingError(GreenprofError, RuntimeError):
    """A profiler was asked to start a target it is already profiling."""


class NotRunningError(GreenprofError, RuntimeError):
    """A profiler was asked to stop but profiles nothing."""


class InvalidSinkError(GreenprofError, TypeError):
    """An object registered as a sink lacks the sink methods."""


class UnknownSinkError(GreenprofError, ValueError):
    """A sink was removed from a profiler it was never added to."""


class SinkClosedError(GreenprofError, RuntimeError):
    """A sink was used after ``close()``."""


class LoadError(GreenprofError, ValueError):
    """A snapshot file could not be read."""


class UnsupportedFormatError(LoadError):
    """A snapshot file was written in a format or version this greenprof does not read."""


class WireFormatError(GreenprofError, ValueError):
    """Protobuf bytes that are not the message they should be (a collector's
    answer), or a number protobuf's 64-bit varints cannot hold."""


class MissingDependencyError(GreenprofError, ImportError):
    """A feature needs an optional dependency; the message names the extra."""
