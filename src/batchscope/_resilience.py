"""
Resilience: retry with backoff, a circuit breaker, and rate limits, on AnyIO's clock.

The public objects (:class:`Retry`, :class:`CircuitBreaker`, :class:`RateLimit`) are
frozen, validated option values; each scope keeps its own running state for them
(:class:`BreakerState`, :class:`TokenBucket`). Every wait is an ``anyio.sleep`` and every
reading of time is ``anyio.current_time()``, so virtual clocks (Trio's MockClock) drive
them in tests.

Backoff is computed here rather than with stamina/tenacity: tenacity measures its
``timeout`` on the process's monotonic clock, outside AnyIO's clock, which virtual clocks cannot
drive; the formula itself is three lines.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any, Literal, cast, final

import anyio
import attrs

from ._durations import optional_positive_number, positive_int, to_seconds

__all__ = ["BreakerState", "CircuitBreaker", "RateLimit", "Retry", "TokenBucket"]


def _wait_initial(value: float | timedelta) -> float:
    return to_seconds("wait_initial", value)


def _wait_max(value: float | timedelta) -> float:
    return to_seconds("wait_max", value)


def _wait_jitter(value: float | timedelta) -> float:
    return to_seconds("wait_jitter", value)


def _timeout(value: float | timedelta | None) -> float | None:
    return None if value is None else to_seconds("timeout", value)


def _reset_timeout(value: float | timedelta) -> float:
    return to_seconds("reset_timeout", value)


def _exception_types(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    types: tuple[object, ...] = (
        cast("tuple[object, ...]", value) if isinstance(value, tuple) else (value,)
    )
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(
                f"{attribute.name!r} must be an Exception subclass or a tuple of them, "
                f"got {value!r}"
            )


@final
@attrs.frozen(kw_only=True)
class Retry:
    """
    Rerun failed batches, with exponential backoff and jitter.

    A batch whose call raises one of *on* is called again; with per-item exception
    results, only the items whose result is one of *on* are called again. The wait
    before retry *n* (1-based) is ``min(wait_max, wait_initial * 2 ** (n - 1) +
    uniform(0, wait_jitter))``.

    Args:
        attempts: Calls in all, the first included (so 1 means no retry).
        on: The exception type(s) worth retrying.
        wait_initial: The first wait, in seconds.
        wait_max: The cap on every wait, jitter included.
        wait_jitter: The most random seconds added to each wait.
        timeout: No retry starts later than this many seconds after the first call (a
            call in progress is not cut short: use ``batch_timeout`` for that).

    .. versionadded:: 0.1.0
    """

    attempts: int = attrs.field(default=3, validator=positive_int)
    on: type[Exception] | tuple[type[Exception], ...] = attrs.field(
        default=Exception, validator=_exception_types
    )
    wait_initial: float = attrs.field(default=0.1, converter=_wait_initial)
    wait_max: float = attrs.field(default=5.0, converter=_wait_max)
    wait_jitter: float = attrs.field(default=1.0, converter=_wait_jitter)
    timeout: float | None = attrs.field(default=None, converter=_timeout)

    def wait(self, retry: int, rng: random.Random | None = None) -> float:
        """The seconds to wait before retry number *retry* (1 for the first retry)."""
        uniform = random.uniform if rng is None else rng.uniform
        jitter = uniform(0, self.wait_jitter) if self.wait_jitter else 0.0
        return min(self.wait_max, self.wait_initial * 2.0 ** (retry - 1) + jitter)


@final
@attrs.frozen(kw_only=True)
class CircuitBreaker:
    """
    Fail fast while the batch function is failing.

    After *failure_threshold* consecutive batches fail (their call raised, after any
    retries), the breaker opens: submits fail at once with :class:`CircuitOpenError`, and
    batches already queued fail with it instead of calling fn. After *reset_timeout*
    seconds it lets one trial batch through (half-open): success closes it, failure opens
    it again.

    .. versionadded:: 0.1.0
    """

    failure_threshold: int = attrs.field(default=5, validator=positive_int)
    reset_timeout: float = attrs.field(default=30.0, converter=_reset_timeout)


@final
@attrs.frozen(kw_only=True)
class RateLimit:
    """
    Bound how fast batches go out: the quotas of remote APIs.

    Args:
        batches_per_second: Calls of fn per second (requests per second), with a burst
            of one second's worth.
        cost_per_minute: Cost units per minute (tokens per minute): each call spends the
            summed cost of its items (or its item count without a ``cost`` function),
            with a burst of one minute's worth. A single call costlier than the whole
            burst waits for a full bucket and then goes, so nothing waits forever.

    .. versionadded:: 0.1.0
    """

    batches_per_second: float | None = attrs.field(default=None, validator=optional_positive_number)
    cost_per_minute: float | None = attrs.field(default=None, validator=optional_positive_number)

    def __attrs_post_init__(self) -> None:
        if self.batches_per_second is None and self.cost_per_minute is None:
            raise ValueError("RateLimit needs 'batches_per_second' or 'cost_per_minute'")


class TokenBucket:
    """A token bucket on AnyIO's clock; callers queue fairly behind a lock."""

    def __init__(self, rate: float, capacity: float) -> None:
        self._rate = rate  # tokens per second
        self._capacity = capacity
        self._tokens = capacity
        self._stamp: float | None = None
        self._lock = anyio.Lock()

    async def take(self, amount: float) -> None:
        """
        Wait until *amount* tokens (at most a full bucket) are there, then spend them.

        Cancellation: nothing is spent unless the wait completed.
        """
        async with self._lock:
            while True:
                now = anyio.current_time()
                if self._stamp is not None:
                    elapsed = now - self._stamp
                    self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
                self._stamp = now
                needed = min(amount, self._capacity)
                # A hair of tolerance: clocks with coarse resolution (virtual ones) must
                # not leave us a rounding error short forever.
                if self._tokens >= needed - 1e-9 * max(1.0, needed):
                    self._tokens -= amount  # may go negative: the debt delays the next
                    return
                await anyio.sleep((needed - self._tokens) / self._rate)


class BreakerState:
    """A scope's circuit breaker: closed, open, or half-open with one trial batch."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._failures = 0
        self._opened_at: float | None = None
        self.trial_running: bool = False

    def is_open(self) -> bool:
        """Whether submits must fail fast now (open, and not yet due for a trial)."""
        opened = self._opened_at
        return opened is not None and anyio.current_time() < opened + self._breaker.reset_timeout

    def reopens_in(self) -> float:
        """Seconds until the breaker lets a trial batch through (0.0 when not open)."""
        opened = self._opened_at
        if opened is None:
            return 0.0
        return max(0.0, opened + self._breaker.reset_timeout - anyio.current_time())

    @property
    def half_open(self) -> bool:
        """Open but due for a trial: at most one batch may run."""
        return self._opened_at is not None and not self.is_open()

    def allow_batch(self) -> bool:
        """Whether a batch may call fn now; the first one after reset_timeout is the trial."""
        if self._opened_at is None:
            return True
        if self.is_open() or self.trial_running:
            return False
        self.trial_running = True
        return True

    def record(self, failed: bool) -> Literal["opened", "closed"] | None:
        """A batch that was allowed has ended, its call failed or not; return the change."""
        self.trial_running = False
        was_open = self._opened_at is not None
        if not failed:
            self._failures = 0
            self._opened_at = None
            return "closed" if was_open else None
        self._failures += 1
        if was_open or self._failures >= self._breaker.failure_threshold:
            self._opened_at = anyio.current_time()
            return None if was_open else "opened"
        return None
