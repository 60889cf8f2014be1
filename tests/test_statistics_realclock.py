"""
Statistics on a real clock, under load: the invariant holds at every moment, and at the
end each counter equals what the callers saw.

A sampler reads ``statistics()`` every millisecond while callers race the scope:
timeouts landing as batches end, failing batches, backpressure, a slow async cache,
deduplicated callers leaving. Every caller (``submit``, ``submit_many``, ``map``) keeps a
ledger of what it saw: a result, an exception, or its own cancellation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import pytest

import batchscope as bs

pytestmark = [pytest.mark.anyio, pytest.mark.realclock]

#: Batches end, and callers give up, on multiples of this (seconds): so they collide.
TICK = 0.004


def adds_up(stats: bs.BatchStatistics) -> bool:
    """The invariant, at any moment."""
    ended = stats.completed + stats.failed + stats.cancelled + stats.rejected
    return stats.submitted == ended + stats.admitting + stats.pending + stats.running


async def until_tick(ticks: int = 1) -> None:
    """Sleep until a later multiple of TICK (where callers' deadlines fall too)."""
    await anyio.sleep_until((math.floor(anyio.current_time() / TICK) + ticks) * TICK)


class Sampler:
    """Reads the statistics every millisecond; keeps every snapshot that does not add up."""

    def __init__(self, scope: bs.BatchScope[Any, Any]) -> None:
        self._scope = scope
        self.samples = 0
        self.broken: list[bs.BatchStatistics] = []

    async def run(self) -> None:
        while True:
            stats = self._scope.statistics()
            self.samples += 1
            if not adds_up(stats):
                self.broken.append(stats)
            await anyio.sleep(0.001)


class Ledger:
    """What the callers saw, per item."""

    def __init__(self, scope: bs.BatchScope[Any, Any], rng: random.Random) -> None:
        self.scope = scope
        self.rng = rng
        self.completed = 0
        self.failed = 0
        #: Items of cancelled callers: exactly those of submit callers, and for a
        #: submit_many or map caller between the items surely queued and all of them.
        self.cancelled_min = 0
        self.cancelled_max = 0

    def deadline(self) -> float:
        """A random deadline near a batch's end (on a tick, or just around one), or none."""
        rng = self.rng
        if rng.random() < 0.25:
            return math.inf  # a patient caller: some items surely end
        ticks = rng.randint(1, 10)
        jitter = 0.0 if rng.random() < 0.5 else rng.uniform(-TICK / 4, TICK / 4)
        return (math.floor(anyio.current_time() / TICK) + ticks) * TICK + jitter

    def saw(self, outcomes: Sequence[object]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                self.failed += 1
            else:
                self.completed += 1

    def cancelled(self, least: int, most: int) -> None:
        self.cancelled_min += least
        self.cancelled_max += most

    async def submit(self, value: object) -> None:
        with anyio.CancelScope(deadline=self.deadline()):
            try:
                await self.scope.submit(value)
            except Exception:
                self.failed += 1
            else:
                self.completed += 1
            return
        self.cancelled(1, 1)

    async def submit_many(
        self, values: list[object], *, all_queued_at_once: bool, raise_first: bool = False
    ) -> None:
        """With *all_queued_at_once*, every item is queued before the first checkpoint."""
        with anyio.CancelScope(deadline=self.deadline()):
            try:
                outcomes = await self.scope.submit_many(values, return_exceptions=not raise_first)
            except Exception:
                # The first failure, raised: the other items were never handed out.
                self.failed += 1
                self.cancelled(len(values) - 1, len(values) - 1)
            else:
                self.saw(outcomes)
            return
        self.cancelled(len(values) if all_queued_at_once else 1, len(values))

    async def map(self, values: list[object]) -> None:
        handed_out = 0
        with anyio.CancelScope(deadline=self.deadline()):
            ordered = self.rng.random() < 0.5
            async with self.scope.map(values, ordered=ordered, return_exceptions=True) as results:
                async for outcome in results:
                    handed_out += 1
                    self.saw([outcome])
            return
        self.cancelled(0, len(values) - handed_out)


async def race(
    scope: bs.BatchScope[Any, Any], callers: Sequence[Callable[[], Awaitable[None]]]
) -> Sampler:
    """Run every caller, staggered over a few ticks, with the sampler alongside."""
    sampler = Sampler(scope)
    rng = random.Random(len(callers))

    async def staggered(caller: Callable[[], Awaitable[None]], delay: float) -> None:
        await anyio.sleep(delay)
        await caller()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.run)
        async with anyio.create_task_group() as callers_group:
            for caller in callers:
                callers_group.start_soon(staggered, caller, rng.uniform(0, 20 * TICK))
        tg.cancel_scope.cancel()
    return sampler


def check(sampler: Sampler, ledger: Ledger, stats: bs.BatchStatistics) -> None:
    """Every sample added up; the final counters are what the callers saw."""
    assert sampler.samples > 0
    assert sampler.broken == []
    assert (stats.completed, stats.failed, stats.rejected) == (ledger.completed, ledger.failed, 0)
    assert ledger.cancelled_min <= stats.cancelled <= ledger.cancelled_max
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled
    assert stats.admitting == stats.pending == stats.running == 0


def mixed_callers(
    ledger: Ledger, count: int, *, all_queued_at_once: bool, distinct: int = 1_000_000
) -> list[Any]:
    """Mostly submit callers, some submit_many and map callers, of *distinct* values."""
    rng = ledger.rng
    callers: list[Any] = []
    for i in range(count):
        kind = rng.random()
        if kind < 0.7:
            callers.append(lambda value=i % distinct: ledger.submit(value))
        elif kind < 0.85:
            values: list[object] = [v % distinct for v in range(i, i + rng.randint(2, 5))]
            callers.append(
                lambda values=values: ledger.submit_many(
                    values, all_queued_at_once=all_queued_at_once
                )
            )
        else:
            values = [v % distinct for v in range(i, i + rng.randint(2, 6))]
            callers.append(lambda values=values: ledger.map(values))
    return callers


async def test_timeouts_racing_batch_ends_are_counted_as_callers_saw(cpu_hog: object) -> None:
    """Callers giving up as their batches end: each counter is what the callers saw."""

    async def fn(items: list[int]) -> list[int]:
        await until_tick()
        return [x * 2 for x in items]

    rng = random.Random(3)
    async with bs.BatchScope(
        fn, max_batch_size=8, max_wait=TICK / 2, max_concurrent_batches=2
    ) as scope:
        ledger = Ledger(scope, rng)
        sampler = await race(scope, mixed_callers(ledger, 80, all_queued_at_once=True))
    check(sampler, ledger, scope.statistics())


async def test_failing_batches_are_counted_as_callers_saw(cpu_hog: object) -> None:
    """Batches that raise, and per-item exceptions, racing timeouts: counted as seen."""
    rng = random.Random(5)

    async def fn(items: list[int]) -> list[int | Exception]:
        await until_tick()
        if rng.random() < 0.3:
            raise ValueError("this batch failed")
        return [ValueError(f"item {x}") if x % 4 == 0 else x for x in items]

    async with bs.BatchScope(fn, max_batch_size=6, max_wait=TICK / 2) as scope:
        ledger = Ledger(scope, rng)
        callers = mixed_callers(ledger, 60, all_queued_at_once=True)
        for i in range(10):
            values: list[object] = [1000 + 10 * i + j for j in range(3)]
            callers.append(
                lambda values=values: ledger.submit_many(
                    values, all_queued_at_once=True, raise_first=True
                )
            )
        sampler = await race(scope, callers)
    stats = scope.statistics()
    check(sampler, ledger, stats)
    assert stats.failed > 0


async def test_backpressure_waits_are_counted_as_admitting(cpu_hog: object) -> None:
    """Callers waiting for room (some giving up there) count as admitting; all adds up."""

    async def fn(items: list[int]) -> list[int]:
        await until_tick()
        return items

    async with bs.BatchScope(
        fn, max_batch_size=4, max_wait=TICK / 2, max_queue_size=4, on_full="wait"
    ) as scope:
        ledger = Ledger(scope, random.Random(7))
        sampler = await race(scope, mixed_callers(ledger, 70, all_queued_at_once=False))
    check(sampler, ledger, scope.statistics())


async def test_slow_async_cache_lookups_are_counted_as_admitting(cpu_hog: object) -> None:
    """Callers waiting for a slow async cache (some giving up there) count as admitting."""
    rng = random.Random(11)

    class SlowCache:
        def __init__(self) -> None:
            self.data: dict[Any, Any] = {}

        async def get(self, key: Any) -> Any:
            await anyio.sleep(rng.uniform(0, TICK))
            return self.data.get(key, bs.MISSING)

        async def set(self, key: Any, value: Any) -> None:
            self.data[key] = value

    async def fn(items: list[int]) -> list[int]:
        await until_tick()
        return items

    cache = SlowCache()
    async with bs.BatchScope(fn, max_batch_size=8, max_wait=TICK / 2, cache=cache) as scope:
        ledger = Ledger(scope, rng)
        # Values repeat: later callers hit the cache.
        callers = mixed_callers(ledger, 70, all_queued_at_once=False, distinct=20)
        sampler = await race(scope, callers)
    stats = scope.statistics()
    check(sampler, ledger, stats)
    assert stats.cache_misses > 0


async def test_deduplicated_callers_leaving_are_counted_as_they_saw(cpu_hog: object) -> None:
    """Callers sharing a key, some leaving as the shared item ends: counted per caller."""

    async def fn(items: list[int]) -> list[int]:
        await until_tick(2)
        return items

    rng = random.Random(13)
    async with bs.BatchScope(fn, max_batch_size=4, max_wait=TICK / 2, key=lambda x: x) as scope:
        ledger = Ledger(scope, rng)
        values = [rng.randrange(8) for _ in range(80)]  # few keys: many followers
        callers = [lambda value=value: ledger.submit(value) for value in values]
        sampler = await race(scope, callers)
    stats = scope.statistics()
    check(sampler, ledger, stats)
    assert stats.deduplicated > 0
