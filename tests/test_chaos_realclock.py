"""
Chaos on a real clock, under a CPU hog that comes and goes: retry, isolation, caches and
deduplication together, with callers that time out or are cancelled. Nothing hangs, no
caller gets another's result, fn sees an item again only when a call failed for it, and
the statistics are what the callers saw.

Each run is seeded (the seed is the test's parameter and in every assertion message).
The batch function (sync or async) randomly raises a transient error (retried), raises
for poisoned items (isolated), returns per-item exceptions, overruns ``batch_timeout``,
or returns ``f(item)``. Every call of fn is recorded on the event loop, as the executor
makes it, by a pass-through collator (a sync fn's worker thread may start later, and
an abandoned one may still run after its batch timed out): its items, when it started,
whether and when its results came back, and the items it returned a transient error for.
"""

from __future__ import annotations

import functools
import itertools
import random
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import attrs
import cachetools
import pytest

import batchscope as bs

pytestmark = [pytest.mark.anyio, pytest.mark.realclock]

#: Batches end, and callers give up, on the scale of this (seconds).
TICK = 0.004
#: A run that takes longer than this hangs (each takes well under a second).
HANG = 10.0
#: A call that overruns batch_timeout sleeps this many times it.
OVERRUN = 3.0
SEEDS = [1, 2, 3]


def f(value: int) -> int:
    """What fn computes for one item: a crossed result cannot equal it."""
    return value * 3 + 1


def poisoned(value: int) -> bool:
    """Items that make the whole call raise (isolation finds them)."""
    return value % 13 == 5


def fails_alone(value: int) -> bool:
    """Items whose own result is an exception."""
    return value % 11 == 0


class Transient(Exception):
    """A transient failure: retried."""


class Poison(Exception):
    """Raised by a call holding a poisoned item."""


class ItemError(ValueError):
    """One item's own failure."""


@attrs.define(eq=False)
class Call:
    """One call of fn, as the executor made it (recorded on the event loop)."""

    seq: int
    values: list[int]
    #: ``time.monotonic()`` when the executor called fn.
    started: float
    #: When the executor got fn's results back (None: it never did: fn raised, overran
    #: ``batch_timeout``, or was cancelled).
    delivered: float | None = None
    #: Items fn returned a transient exception for.
    transient: set[int] = attrs.Factory(set[int])

    def failed(self, value: int) -> bool:
        """Whether this call gave *value* no result (so it may be called again)."""
        return self.delivered is None or value in self.transient


class Chaos:
    """The batch function and its collator: records every call, fails at random."""

    def __init__(self, rng: random.Random, batch_timeout: float) -> None:
        self.rng = rng
        self.batch_timeout = batch_timeout
        self.calls: list[Call] = []
        self._lock = threading.Lock()  # the sync fn draws from rng in worker threads

    # -- the collator: records each call on the loop ---------------------------------------
    async def collate(self, items: list[int]) -> tuple[Any, Any]:
        call = Call(len(self.calls), list(items), time.monotonic())
        self.calls.append(call)
        return (call, list(items)), None

    async def split(self, output: Any, context: Any) -> Sequence[int | Exception]:
        call, results = output
        call.delivered = time.monotonic()
        return results  # type: ignore[no-any-return]

    # -- the batch function ------------------------------------------------------------------
    def _plan(self, call: Call) -> tuple[str, float, list[float]]:
        """What this call does: its kind, how long it sleeps, a draw per item."""
        with self._lock:
            draw = self.rng.random()
            pause = self.rng.uniform(0, 2 * TICK)
            per_item = [self.rng.random() for _ in call.values]
        if draw < 0.12:
            return "transient", pause, per_item
        if any(poisoned(v) for v in call.values):
            return "poison", pause, per_item
        if draw < 0.18:
            return "overrun", self.batch_timeout * OVERRUN, per_item
        return "ok", pause, per_item

    def _results(self, call: Call, kind: str, per_item: list[float]) -> list[int | Exception]:
        if kind == "transient":
            raise Transient
        if kind == "poison":
            raise Poison(tuple(call.values))
        results: list[int | Exception] = []
        for value, draw in zip(call.values, per_item, strict=True):
            if fails_alone(value):
                results.append(ItemError(value))
            elif draw < 0.1:
                call.transient.add(value)
                results.append(Transient(value))
            else:
                results.append(f(value))
        return results

    async def async_fn(self, batch: tuple[Call, list[int]]) -> tuple[Call, list[Any]]:
        call, _ = batch
        kind, pause, per_item = self._plan(call)
        await anyio.sleep(pause)
        return call, self._results(call, kind, per_item)

    def sync_fn(self, batch: tuple[Call, list[int]]) -> tuple[Call, list[Any]]:
        call, _ = batch
        kind, pause, per_item = self._plan(call)
        time.sleep(pause)  # an overrunning thread is abandoned, and still sleeps after
        return call, self._results(call, kind, per_item)


class Ledger:
    """What the callers saw, and when each waited for which item."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed * 7919)
        self.completed = 0
        self.failed = 0
        self.rejected = 0
        self.cancelled_min = 0
        self.cancelled_max = 0
        #: TimeoutErrors a blocking caller saw with a timeout of its own: its timeout
        #: (cancelled) or batch_timeout (failed), which cannot be told apart.
        self.either = 0
        #: Crossed results and unexpected exceptions.
        self.bad: list[tuple[int, object]] = []
        #: Per item, the ``(start, end)`` of every wait for it.
        self.waits: defaultdict[int, list[tuple[float, float]]] = defaultdict(list)

    def saw(self, value: int, outcome: object) -> None:
        if isinstance(outcome, bs.QueueFullError):
            self.rejected += 1
            return
        if isinstance(outcome, BaseException):
            self.failed += 1
            if not expected_failure(value, outcome):
                self.bad.append((value, outcome))
        else:
            self.completed += 1
            if outcome != f(value):
                self.bad.append((value, outcome))

    def waited(self, values: Sequence[int], start: float) -> None:
        end = time.monotonic()
        for value in values:
            self.waits[value].append((start, end))

    def cancelled(self, least: int, most: int) -> None:
        self.cancelled_min += least
        self.cancelled_max += most


def expected_failure(value: int, error: BaseException) -> bool:
    """Whether *error* is one that *value*'s item may end with (and is about it)."""
    if isinstance(error, ItemError | Transient):
        return error.args in ((value,), ())
    if isinstance(error, Poison):
        return value in error.args[0]
    return isinstance(error, TimeoutError)


class Callers:
    """Caller coroutines of every entry point, each giving up or cancelled at random."""

    def __init__(self, ledger: Ledger, task_group: anyio.abc.TaskGroup) -> None:
        self.ledger = ledger
        self.rng = ledger.rng
        self._tg = task_group

    def _patience(self) -> anyio.CancelScope:
        """A cancel scope that times out, is cancelled by another task, or neither."""
        rng = self.rng
        draw = rng.random()
        if draw < 0.35:
            return anyio.CancelScope()  # patient: some items surely end
        if draw < 0.8:
            return anyio.CancelScope(deadline=anyio.current_time() + rng.uniform(0, 12 * TICK))
        scope = anyio.CancelScope()
        self._tg.start_soon(_cancel_later, scope, rng.uniform(0, 12 * TICK))
        return scope

    async def one(
        self, value: int, call: Callable[[int], Awaitable[int]], priority: bool = False
    ) -> None:
        start = time.monotonic()
        with self._patience():
            try:
                outcome: object = await call(value)
            except Exception as exc:
                outcome = exc
            self.ledger.waited([value], start)
            self.ledger.saw(value, outcome)
            return
        self.ledger.waited([value], start)
        self.ledger.cancelled(1, 1)

    async def many(
        self, values: list[int], call: Callable[[list[int]], Awaitable[list[Any]]]
    ) -> None:
        start = time.monotonic()
        with self._patience():
            outcomes = await call(values)
            self.ledger.waited(values, start)
            for value, outcome in zip(values, outcomes, strict=True):
                self.ledger.saw(value, outcome)
            return
        self.ledger.waited(values, start)
        # Items refused before they were queued count as rejected, the others cancelled.
        self.ledger.cancelled(0, len(values))

    async def map(self, scope: bs.BatchScope[int, int], values: list[int]) -> None:
        start = time.monotonic()
        handed_out = 0
        with self._patience():
            ordered = self.rng.random() < 0.5
            async with scope.map(values, ordered=ordered, return_exceptions=True) as results:
                async for outcome in results:
                    handed_out += 1
                    if ordered:
                        self.ledger.saw(values[handed_out - 1], outcome)
                    else:
                        self.ledger.saw(unordered_value(values, outcome), outcome)
            self.ledger.waited(values, start)
            return
        self.ledger.waited(values, start)
        self.ledger.cancelled(0, len(values) - handed_out)


def unordered_value(values: list[int], outcome: object) -> int:
    """The item an unordered outcome belongs to (unique values; f is invertible)."""
    if isinstance(outcome, int) and (outcome - 1) % 3 == 0 and (outcome - 1) // 3 in values:
        return (outcome - 1) // 3
    if isinstance(outcome, ItemError | Transient) and outcome.args and outcome.args[0] in values:
        return int(outcome.args[0])
    if isinstance(outcome, Poison):
        return next((v for v in values if v in outcome.args[0]), values[0])
    return values[0]  # the outcome is about the whole call: checked against one of them


async def _cancel_later(scope: anyio.CancelScope, delay: float) -> None:
    await anyio.sleep(delay)
    scope.cancel()


async def toggle(hog: Any, rng: random.Random) -> None:
    """Stop and restart the CPU hog at random moments, until cancelled."""
    try:
        while True:
            await anyio.sleep(rng.uniform(0, 15 * TICK))
            hog.stop()
            await anyio.sleep(rng.uniform(0, 15 * TICK))
            hog.start()
    finally:
        hog.start()


async def race(
    ledger: Ledger, hog: Any, callers: Sequence[Callable[[Callers], Awaitable[None]]]
) -> None:
    """Run every caller, staggered over a few ticks, the hog coming and going."""
    rng = ledger.rng

    async def staggered(caller: Callable[[Callers], Awaitable[None]], delay: float) -> None:
        await anyio.sleep(delay)
        await caller(who)

    async with anyio.create_task_group() as tg:
        tg.start_soon(toggle, hog, random.Random(ledger.seed))
        async with anyio.create_task_group() as callers_group:
            who = Callers(ledger, callers_group)
            for caller in callers:
                callers_group.start_soon(staggered, caller, rng.uniform(0, 25 * TICK))
        tg.cancel_scope.cancel()


def mixed(
    scope: bs.BatchScope[int, int],
    values: Sequence[int],
    rng: random.Random,
    *,
    priorities: bool = False,
) -> list[Callable[[Callers], Awaitable[None]]]:
    """submit, submit_many and map callers over *values*, in random groups."""
    callers: list[Callable[[Callers], Awaitable[None]]] = []
    values = list(values)
    while values:
        kind = rng.random()
        size = 1 if kind < 0.6 else min(len(values), rng.randint(2, 5))
        group, values = values[:size], values[size:]
        if size == 1:
            priority = rng.randint(-2, 2) if priorities else 0

            async def submit(value: int, priority: int = priority) -> int:
                return await scope.submit(value, priority=priority)

            callers.append(functools.partial(Callers.one, value=group[0], call=submit))
        elif kind < 0.8:

            async def submit_many(group: list[int]) -> list[Any]:
                return await scope.submit_many(group, return_exceptions=True)

            callers.append(functools.partial(Callers.many, values=group, call=submit_many))
        else:
            callers.append(functools.partial(Callers.map, scope=scope, values=group))
    return callers


def check(
    seed: int,
    chaos: Chaos,
    ledger: Ledger,
    stats: bs.BatchStatistics,
    *,
    shared_keys: bool,
) -> None:
    """Every promise of the run, from the records of fn and of the callers."""
    where = f"seed={seed}"
    # No crossed result, no unexpected exception.
    assert ledger.bad == [], where
    # The statistics add up, and are what the callers saw.
    assert stats.admitting == stats.pending == stats.running == 0, (where, stats)
    ended = stats.completed + stats.failed + stats.cancelled + stats.rejected
    assert stats.submitted == ended, (where, stats)
    assert stats.completed == ledger.completed, (where, stats)
    assert ledger.failed <= stats.failed <= ledger.failed + ledger.either, (where, stats)
    assert stats.rejected >= ledger.rejected, (where, stats)
    left = stats.cancelled + stats.rejected - ledger.rejected
    assert ledger.cancelled_min <= left <= ledger.cancelled_max + ledger.either, (where, stats)
    # Every call of fn is a batch, a retry or an isolation call.
    assert len(chaos.calls) <= stats.batches + stats.retries + stats.isolation_calls, where
    by_value: defaultdict[int, list[Call]] = defaultdict(list)
    for call in chaos.calls:
        assert len(call.values) == len(set(call.values)), (where, call)
        for value in call.values:
            by_value[value].append(call)
            # Withdrawn items never reach fn: someone waited for it when fn was called.
            assert any(s <= call.started <= e for s, e in ledger.waits[value]), (
                where,
                value,
                call,
            )
    # fn sees an item again only after a call that failed for it; with shared keys (a
    # cache, dedup), also after the call that computed it ended, never while it runs.
    for value, calls in by_value.items():
        for earlier, later in itertools.pairwise(calls):
            again = earlier.failed(value) or (
                shared_keys and earlier.delivered is not None and earlier.delivered <= later.started
            )
            assert again, (where, value, earlier, later)


def chaos_options(rng: random.Random, chaos: Chaos) -> dict[str, Any]:
    """The resilience options every run has: retry, isolation, a batch timeout."""
    return {
        "max_batch_size": rng.randint(3, 8),
        "max_wait": TICK / 2,
        "max_concurrent_batches": rng.randint(2, 3),
        "batch_timeout": chaos.batch_timeout,
        "isolate_failures": True,
        "retry": bs.Retry(attempts=3, on=Transient, wait_initial=0.002, wait_jitter=0.002),
        "collate": chaos,
    }


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("on_full", ["wait", "reject"])
async def test_async_fn_chaos_keeps_every_promise(seed: int, on_full: Any, cpu_hog: Any) -> None:
    """An async fn failing at random, every entry point, callers leaving: all promises hold."""
    rng = random.Random(seed)
    chaos = Chaos(rng, batch_timeout=0.03)
    ledger = Ledger(seed)
    with anyio.fail_after(HANG):
        async with bs.BatchScope(
            chaos.async_fn,
            **chaos_options(rng, chaos),
            max_queue_size=12,
            on_full=on_full,
            policy="priority",
        ) as scope:
            await race(ledger, cpu_hog, mixed(scope, range(120), rng, priorities=True))
    stats = scope.statistics()
    check(seed, chaos, ledger, stats, shared_keys=False)
    # Not vacuous: fn ran and callers got its outcomes. (With on_full="reject" a run
    # completes 7-12 of 120 here; a loop stalled for most of the run can complete none,
    # every admitted caller failing by chaos or leaving, so failures count too.)
    assert chaos.calls and stats.completed + stats.failed > 0, (seed, stats)
    assert cpu_hog.spins > 0


@pytest.mark.parametrize("seed", SEEDS)
async def test_sync_fn_chaos_keeps_every_promise(seed: int, cpu_hog: Any) -> None:
    """A sync fn (worker threads, abandoned on timeout) failing at random: all promises hold."""
    rng = random.Random(seed)
    chaos = Chaos(rng, batch_timeout=0.03)
    ledger = Ledger(seed)
    with anyio.fail_after(HANG):
        async with bs.BatchScope(
            chaos.sync_fn, **chaos_options(rng, chaos), max_queue_size=8, on_full="wait"
        ) as scope:
            await race(ledger, cpu_hog, mixed(scope, range(120), rng))
    stats = scope.statistics()
    check(seed, chaos, ledger, stats, shared_keys=False)
    assert chaos.calls and stats.completed > 0, (seed, stats)


def same(value: int) -> int:
    """The dedup and cache key of an item: itself."""
    return value


def cost_of(value: int) -> int:
    """An item's cost, for length buckets."""
    return 1 + value % 5


def repeating(rng: random.Random, count: int, distinct: int) -> list[int]:
    """*count* items drawn from *distinct* values: identical items pending together."""
    return [rng.randrange(distinct) for _ in range(count)]


@pytest.mark.parametrize("seed", SEEDS)
async def test_sync_cache_and_dedup_chaos_keeps_every_promise(seed: int, cpu_hog: Any) -> None:
    """An LRU cache and key= dedup, length buckets, callers leaving: computed once in flight."""
    rng = random.Random(seed)
    chaos = Chaos(rng, batch_timeout=0.03)
    ledger = Ledger(seed)
    with anyio.fail_after(HANG):
        async with bs.BatchScope(
            chaos.async_fn,
            **chaos_options(rng, chaos),
            cache=cachetools.LRUCache[Any, Any](maxsize=1000),
            key=same,
            policy="length",
            cost=cost_of,
            max_batch_cost=20,
        ) as scope:
            await race(ledger, cpu_hog, mixed(scope, repeating(rng, 120, 30), rng))
    stats = scope.statistics()
    check(seed, chaos, ledger, stats, shared_keys=True)
    assert stats.cache_hits + stats.deduplicated > 0, (seed, stats)


@pytest.mark.parametrize("seed", SEEDS)
async def test_slow_async_cache_and_dedup_chaos_keeps_every_promise(
    seed: int, cpu_hog: Any
) -> None:
    """A slow async cache and dedup before a sync fn, callers leaving: computed once in flight."""
    rng = random.Random(seed)

    class SlowCache:
        def __init__(self) -> None:
            self.data: dict[Any, Any] = {}

        async def get(self, key: Any) -> Any:
            await anyio.sleep(rng.uniform(0, 2 * TICK))
            return self.data.get(key, bs.MISSING)

        async def set(self, key: Any, value: Any) -> None:
            await anyio.sleep(rng.uniform(0, 2 * TICK))
            self.data[key] = value

    chaos = Chaos(rng, batch_timeout=0.03)
    ledger = Ledger(seed)
    with anyio.fail_after(HANG):
        async with bs.BatchScope(
            chaos.sync_fn,
            **chaos_options(rng, chaos),
            cache=SlowCache(),
            key=same,
            max_queue_size=6,
            on_full="wait",
        ) as scope:
            await race(ledger, cpu_hog, mixed(scope, repeating(rng, 120, 30), rng))
    stats = scope.statistics()
    check(seed, chaos, ledger, stats, shared_keys=True)
    assert stats.cache_misses > 0 and stats.cache_hits + stats.deduplicated > 0, (seed, stats)


@pytest.mark.parametrize("seed", SEEDS)
async def test_decorator_chaos_keeps_every_promise(seed: int, cpu_hog: Any) -> None:
    """Calls through the decorator (one and many), failing at random: all promises hold."""
    rng = random.Random(seed)
    chaos = Chaos(rng, batch_timeout=0.03)
    ledger = Ledger(seed)
    batched = bs.batch(**chaos_options(rng, chaos), key=lambda value: value)(chaos.async_fn)

    async def many(values: list[int]) -> list[Any]:
        return await batched.many(values, return_exceptions=True)

    callers: list[Callable[[Callers], Awaitable[None]]] = []
    for value in repeating(rng, 100, 40):
        if rng.random() < 0.7:
            callers.append(functools.partial(Callers.one, value=value, call=batched))
        else:
            callers.append(functools.partial(Callers.many, values=[value, value + 40], call=many))
    with anyio.fail_after(HANG):
        async with batched.serving() as scope:
            await race(ledger, cpu_hog, callers)
    check(seed, chaos, ledger, scope.statistics(), shared_keys=True)
