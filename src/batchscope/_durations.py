"""
Validation helpers shared by the option classes: ints and durations, named in errors.
"""

from __future__ import annotations

import math
from datetime import timedelta

__all__ = ["check_int", "to_seconds", "type_name"]


def type_name(value: object) -> str:
    return type(value).__name__


def check_int(name: str, value: object, *, minimum: int) -> None:
    """Raise TypeError unless *value* is an int (not a bool), ValueError if below *minimum*."""
    # bool is an int subclass, but max_batch_size=True is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name!r} must be an int, not {type_name(value)}")
    if value < minimum:
        raise ValueError(f"{name!r} must be >= {minimum}, got {value!r}")


def to_seconds(name: str, value: object) -> float:
    """
    Turn a duration (seconds as int/float, or a ``timedelta``) into float seconds.

    Raises:
        TypeError: *value* is not a number or a timedelta.
        ValueError: *value* is negative or not finite.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"{name!r} must be a number of seconds or a timedelta, not {type_name(value)}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name!r} must be a finite duration >= 0, got {value!r}")
    return seconds
