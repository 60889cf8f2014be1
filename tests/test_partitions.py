"""Partitions: ``partition=`` keeps items of different keys in different batches."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, Literal, cast

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchscope as bs
from batchscope._items import WITHDRAWN, CallbackItem
from batchscope._partitions import PartitionedPool
from batchscope._pending import FifoPool, Limits
from batchscope._statistics import OTHER_PARTITIONS, TOP_PARTITIONS, PartitionCounts
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio


def model_of(item: str) -> str:
    """The partition of an item like ``"a3"``: its letter."""
    return item[0]


@pytest.mark.virtual_time
async def test_each_batch_is_from_one_partition_and_knows_its_key() -> None:
    """fn gets items of one key per batch and reads that key from current_batch()."""
    keys: list[Hashable] = []
    fake = FakeBatchFunction[str, str](transform=str.upper)

    async def fn(items: list[str]) -> list[str | Exception]:
        keys.append(bs.current_batch().partition)
        return await fake(items)

    items = ["a1", "b1", "a2", "b2", "a3", "c1"]
    async with bs.BatchScope(fn, max_batch_size=2, max_wait=0.01, partition=model_of) as scope:
        assert await scope.submit_many(items) == [item.upper() for item in items]
    assert fake.batches == [["a1", "a2"], ["b1", "b2"], ["a3"], ["c1"]]
    assert keys == ["a", "b", "a", "c"]
    stats = scope.statistics()
    assert stats.batches == 4
    assert dict(stats.partitions) == {
        "a": bs.PartitionStatistics(2, 3),
        "b": bs.PartitionStatistics(1, 2),
        "c": bs.PartitionStatistics(1, 1),
    }
    assert stats.partitions["a"].mean_batch_size == 1.5


@pytest.mark.virtual_time
async def test_without_partition_the_key_is_none_and_statistics_empty() -> None:
    """A scope without partition= mixes keys; its batches' partition is None."""
    keys: list[Hashable] = []

    async def fn(items: list[str]) -> list[str]:
        keys.append(bs.current_batch().partition)
        return items

    async with bs.BatchScope(fn, max_batch_size=4, max_wait=0.01) as scope:
        await scope.submit_many(["a1", "b1"])
    assert keys == [None]
    assert dict(scope.statistics().partitions) == {}


@pytest.mark.virtual_time
async def test_each_partition_has_its_own_timer() -> None:
    """A partition's batch leaves max_wait after its own oldest item, not another's."""
    fake = FakeBatchFunction[str, str]()
    async with (
        bs.BatchScope(
            fake, max_batch_size=8, max_wait=0.1, max_concurrent_batches=2, partition=model_of
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        start = anyio.current_time()
        tg.start_soon(scope.submit, "a1")
        await anyio.sleep(0.05)
        tg.start_soon(scope.submit, "b1")
    assert fake.batches == [["a1"], ["b1"]]
    assert [t - start for t in fake.call_times] == pytest.approx([0.1, 0.15], abs=1e-3)
    assert scope.statistics().release_reasons["timer"] == 2


@pytest.mark.virtual_time
async def test_a_full_partition_leaves_at_once() -> None:
    """A partition that fills a batch goes at once; a partial one waits for its timer."""
    fake = FakeBatchFunction[str, str]()
    async with bs.BatchScope(
        fake, max_batch_size=2, max_wait=0.1, max_concurrent_batches=2, partition=model_of
    ) as scope:
        start = anyio.current_time()
        await scope.submit_many(["a1", "b1", "a2"])
    assert fake.batches == [["a1", "a2"], ["b1"]]
    assert [t - start for t in fake.call_times] == pytest.approx([0.0, 0.1], abs=1e-3)
    assert scope.statistics().release_reasons["size"] == 1


@pytest.mark.virtual_time
async def test_each_partition_has_its_own_cost_budget() -> None:
    """The cost budget applies per partition: two keys each fill their own batch."""
    fake = FakeBatchFunction[str, str]()
    items = ["a11", "b22", "a33", "b44", "a55", "b66"]  # cost 3 each, budget 6: two a batch
    async with bs.BatchScope(
        fake,
        max_batch_size=8,
        max_wait=0.1,
        cost=len,
        max_batch_cost=6,
        partition=model_of,
        max_concurrent_batches=2,
    ) as scope:
        assert await scope.submit_many(items) == items
    assert sorted(fake.batches) == [["a11", "a33"], ["a55"], ["b22", "b44"], ["b66"]]
    assert scope.statistics().release_reasons["cost"] == 2


@pytest.mark.virtual_time
async def test_a_rare_partition_is_not_starved_by_a_busy_one() -> None:
    """Under an overload of one key, a lone item of another overtakes its later arrivals."""
    fake = FakeBatchFunction[str, str](delay=0.01)  # 4 items per 10 ms
    arrivals: dict[str, float] = {}

    async def caller(scope: bs.BatchScope[str, str], item: str) -> None:
        arrivals[item] = anyio.current_time()
        await scope.submit(item)

    async with (
        bs.BatchScope(fake, max_batch_size=4, max_wait=0.005, partition=model_of) as scope,
        anyio.create_task_group() as tg,
    ):
        for i in range(400):  # 8 items of "a" per 10 ms for 0.5 s: twice what fn takes
            if i == 80:
                tg.start_soon(caller, scope, "z1")
            tg.start_soon(caller, scope, f"a{i}")
            if i % 8 == 7:
                await anyio.sleep(0.01)
    position = fake.batches.index(["z1"])
    # Nothing of "a" that arrived after z1 (and its max_wait) ran before it; without
    # aging (full batches first) it would run last, after 100 batches.
    before = [item for batch in fake.batches[:position] for item in batch]
    assert max(arrivals[item] for item in before) <= arrivals["z1"] + 0.005
    assert position < 40
    stats = scope.statistics()
    assert stats.partitions["z"] == bs.PartitionStatistics(1, 1)
    assert stats.partitions["a"] == bs.PartitionStatistics(100, 400)


@pytest.mark.virtual_time
async def test_a_failing_partition_function_fails_that_item_alone() -> None:
    """A partition function that raises refuses its item with ValueError; others run."""

    def partition(item: str) -> str:
        if item == "bad":
            raise KeyError(item)
        return item[0]

    fake = FakeBatchFunction[str, str]()
    async with bs.BatchScope(fake, max_wait=0.01, partition=partition) as scope:
        with pytest.raises(ValueError, match="'partition' function raised KeyError"):
            await scope.submit("bad")
        results = await scope.submit_many(["a1", "bad", "a2"], return_exceptions=True)
    assert results[0] == "a1" and results[2] == "a2"
    assert isinstance(results[1], ValueError)
    assert fake.batches == [["a1", "a2"]]
    stats = scope.statistics()
    assert (stats.submitted, stats.completed, stats.rejected) == (4, 2, 2)


@pytest.mark.virtual_time
async def test_an_unhashable_partition_key_fails_that_item() -> None:
    """A partition key that cannot be hashed refuses its item with TypeError."""
    fake = FakeBatchFunction[str, str]()
    async with bs.BatchScope(
        fake, max_wait=0.01, partition=cast(Any, lambda item: [item])
    ) as scope:
        with pytest.raises(TypeError, match="hashable key, got list"):
            await scope.submit("a1")
        assert scope.statistics().pending == 0
    assert fake.batches == []
    assert scope.statistics().rejected == 1


@pytest.mark.virtual_time
async def test_a_failing_partition_function_with_a_key_leaves_no_inflight_entry() -> None:
    """With key= (deduplication), a refused item does not lead its key: a retry runs."""
    calls = 0

    def partition(item: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("flaky")
        return item[0]

    fake = FakeBatchFunction[str, str]()
    async with bs.BatchScope(fake, max_wait=0.01, key=str, partition=partition) as scope:
        with pytest.raises(ValueError, match="flaky"):
            await scope.submit("a1")
        assert await scope.submit("a1") == "a1"
    assert fake.batches == [["a1"]]


def test_partition_statistics_keep_the_busiest_and_sum_the_rest() -> None:
    """Past 16 partitions, the busiest stay and the rest sum under '(other)'; memory bounded."""
    counts = PartitionCounts()
    for key in range(1000):
        counts.record(key, 1 + key % 7)
    for _ in range(10):
        counts.record("hot", 10)
    shown = counts.snapshot()
    assert len(shown) == TOP_PARTITIONS + 1
    assert shown["hot"] == bs.PartitionStatistics(10, 100)
    assert sum(s.items for s in shown.values()) == 100 + sum(1 + k % 7 for k in range(1000))
    assert sum(s.batches for s in shown.values()) == 1010
    assert shown[OTHER_PARTITIONS].batches > 900
    with pytest.raises(TypeError):
        shown["new"] = bs.PartitionStatistics(1, 1)  # type: ignore[index]


def _item(value: str, arrival: float) -> CallbackItem[str, str]:
    """A pooled item of partition ``value[0]`` (never ended in these tests)."""
    item: CallbackItem[str, str] = CallbackItem(value, 0, 1.0, arrival, math.inf, 0, lambda _: None)
    item.partition = value[0]
    return item


def test_an_empty_partition_is_dropped() -> None:
    """A partition whose items were all taken or withdrawn leaves nothing behind."""
    pool = PartitionedPool(FifoPool, PartitionCounts())
    limits = Limits(max_batch_size=4, wait=0.1, max_batch_cost=None, padded=True, runtime=0.0)
    for i in range(100):
        pool.add(_item(f"{i}", 0.0))
    assert pool.partitions == 10
    one = _item("x", 0.0)
    pool.add(one)
    one.state = WITHDRAWN  # by its caller
    pool.discard(one)
    while pool.take(1.0, limits, draining=False) is not None:
        pass
    assert (pool.partitions, pool.live, pool.pending_cost) == (0, 0, 0.0)
    assert pool.due_at(limits) == math.inf


def test_the_most_overdue_partition_goes_first() -> None:
    """Of several due partitions, the one whose oldest item came due first goes first."""
    pool = PartitionedPool(FifoPool, PartitionCounts())
    limits = Limits(max_batch_size=4, wait=0.1, max_batch_cost=None, padded=True, runtime=0.0)
    pool.add(_item("b1", 0.3))
    pool.add(_item("a1", 0.2))
    for i in range(4):
        pool.add(_item(f"c{i}", 0.5))  # full, but fresh
    pool.add(_item("d1", 0.1))
    assert pool.due_at(limits) == pytest.approx(0.2)
    order = []
    while (taken := pool.take(0.55, limits, draining=False)) is not None:
        order.append([item.value for item in taken[0]])
    assert order == [["d1"], ["a1"], ["b1"], ["c0", "c1", "c2", "c3"]]


@pytest.mark.virtual_time
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    schedule=st.lists(
        st.tuples(st.floats(0, 0.05), st.sampled_from("abcd"), st.integers(1, 5)),
        min_size=1,
        max_size=40,
    ),
    max_batch_size=st.integers(1, 6),
    budget=st.one_of(st.none(), st.integers(5, 12)),
    concurrency=st.integers(1, 3),
    policy=st.sampled_from(["fifo", "priority", "length"]),
)
async def test_every_item_in_one_batch_of_one_partition_within_budget(
    schedule: list[tuple[float, str, int]],
    max_batch_size: int,
    budget: int | None,
    concurrency: int,
    policy: Literal["fifo", "priority", "length"],
) -> None:
    """Random traffic: every item runs once, each batch holds one key, budgets hold."""
    batches: list[tuple[Hashable, list[tuple[int, str, int]]]] = []

    async def fn(items: list[tuple[int, str, int]]) -> list[int]:
        batches.append((bs.current_batch().partition, items))
        await anyio.sleep(0.003)
        return [index for index, _, _ in items]

    async def caller(scope: bs.BatchScope[tuple[int, str, int], int], index: int) -> None:
        delay, key, cost = schedule[index]
        await anyio.sleep(delay)
        assert await scope.submit((index, key, cost)) == index

    async with (
        bs.BatchScope(
            fn,
            max_batch_size=max_batch_size,
            max_wait=0.01,
            max_concurrent_batches=concurrency,
            cost=lambda item: item[2],
            max_batch_cost=budget,
            cost_mode="sum",
            policy=policy,
            partition=lambda item: item[1],
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        for index in range(len(schedule)):
            tg.start_soon(caller, scope, index)

    seen = sorted(index for _, items in batches for index, _, _ in items)
    assert seen == list(range(len(schedule)))
    for key, items in batches:
        assert {item_key for _, item_key, _ in items} == {key}
        assert len(items) <= max_batch_size
        if budget is not None and len(items) > 1:
            assert sum(cost for _, _, cost in items) <= budget
    stats = scope.statistics()
    assert stats.completed == len(schedule)
    assert sum(s.items for s in stats.partitions.values()) == len(schedule)


@pytest.mark.realclock
async def test_partitions_on_a_loaded_real_clock(cpu_hog: object) -> None:
    """Real clock, CPU hog: mixed keys all complete, batches never mix keys."""
    keys_seen: list[set[str]] = []

    def fn(items: list[str]) -> list[str]:
        keys_seen.append({item[0] for item in items})
        assert bs.current_batch().partition == items[0][0]
        return [item.upper() for item in items]

    items = [f"{'abcd'[i % 4]}{i}" for i in range(400)]
    with anyio.fail_after(10):
        async with bs.BatchScope(
            fn, max_batch_size=16, max_wait=0.005, partition=model_of
        ) as scope:
            results = await scope.submit_many(items)
    assert results == [item.upper() for item in items]
    assert all(len(keys) == 1 for keys in keys_seen)
    stats = scope.statistics()
    assert stats.completed == 400
    assert set(stats.partitions) == {"a", "b", "c", "d"}
    assert stats.mean_batch_size > 4
