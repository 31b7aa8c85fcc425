"""Option checks shared by the objects that take options."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final, TypeGuard

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .typing import Sink

#: The largest count an option may be: a snapshot file, and a protobuf
#: message, holds numbers of 64 bits.
MAX_COUNT: Final = 2**63 - 1


def is_number(value: object) -> TypeGuard[float]:
    """An int or float, and not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def seconds(value: object) -> float | None:
    """``value`` as a float number of seconds (an int too large for a float
    is infinite), or None if it is no number: a bool, NaN, a string."""
    if not is_number(value):
        return None
    try:
        result = float(value)
    except OverflowError:  # 10**400: more seconds than a float holds
        result = math.inf if value > 0 else -math.inf
    return None if math.isnan(result) else result


def check_positive_int(name: str, value: object) -> None:
    """Raise ConfigurationError unless ``value`` is a whole number from 1 to
    :data:`MAX_COUNT`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name} must be a whole number >= 1, not {reprlib.repr(value)}."
        raise ConfigurationError(msg)
    if value > MAX_COUNT:
        msg = (
            f"{name} is {reprlib.repr(value)}, more than a snapshot file can hold: "
            "pass a whole number below 2**63."
        )
        raise ConfigurationError(msg)


def check_sinks(sinks: object) -> list[Sink]:
    """``sinks`` as a list (each one is checked as it is added), or
    ConfigurationError if it is no collection of sinks."""
    if callable(getattr(sinks, "export", None)):
        msg = f"sinks is a list of sinks: pass sinks=[sink], not the {type(sinks).__name__} alone."
        raise ConfigurationError(msg)
    if isinstance(sinks, (str, bytes)) or not isinstance(sinks, Iterable):
        msg = (
            "sinks must be a list of sinks, e.g. sinks=[JSONSink('profile.jsonl')] "
            f"(or left out for none), not {type(sinks).__name__} {reprlib.repr(sinks)}."
        )
        raise ConfigurationError(msg)
    return list(sinks)


def check_wait(name: str, value: object) -> None:
    """Raise ConfigurationError unless ``value`` is seconds to wait: a finite
    number >= 0, or None for no limit (the one way to say it: an infinite
    or NaN deadline would make a wait that never ends, or none at all)."""
    if value is not None and (not is_number(value) or not 0 <= value < math.inf):
        msg = f"{name} must be a number of seconds >= 0 or None (no limit), not {value!r}."
        raise ConfigurationError(msg)


def check_tags(tags: object) -> dict[str, str]:
    """A copy of ``tags`` (None: none), or ConfigurationError unless it maps
    strings to strings."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in tags.items()
    ):
        msg = (
            "tags must map strings to strings, e.g. {'path': '/checkout'}, "
            f"not {tags!r}. Convert numbers with str()."
        )
        raise ConfigurationError(msg)
    return dict(tags)


class Tags(dict[str, str]):
    """A session's tags, checked as they are set: a bad one raises where the
    program sets it, never later inside ``stop()``."""

    def __init__(self, tags: object = None) -> None:
        super().__init__(check_tags(tags))

    @classmethod
    def of_checked(cls, tags: dict[str, str]) -> Tags:
        """A copy of tags that were checked already (a pipeline's defaults)."""
        copy = dict.__new__(cls)
        dict.update(copy, tags)
        return copy

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(*check_tags({key: value}).popitem())

    def setdefault(self, key: str, default: str = "") -> str:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: object, **kwargs: str) -> None:
        super().update(check_tags(dict(*args, **kwargs)))

    def __ior__(self, other: object) -> Tags:  # type: ignore[override,misc]
        self.update(other)
        return self
