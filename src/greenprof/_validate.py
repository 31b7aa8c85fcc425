"""Option checks shared by the objects that take options."""

from __future__ import annotations

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
