"""Option checks shared by the objects that take options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeGuard

from .exceptions import ConfigurationError


def is_number(value: object) -> TypeGuard[float]:
    """An int or float, and not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> None:
    """Raise ConfigurationError unless ``value`` is a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name} must be a whole number >= 1, not {value!r}."
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
