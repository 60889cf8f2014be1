"""Options are validated at construction; errors name the option."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction


def fn(items: list[int]) -> list[int]:
    return items


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_batch_size": 0}, ValueError, "'max_batch_size' must be >= 1"),
        ({"max_batch_size": 2.5}, TypeError, "'max_batch_size' must be an int"),
        ({"max_batch_size": True}, TypeError, "'max_batch_size' must be an int"),
        ({"max_wait": -0.1}, ValueError, "'max_wait' must be a finite duration"),
        ({"max_wait": float("nan")}, ValueError, "'max_wait' must be a finite duration"),
        ({"max_wait": "5ms"}, TypeError, "'max_wait' must be a number of seconds"),
        ({"max_queue_size": 0}, ValueError, "'max_queue_size' must be >= 1"),
        ({"on_full": "drop"}, ValueError, "'on_full' must be one of 'wait', 'reject'"),
        ({"max_concurrent_batches": 0}, ValueError, "'max_concurrent_batches' must be >= 1"),
        ({"max_wait": "auto"}, ValueError, "max_wait='auto' needs 'target_latency'"),
        ({"target_latency": 0.1}, ValueError, "'target_latency' applies only with"),
        ({"max_wait": "auto", "target_latency": 0}, ValueError, "'target_latency' must be > 0"),
        ({"cost": 3}, TypeError, "'cost' must be callable"),
        ({"max_batch_cost": 10}, ValueError, "'max_batch_cost' needs a 'cost' function"),
        ({"cost": len, "max_batch_cost": 0}, ValueError, "'max_batch_cost' must be a finite"),
        ({"cost": len, "max_batch_cost": "9"}, TypeError, "'max_batch_cost' must be a number"),
        ({"cost_mode": "max"}, ValueError, "'cost_mode' must be one of 'padded', 'sum'"),
        ({"oversize": "drop"}, ValueError, "'oversize' must be one of 'run_alone', 'reject'"),
        ({"policy": "lifo"}, ValueError, "'policy' must be one of 'fifo', 'length'"),
        ({"policy": "length"}, ValueError, "policy='length' needs a 'cost' function"),
        ({"aging": -1}, ValueError, "'aging' must be a finite duration"),
    ],
)
def test_invalid_option_names_itself(options: dict[str, Any], error: type, message: str) -> None:
    """Each invalid option raises ValueError/TypeError whose message names it."""
    with pytest.raises(error, match=message):
        bs.BatchScope(fn, **options)


def test_unknown_option_is_a_type_error() -> None:
    """An option that does not exist is rejected (no silent typos)."""
    with pytest.raises(TypeError, match="max_batchsize"):
        bs.BatchScope(fn, max_batchsize=3)  # type: ignore[call-overload]


def test_fn_must_be_callable() -> None:
    """A non-callable fn is a TypeError naming 'fn'."""
    with pytest.raises(TypeError, match="'fn' must be callable"):
        bs.BatchScope(42)  # type: ignore[call-overload]


def test_durations_accept_timedelta() -> None:
    """max_wait takes a timedelta, stored as float seconds."""
    scope = bs.BatchScope(fn, max_wait=timedelta(milliseconds=3))
    assert scope.config.max_wait == pytest.approx(0.003)


def test_configure_validates_and_changes_nothing_on_error() -> None:
    """configure() validates like the constructor; a bad value leaves the config as it was."""
    scope = bs.BatchScope(FakeBatchFunction[int, int](), max_batch_size=8)
    with pytest.raises(ValueError, match="'max_batch_size'"):
        scope.configure(max_batch_size=0)
    assert scope.config.max_batch_size == 8
    scope.configure(max_batch_size=16, max_wait=timedelta(seconds=1), max_concurrent_batches=2)
    assert (scope.config.max_batch_size, scope.config.max_wait) == (16, 1.0)
    assert scope.config.max_concurrent_batches == 2


def test_configure_switches_to_auto_wait() -> None:
    """configure(max_wait='auto', target_latency=...) is accepted; 'auto' alone is not."""
    scope = bs.BatchScope(FakeBatchFunction[int, int]())
    with pytest.raises(ValueError, match="needs 'target_latency'"):
        scope.configure(max_wait="auto")
    scope.configure(max_wait="auto", target_latency=0.05)
    assert (scope.config.max_wait, scope.config.target_latency) == ("auto", 0.05)
    scope.configure(max_wait=0.01)
    assert (scope.config.max_wait, scope.config.target_latency) == (0.01, None)
