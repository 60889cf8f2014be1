"""
Issue 13's input defects on the real clock, under a CPU hog: deduplication for every entry
point (and for ``None``, and for an item whose caller left while its batch ran), a failing
``key`` function failing its item alone. Their virtual-clock tests are in test_cache.py;
a result that is not a sequence is tested on the real clock in test_errors.py, and a
non-finite priority (refused at submit, before any timing) in test_policies.py.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = [pytest.mark.anyio, pytest.mark.realclock]


def times_ten(item: Any) -> Any:
    return None if item is None else item * 10


async def test_identical_keys_are_computed_once_by_every_entry_point(cpu_hog: Any) -> None:
    """submit_many([1, 1, 1, 2, 2]) and map compute each key once (was 1 three times)."""
    fn = FakeBatchFunction[Any, Any](transform=times_ten)
    async with bs.BatchScope(fn, key=lambda x: x, max_wait=0.01) as scope:
        assert await scope.submit_many([1, 1, 1, 2, 2]) == [10, 10, 10, 20, 20]
        assert sorted(fn.items) == [1, 2]
        fn.batches.clear()
        assert [y async for y in scope.map([3, 3, 4, 3])] == [30, 30, 40, 30]
        assert sorted(fn.items) == [3, 4]
        stats = scope.statistics()
    assert stats.deduplicated == 5
    assert cpu_hog.spins > 0


async def test_none_is_deduplicated_and_cached(cpu_hog: Any) -> None:
    """None as an item (its own key) is computed once and then a cache hit."""
    fn = FakeBatchFunction[Any, Any](transform=times_ten)
    cache: dict[Any, Any] = {}
    async with bs.BatchScope(fn, key=lambda x: x, cache=cache, max_wait=0.01) as scope:
        assert await scope.submit_many([None, None, 1]) == [None, None, 10]
        assert await scope.submit(None) is None
        stats = scope.statistics()
    assert sorted(fn.items, key=repr) == [1, None]
    assert (stats.deduplicated, stats.cache_hits) == (1, 1)


async def test_a_running_item_whose_caller_left_is_joined_not_recomputed(cpu_hog: Any) -> None:
    """An identical submit joins the item of a caller that left while its batch runs."""
    # A full batch of two (no timer): on a loop that stalls, 5 still joins 6's batch; the
    # batch's 1.5 s outlast the stalls between the leaving and the rejoining.
    fake = FakeBatchFunction[int, int](transform=times_ten, delay=1.5)
    started = anyio.Event()

    async def fn(items: list[int]) -> list[int | Exception]:
        started.set()
        return await fake(items)

    got: list[int] = []
    leave = anyio.CancelScope()
    left = anyio.Event()
    async with bs.BatchScope(fn, key=lambda x: x, max_batch_size=2, max_wait=10) as scope:
        async with anyio.create_task_group() as tg:

            async def staying() -> None:
                got.append(await scope.submit(6))  # keeps the batch running

            async def leaving() -> None:
                await anyio.sleep(0.01)  # after the first, in the same batch
                with leave:
                    await scope.submit(5)
                left.set()

            tg.start_soon(staying)
            tg.start_soon(leaving)
            await started.wait()
            leave.cancel()  # 5's caller leaves while its batch runs
            await left.wait()
            got.append(await scope.submit(5))
        stats = scope.statistics()
    assert fake.batches == [[6, 5]]
    assert sorted(got) == [50, 60]
    assert (stats.completed, stats.cancelled, stats.deduplicated) == (2, 1, 1)


def key_of(item: dict[str, int]) -> int:
    return item["k"]


async def test_a_failing_key_function_fails_its_item_alone(cpu_hog: Any) -> None:
    """In submit_many(return_exceptions=True) and map the bad item fails; the others run."""

    async def fn(items: list[dict[str, int]]) -> list[int]:
        return [item["k"] for item in items]

    items: list[dict[str, int]] = [{"k": 1}, {}, {"k": 2}]
    async with bs.BatchScope(fn, key=key_of, max_wait=0.01) as scope:
        outcomes: list[Any] = await scope.submit_many(items, return_exceptions=True)
        mapped: list[Any] = [y async for y in scope.map(items, return_exceptions=True)]
        stats = scope.statistics()
    for got in (outcomes, mapped):
        assert got[0] == 1 and got[2] == 2
        assert isinstance(got[1], ValueError) and "'key'" in str(got[1])
        assert isinstance(got[1].__cause__, KeyError)
    assert (stats.completed, stats.rejected) == (4, 2)
