"""Costs, budgets and policies through a running scope (virtual time, both backends)."""

from __future__ import annotations

import functools
import math
import random
from typing import Any, Literal

import anyio
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


def lognormal_lengths(count: int, seed: int = 7) -> list[int]:
    """Token lengths: lognormal, median 64, capped at 512 (the padding scenario's mix)."""
    rng = random.Random(seed)
    return [max(1, min(512, round(rng.lognormvariate(4.16, 0.9)))) for _ in range(count)]


async def padded_model_run(
    policy: Literal["fifo", "length"], lengths: list[int]
) -> bs.BatchStatistics:
    """Closed-loop clients against a model whose time follows padded tokens."""

    async def model(batch: list[str]) -> list[int]:
        await anyio.sleep(0.0005 + 0.000002 * len(batch) * max(map(len, batch)))
        return [len(text) for text in batch]

    texts = iter(["x" * n for n in lengths])
    async with bs.BatchScope(
        model,
        max_batch_size=32,
        max_wait=0.005,
        cost=len,
        policy=policy,
    ) as scope:

        async def client() -> None:
            for text in texts:
                assert await scope.submit(text) == len(text)

        async with anyio.create_task_group() as tg:
            for _ in range(512):  # sustained load: the queue holds many batches
                tg.start_soon(client)
    return scope.statistics()


async def test_length_policy_pads_far_less_than_fifo() -> None:
    """Lognormal lengths, sustained load: policy='length' pads >= 0.93 efficient, FIFO ~0.25."""
    lengths = lognormal_lengths(4000)
    fifo = await padded_model_run("fifo", lengths)
    length = await padded_model_run("length", lengths)
    assert fifo.padding_efficiency < 0.35
    assert length.padding_efficiency >= 0.93  # 0.90 before heavy buckets went alone
    assert length.completed == fifo.completed == len(lengths)


async def test_length_policy_does_not_starve_long_items() -> None:
    """Under sustained load, long items' p99 latency stays within 2x short items' (aging)."""
    latencies: dict[str, list[float]] = {"short": [], "long": []}

    async def model(batch: list[str]) -> list[int]:
        await anyio.sleep(0.0005 + 0.000002 * len(batch) * max(map(len, batch)))
        return [len(text) for text in batch]

    lengths = lognormal_lengths(3000, seed=3)
    texts = iter(["x" * n for n in lengths])
    async with bs.BatchScope(
        model, max_batch_size=32, max_wait=0.005, cost=len, policy="length"
    ) as scope:

        async def client() -> None:
            for text in texts:
                start = anyio.current_time()
                await scope.submit(text)
                kind = "long" if len(text) >= 256 else "short"
                latencies[kind].append(anyio.current_time() - start)

        async with anyio.create_task_group() as tg:
            for _ in range(512):
                tg.start_soon(client)

    def p99(values: list[float]) -> float:
        return sorted(values)[int(0.99 * (len(values) - 1))]

    assert latencies["long"], "the mix must contain long items"
    assert p99(latencies["long"]) <= 2 * p99(latencies["short"])


async def test_cost_budget_holds_and_reports_cost_releases() -> None:
    """No multi-item batch exceeds max_batch_cost (padded); full budgets release as 'cost'."""
    fake = FakeBatchFunction[str, str]()
    texts = ["x" * n for n in [100, 100, 100, 300, 50, 50, 400, 10]]
    async with bs.BatchScope(
        fake, max_batch_size=32, max_batch_cost=400, cost=len, max_wait=0.01
    ) as scope:
        assert await scope.submit_many(texts) == texts
        stats = scope.statistics()
    for batch in fake.batches:
        if len(batch) > 1:
            assert len(batch) * max(map(len, batch)) <= 400
    assert stats.release_reasons["cost"] >= 1
    assert 0 < stats.padding_efficiency <= 1


async def test_sum_cost_mode_budgets_the_total() -> None:
    """cost_mode='sum' budgets the plain sum of costs (varlen models, token quotas)."""
    fake = FakeBatchFunction[str, str]()
    texts = ["x" * n for n in [60, 30, 10, 90, 5, 5]]
    async with bs.BatchScope(
        fake, max_batch_cost=100, cost=len, cost_mode="sum", max_wait=0.01
    ) as scope:
        await scope.submit_many(texts)
    assert [sum(map(len, b)) for b in fake.batches] == [100, 100]
    assert scope.statistics().padding_efficiency == 1.0


async def test_oversize_run_alone_and_reject() -> None:
    """An item costlier than the budget runs alone by default, or is rejected for its caller."""
    fake = FakeBatchFunction[str, str]()
    async with bs.BatchScope(fake, max_batch_cost=10, cost=len, max_wait=0.01) as scope:
        assert await scope.submit_many(["ab", "x" * 50, "cd"]) == ["ab", "x" * 50, "cd"]
    assert ["x" * 50] in fake.batches

    fake = FakeBatchFunction[str, str]()
    async with bs.BatchScope(
        fake, max_batch_cost=10, cost=len, oversize="reject", max_wait=0.01
    ) as scope:
        with pytest.raises(bs.ItemTooLargeError, match="more than max_batch_cost=10"):
            await scope.submit("x" * 50)
        assert await scope.submit("ok") == "ok"
        stats = scope.statistics()
    assert (stats.rejected, stats.completed) == (1, 1)


@pytest.mark.parametrize(
    ("cost", "error", "message"),
    [
        (lambda item: 1 / 0, ValueError, "'cost' function raised ZeroDivisionError"),
        (lambda item: -1, ValueError, "finite number >= 0, got -1"),
        (lambda item: "3", TypeError, "must return a number, got str"),
        (lambda item: float("nan"), ValueError, "finite number >= 0"),
    ],
)
async def test_bad_cost_fails_that_item_alone(cost: Any, error: type, message: str) -> None:
    """A cost function that raises or returns a bad value fails that submit only."""
    fake = FakeBatchFunction[str, str]()

    def picky(item: str) -> Any:
        return cost(item) if item == "bad" else len(item)

    async with bs.BatchScope(fake, cost=picky, max_wait=0.01) as scope:
        outcomes = await scope.submit_many(["good", "bad", "fine"], return_exceptions=True)
        stats = scope.statistics()
    assert outcomes[0] == "good" and outcomes[2] == "fine"
    assert isinstance(outcomes[1], error)
    assert message in str(outcomes[1])
    assert stats.rejected == 1
    assert fake.items == ["good", "fine"]


async def test_priority_policy_serves_lower_values_first() -> None:
    """policy='priority': among pending items, lower priority values go in the next batch."""
    fake = FakeBatchFunction[int, int](delay=0.1)
    async with (
        bs.BatchScope(fake, policy="priority", max_batch_size=2, max_wait=0.001) as scope,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(scope.submit, 100)  # occupies the only slot
        await anyio.sleep(0.01)
        for value, priority in [(5, 5), (3, 3), (1, 1), (0, 0), (9, 9)]:
            tg.start_soon(functools.partial(scope.submit, value, priority=priority))
    assert fake.batches[1:] == [[0, 1], [3, 5], [9]]


async def test_priority_aging_lets_low_priority_progress() -> None:
    """Under a sustained stream of priority-0 items, a priority-5 item still goes, aged in."""
    fake = FakeBatchFunction[int, int](delay=0.01)
    async with (
        bs.BatchScope(
            fake, policy="priority", max_batch_size=4, max_wait=0.001, aging=0.05
        ) as scope,
        anyio.create_task_group() as tg,
    ):

        async def flood() -> None:
            for i in range(1, 1500):
                tg.start_soon(scope.submit, i)
                await anyio.sleep(0.001)  # item i arrives at i ms: more than 4 per 10 ms

        tg.start_soon(flood)
        await anyio.sleep(0.1)
        await scope.submit(-1, priority=5)
    # Arriving at 100 ms with priority 5, it ranks as if it had arrived 5 * 50 ms later:
    # exactly the items that arrived before 350 ms go ahead of it, and no later one.
    ahead = fake.items[: fake.items.index(-1)]
    assert max(ahead) <= 351  # 351 ties with it (arrival 350 ms) up to rounding
    assert sorted(ahead) == list(range(min(ahead), max(ahead) + 1))


async def test_priority_must_be_a_number() -> None:
    """submit(priority=...) rejects non-numbers with a TypeError naming it."""
    async with bs.BatchScope(FakeBatchFunction[int, int]()) as scope:
        with pytest.raises(TypeError, match="'priority' must be a number"):
            await scope.submit(1, priority="high")  # type: ignore[arg-type]


@pytest.mark.parametrize("priority", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
async def test_a_non_finite_priority_is_refused(priority: float) -> None:
    """NaN (it would starve in the priority heap) and infinities raise ValueError naming it."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, policy="priority", max_wait=0.01) as scope:
        with pytest.raises(ValueError, match="'priority' must be a finite number"):
            await scope.submit(1, priority=priority)
        assert await scope.submit(2, priority=1.5) == 2
        stats = scope.statistics()
    assert fake.batches == [[2]]
    assert stats.submitted == 1
