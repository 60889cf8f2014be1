"""
The options of a BatchScope: one frozen attrs class, every field validated.

Errors are plain ``ValueError``/``TypeError`` whose message names the option, raised when
the scope is constructed (or reconfigured), never later inside the scheduler.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Literal

import attrs

__all__ = ["OnFull", "ScopeConfig", "check_int", "to_seconds"]

OnFull = Literal["wait", "reject"]


def _type_name(value: object) -> str:
    return type(value).__name__


def check_int(name: str, value: object, *, minimum: int) -> None:
    """Raise TypeError unless *value* is an int (not a bool), ValueError if below *minimum*."""
    # bool is an int subclass, but max_batch_size=True is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name!r} must be an int, not {_type_name(value)}")
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
            f"{name!r} must be a number of seconds or a timedelta, not {_type_name(value)}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name!r} must be a finite duration >= 0, got {value!r}")
    return seconds


def _positive_int(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    check_int(attribute.name, value, minimum=1)


def _max_wait(value: float | timedelta) -> float:
    return to_seconds("max_wait", value)


def _on_full(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ("wait", "reject"):
        raise ValueError(f"{attribute.name!r} must be 'wait' or 'reject', got {value!r}")


@attrs.frozen(kw_only=True)
class ScopeConfig:
    """
    The validated options of a :class:`~batchscope.BatchScope`.

    Durations are stored as float seconds whatever the user passed.
    """

    max_batch_size: int = attrs.field(default=32, validator=_positive_int)
    max_wait: float = attrs.field(default=0.005, converter=_max_wait)
    max_queue_size: int = attrs.field(default=10_000, validator=_positive_int)
    on_full: OnFull = attrs.field(default="wait", validator=_on_full)
    max_concurrent_batches: int = attrs.field(default=1, validator=_positive_int)
