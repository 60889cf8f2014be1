"""
Validation helpers shared by the option classes: ints, numbers and durations, named in errors.

The one home of the validators that more than one option class uses (:class:`ScopeConfig`
in ``_config``, :class:`ContinuousConfig`, the resilience objects, the array collators,
the Ray pool); ``tests/test_layers.py`` fails on a copy of one elsewhere. It sits below
``_config`` because ``_config`` imports the resilience objects, which validate with these.
Also here, as the lowest module every package imports: :func:`fix_module_names`, which
the package ``__init__`` modules share.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from types import FunctionType
from typing import Any, cast

import attrs

__all__ = [
    "check_int",
    "check_priority",
    "checked_cost",
    "choice",
    "fix_module_names",
    "optional_callable",
    "optional_positive_number",
    "positive_int",
    "positive_seconds",
    "to_seconds",
    "type_name",
]

#: The signature of an attrs validator.
Validator = Callable[[Any, "attrs.Attribute[Any]", object], None]


def type_name(value: object) -> str:
    """The short type name used in error messages."""
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


def positive_seconds(name: str, value: object) -> float:
    """:func:`to_seconds`, and ValueError for zero: a duration that must be above zero."""
    seconds = to_seconds(name, value)
    if seconds == 0:
        raise ValueError(f"{name!r} must be > 0, got {value!r}")
    return seconds


def optional_positive_number(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    """An attrs validator: None, or a finite int/float (not a bool) above zero."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name!r} must be a number, not {type_name(value)}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name!r} must be a finite number > 0, got {value!r}")


def positive_int(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    """An attrs validator: an int (not a bool) >= 1."""
    check_int(attribute.name, value, minimum=1)


def optional_callable(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    """An attrs validator: None or a callable."""
    if value is not None and not callable(value):
        raise TypeError(f"{attribute.name!r} must be callable, not {type_name(value)}")


def choice(*allowed: str) -> Validator:
    """An attrs validator: one of *allowed* (an option's ``Literal``, via ``get_args``)."""

    def validate(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in allowed:
            options = ", ".join(repr(a) for a in allowed)
            raise ValueError(f"{attribute.name!r} must be one of {options}, got {value!r}")

    return validate


def check_priority(priority: object) -> None:
    """A submit's ``priority``: a finite real number, not a bool (TypeError, ValueError)."""
    kind = type(priority)
    if kind is int:
        return  # the common case, without the checks below (per-item path)
    if kind is not float:
        if isinstance(priority, bool) or not isinstance(priority, numbers.Real):
            raise TypeError(f"'priority' must be a number, not {kind.__name__}")
        if isinstance(priority, numbers.Integral):
            return
    if not math.isfinite(cast(float, priority)):
        # NaN compares false with everything (it would starve in the priority heap);
        # an infinite rank defeats aging.
        raise ValueError(f"'priority' must be a finite number, got {priority}")


def checked_cost(value: Any, cost_fn: Callable[[Any], float]) -> float:
    """
    *value*'s cost by the ``cost`` option's *cost_fn*: a finite number >= 0; raises for
    this item (ValueError if *cost_fn* raised or gave a bad number, TypeError if not one).
    """
    try:
        cost: object = cost_fn(value)
    except Exception as exc:
        raise ValueError(
            f"the 'cost' function raised {type(exc).__name__} for this item: {exc}"
        ) from exc
    kind = type(cost)
    if (kind is int or kind is float) and 0 <= cost < math.inf:  # type: ignore[operator]
        return float(cost)  # type: ignore[arg-type]  # the common case (per-item path)
    if isinstance(cost, bool) or not isinstance(cost, numbers.Real):
        raise TypeError(f"the 'cost' function must return a number, got {type_name(cost)}")
    cost = float(cost)
    if not math.isfinite(cost) or cost < 0:
        raise ValueError(f"the 'cost' function must return a finite number >= 0, got {cost}")
    return cost


def fix_module_names(package: str, namespace: Mapping[str, Any], names: Iterable[str]) -> None:
    """
    Give the objects *package* re-exports its public name as their ``__module__``.

    Tracebacks and reprs then say ``batchscope.ScopeClosedError``, not the private module
    (trio's ``fixup_module_metadata``, anyio's ``fix_package_names``). An exported
    instance (a sentinel such as ``MISSING``) has its class renamed.
    """
    for name in names:
        obj: object = namespace[name]
        if not isinstance(obj, (type, FunctionType)):
            obj = type(obj)
        if getattr(obj, "__module__", "").startswith(f"{package}."):
            obj.__module__ = package
