"""Option checks shared by the objects that take options."""

from __future__ import annotations

from .exceptions import ConfigurationError


def check_positive_int(name: str, value: object) -> None:
    """Raise ConfigurationError unless ``value`` is a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name} must be a whole number >= 1, not {value!r}."
        raise ConfigurationError(msg)
