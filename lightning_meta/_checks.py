"""Argument checks shared across the package, with errors that name the owner, the argument and the value."""

from __future__ import annotations

from typing import Any


def positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` if it is a positive integer (a bool is not one); else a ``ValueError`` naming ``owner``'s ``name``.

    Example:
        >>> positive_int("Conv4", "hidden", 64)
        64
        >>> positive_int("Conv4", "hidden", 0)
        Traceback (most recent call last):
        ...
        ValueError: Conv4: hidden must be a positive integer, got 0.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}.")
    return value
