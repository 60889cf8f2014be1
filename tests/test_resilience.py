"""batch_timeout, isolate_failures, Retry, CircuitBreaker, RateLimit (virtual time)."""

from __future__ import annotations

import itertools
import random

import anyio
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


class Flaky(Exception):
    """A transient failure."""


async def test_batch_timeout_cancels_async_batch_and_scope_goes_on() -> None:
    """A batch running past batch_timeout is cancelled; its items get TimeoutError."""
    fake = FakeBatchFunction[int, int](delay=10.0)
    async with bs.BatchScope(fake, batch_timeout=1.0, max_wait=0) as scope:
        with pytest.raises(TimeoutError):
            await scope.submit(1)
        assert anyio.current_time() == pytest.approx(1.0)
        assert fake.cancelled_calls == 1
        fake.delay = 0
        assert await scope.submit(2) == 2


async def test_isolate_failures_finds_the_poison_items() -> None:
    """With isolate_failures, only the items that make fn raise fail; the rest succeed."""
    poison = {3, 11}
    calls: list[list[int]] = []

    async def fn(items: list[int]) -> list[int]:
        calls.append(items)
        if poison & set(items):
            raise ValueError(f"poisoned by {sorted(poison & set(items))}")
        return [x * 2 for x in items]

    async with bs.BatchScope(fn, max_batch_size=16, max_wait=0.01, isolate_failures=True) as scope:
        outcomes = await scope.submit_many(range(16), return_exceptions=True)
        stats = scope.statistics()
    for x, outcome in enumerate(outcomes):
        if x in poison:
            assert isinstance(outcome, ValueError)
            assert str(outcome) == f"poisoned by [{x}]"
        else:
            assert outcome == x * 2
    # O(k log n): 2 bad items in 16 cost at most 2 * 2 * log2(16) extra calls.
    assert len(calls) - 1 == stats.isolation_calls <= 16
    assert stats.failed == 2 and stats.completed == 14


async def test_retry_reruns_a_failed_batch_with_backoff() -> None:
    """A transient batch failure is retried after wait_initial, then succeeds."""
    failures = iter([Flaky("1"), Flaky("2")])
    call_times: list[float] = []

    async def fn(items: list[int]) -> list[int]:
        call_times.append(anyio.current_time())
        error = next(failures, None)
        if error is not None:
            raise error
        return items

    retry = bs.Retry(attempts=3, on=Flaky, wait_initial=0.1, wait_jitter=0)
    async with bs.BatchScope(fn, retry=retry, max_wait=0) as scope:
        assert await scope.submit(7) == 7
        assert scope.statistics().retries == 2
    assert [round(b - a, 6) for a, b in itertools.pairwise(call_times)] == [0.1, 0.2]


async def test_retry_gives_up_after_attempts_and_only_on_matching_errors() -> None:
    """attempts counts every call; an exception outside `on` is not retried."""
    calls = 0

    async def always(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        raise Flaky("down")

    async with bs.BatchScope(
        always, retry=bs.Retry(attempts=4, wait_jitter=0), max_wait=0
    ) as scope:
        with pytest.raises(Flaky):
            await scope.submit(1)
    assert calls == 4

    calls = 0
    retry = bs.Retry(attempts=4, on=KeyError, wait_jitter=0)
    async with bs.BatchScope(always, retry=retry, max_wait=0) as scope:
        with pytest.raises(Flaky):
            await scope.submit(1)
    assert calls == 1


async def test_retry_reruns_only_the_failed_items() -> None:
    """With per-item exception results, only the failed items are called again."""
    seen: list[list[int]] = []
    flaky_once = {2, 4}

    async def fn(items: list[int]) -> list[int | Exception]:
        seen.append(items)
        out: list[int | Exception] = []
        for x in items:
            if x in flaky_once:
                flaky_once.discard(x)
                out.append(Flaky(str(x)))
            else:
                out.append(x)
        return out

    async with bs.BatchScope(
        fn, retry=bs.Retry(wait_jitter=0), max_batch_size=5, max_wait=0.01
    ) as scope:
        assert await scope.submit_many(range(5)) == [0, 1, 2, 3, 4]
    assert seen == [[0, 1, 2, 3, 4], [2, 4]]


async def test_retry_timeout_stops_retrying() -> None:
    """Retry(timeout=...) stops retrying once that long has passed since the first call."""
    calls = 0

    async def always(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        raise Flaky("down")

    retry = bs.Retry(attempts=100, wait_initial=1.0, wait_max=1.0, wait_jitter=0, timeout=2.5)
    async with bs.BatchScope(always, retry=retry, max_wait=0) as scope:
        with pytest.raises(Flaky):
            await scope.submit(1)
    assert calls == 3  # at 0, 1 and 2 s: one at 3 s would start after the 2.5 s timeout


async def test_circuit_breaker_opens_fails_fast_and_recovers() -> None:
    """After failure_threshold failed batches submits fail fast; a trial batch closes it."""
    healthy = False

    async def fn(items: list[int]) -> list[int]:
        if not healthy:
            raise Flaky("backend down")
        return items

    breaker = bs.CircuitBreaker(failure_threshold=2, reset_timeout=10.0)
    async with bs.BatchScope(fn, circuit_breaker=breaker, max_wait=0) as scope:
        for _ in range(2):
            with pytest.raises(Flaky):
                await scope.submit(1)
        with pytest.raises(bs.CircuitOpenError, match="circuit breaker"):
            await scope.submit(2)
        await anyio.sleep(10.0)
        healthy = True
        assert await scope.submit(3) == 3  # the trial batch succeeds: closed again
        assert await scope.submit(4) == 4
        stats = scope.statistics()
    assert stats.rejected == 1


async def test_circuit_breaker_trial_failure_reopens() -> None:
    """A failed trial batch opens the breaker again for another reset_timeout."""

    async def fn(items: list[int]) -> list[int]:
        raise Flaky("still down")

    breaker = bs.CircuitBreaker(failure_threshold=1, reset_timeout=5.0)
    async with bs.BatchScope(fn, circuit_breaker=breaker, max_wait=0) as scope:
        with pytest.raises(Flaky):
            await scope.submit(1)
        await anyio.sleep(5.0)
        with pytest.raises(Flaky):
            await scope.submit(2)  # the trial
        with pytest.raises(bs.CircuitOpenError):
            await scope.submit(3)


async def test_rate_limit_bounds_batches_per_second() -> None:
    """RateLimit(batches_per_second=10): 30 one-item batches take about 2 s after a burst."""
    fake = FakeBatchFunction[int, int]()
    limit = bs.RateLimit(batches_per_second=10)
    async with bs.BatchScope(fake, rate_limit=limit, max_batch_size=1, max_wait=0) as scope:
        start = anyio.current_time()
        await scope.submit_many(range(30))
        elapsed = anyio.current_time() - start
    assert elapsed == pytest.approx(2.0, abs=0.11)  # 10 in the first second's burst...
    gaps = [b - a for a, b in itertools.pairwise(fake.call_times[10:])]
    assert all(gap == pytest.approx(0.1, abs=1e-6) for gap in gaps)


async def test_rate_limit_bounds_cost_per_minute() -> None:
    """RateLimit(cost_per_minute=600): calls spend their items' cost; oversize ones still go."""
    fake = FakeBatchFunction[str, str]()
    limit = bs.RateLimit(cost_per_minute=600)
    async with bs.BatchScope(
        fake, rate_limit=limit, cost=len, max_batch_size=1, max_wait=0
    ) as scope:
        await scope.submit_many(["x" * 300, "x" * 300, "x" * 300, "x" * 900])
    # 600 burst: two go at once, then 300 tokens take 30 s, then a full bucket (60 s).
    assert fake.call_times == pytest.approx([0.0, 0.0, 30.0, 90.0])


async def test_chaos_every_submit_ends_once_with_the_right_outcome() -> None:
    """10,000 submits through a flaky fn with retry + isolation + cache + timeout: all end right."""
    rng = random.Random(42)
    hang = {x for x in range(10_000) if rng.random() < 0.002}
    poison = {x for x in range(10_000) if rng.random() < 0.01}
    flaky_item = {x for x in range(10_000) if rng.random() < 0.05}
    calls = 0

    async def fn(items: list[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        if hang & set(items):
            await anyio.sleep(60)  # cut by batch_timeout
        if poison & set(items):
            raise ValueError("poison")
        if rng.random() < 0.05:
            raise Flaky("transient batch failure")
        out: list[int | Exception] = []
        for x in items:
            if x in flaky_item and rng.random() < 0.5:
                out.append(Flaky(f"item {x}"))
            else:
                out.append(x + 1)
        return out

    retry = bs.Retry(attempts=3, on=Flaky, wait_initial=0.01, wait_max=0.05)
    outcomes: dict[int, list[object]] = {}
    async with bs.BatchScope(
        fn,
        max_batch_size=32,
        max_wait=0.002,
        max_concurrent_batches=4,
        batch_timeout=1.0,
        isolate_failures=True,
        retry=retry,
        cache={},
    ) as scope:

        async def caller(x: int) -> None:
            try:
                outcomes.setdefault(x, []).append(await scope.submit(x))
            except (ValueError, Flaky, TimeoutError) as exc:
                outcomes.setdefault(x, []).append(exc)

        async with anyio.create_task_group() as tg:
            for x in range(9_000):
                tg.start_soon(caller, x)
        async with anyio.create_task_group() as tg:
            for x in range(1_000):  # repeats: successes come from the cache
                tg.start_soon(caller, x)
    stats = scope.statistics()
    assert sum(len(v) for v in outcomes.values()) == 10_000
    for x, ends in outcomes.items():
        for end in ends:
            if isinstance(end, int):
                assert end == x + 1
            elif isinstance(end, ValueError):
                assert x in poison
            elif isinstance(end, TimeoutError):
                assert x in hang
    assert stats.submitted == 10_000
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled + stats.rejected
    assert stats.cache_hits == sum(
        isinstance(ends[0], int) for x, ends in outcomes.items() if x < 1000
    )
    assert stats.retries > 0 and stats.isolation_calls > 0
