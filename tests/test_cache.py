"""The result cache and in-flight deduplication."""

from __future__ import annotations

from typing import Any, cast

import anyio
import cachetools
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


def check(stats: bs.BatchStatistics) -> None:
    ended = stats.completed + stats.failed + stats.cancelled + stats.rejected
    assert stats.submitted == ended + stats.admitting + stats.pending + stats.running


async def test_cache_hit_skips_the_queue() -> None:
    """A cached result is returned without queueing; fn is not called again."""
    fake = FakeBatchFunction[int, int](lambda x: x * 10)
    cache: dict[Any, Any] = {}
    async with bs.BatchScope(fake, cache=cache) as scope:
        assert await scope.submit(1) == 10
        start = anyio.current_time()
        assert await scope.submit(1) == 10
        assert anyio.current_time() == start  # no max_wait, no batch
        stats = scope.statistics()
    assert fake.batches == [[1]]
    assert cache == {1: 10}
    assert (stats.cache_hits, stats.cache_misses, stats.completed) == (1, 1, 2)
    check(stats)


async def test_cached_none_is_a_hit() -> None:
    """None is a value like any other: once cached, it is a hit."""
    fake = FakeBatchFunction[int, object](lambda x: None)
    async with bs.BatchScope(fake, cache=cachetools.LRUCache(maxsize=10)) as scope:
        first: object = await scope.submit(1)
        second: object = await scope.submit(1)
    assert first is None and second is None
    assert fake.batches == [[1]]


async def test_failures_are_never_cached() -> None:
    """An item that failed is computed again next time."""
    fake = FakeBatchFunction[int, int](fail_items={1: ValueError("no")})
    cache: dict[Any, Any] = {}
    async with bs.BatchScope(fake, cache=cache) as scope:
        for _ in range(2):
            with pytest.raises(ValueError, match="no"):
                await scope.submit(1)
    assert fake.batches == [[1], [1]]
    assert cache == {}


async def test_ttl_cache_expires() -> None:
    """A cachetools.TTLCache on AnyIO's clock expires entries: recomputed after the TTL."""
    fake = FakeBatchFunction[int, int]()
    cache: cachetools.TTLCache[Any, Any] = cachetools.TTLCache(
        maxsize=10, ttl=5, timer=anyio.current_time
    )
    async with bs.BatchScope(fake, cache=cache) as scope:
        await scope.submit(1)
        await scope.submit(1)
        await anyio.sleep(6)
        await scope.submit(1)
    assert fake.batches == [[1], [1]]


async def test_async_cache() -> None:
    """An object with async get/set is used as an asynchronous cache; MISSING means a miss."""

    class Remote:
        def __init__(self) -> None:
            self.data: dict[Any, Any] = {}

        async def get(self, key: Any) -> Any:
            await anyio.sleep(0.001)
            return self.data.get(key, bs.MISSING)

        async def set(self, key: Any, value: Any) -> None:
            self.data[key] = value

    remote = Remote()
    fake = FakeBatchFunction[int, int](lambda x: x + 1)
    async with bs.BatchScope(fake, cache=remote) as scope:
        assert await scope.submit(1) == 2
        assert await scope.submit(1) == 2
    assert remote.data == {1: 2}
    assert fake.batches == [[1]]


async def test_cache_with_submit_many_and_map() -> None:
    """submit_many and map take cached results without queueing those items."""
    fake = FakeBatchFunction[int, int](lambda x: -x)
    async with bs.BatchScope(fake, cache={}) as scope:
        assert await scope.submit_many([1, 2]) == [-1, -2]
        assert await scope.submit_many([1, 2, 3]) == [-1, -2, -3]
        assert [y async for y in scope.map([3, 4])] == [-3, -4]
        stats = scope.statistics()
    assert sorted(fake.items) == [1, 2, 3, 4]
    assert stats.cache_hits == 3
    check(stats)


async def test_unhashable_item_needs_a_key() -> None:
    """An unhashable item with a cache fails that submit with a hint to pass key=."""
    fake = FakeBatchFunction[Any, Any]()
    async with bs.BatchScope(fake, cache={}) as scope:
        with pytest.raises(TypeError, match="not hashable; pass key="):
            await scope.submit([1, 2])
    async with bs.BatchScope(fake, cache={}, key=tuple) as scope:
        assert await scope.submit([1, 2]) == [1, 2]


async def test_dedup_computes_identical_keys_once() -> None:
    """With key=, concurrent submits of one key share one computation."""
    fake = FakeBatchFunction[str, str](str.upper, delay=0.1)
    results: list[str] = []
    async with bs.BatchScope(fake, key=str.lower, max_wait=0.01) as scope:
        async with anyio.create_task_group() as tg:
            for text in ["a", "A", "a", "b"]:

                async def call(text: str = text) -> None:
                    results.append(await scope.submit(text))

                tg.start_soon(call)
        stats = scope.statistics()
    assert sorted(map(str.lower, fake.items)) == ["a", "b"]  # the leader may be "A"
    assert sorted(results) == ["A", "A", "A", "B"]
    assert (stats.deduplicated, stats.completed, stats.submitted) == (2, 4, 4)
    check(stats)


async def test_one_waiter_leaving_does_not_cancel_shared_work() -> None:
    """A deduplicated waiter that gives up leaves the computation running for the others."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    got: list[int] = []
    async with bs.BatchScope(fake, key=lambda x: x, max_wait=0) as scope:
        async with anyio.create_task_group() as tg:

            async def patient() -> None:
                got.append(await scope.submit(5))

            tg.start_soon(patient)
            await anyio.sleep(0.1)  # the batch is running
            with anyio.move_on_after(0.2):
                await scope.submit(5)  # joins, then leaves
        stats = scope.statistics()
    assert got == [5]
    assert fake.cancelled_calls == 0
    assert (stats.completed, stats.cancelled, stats.deduplicated) == (1, 1, 1)
    check(stats)


async def test_leader_leaving_keeps_work_for_followers() -> None:
    """The first caller leaving before dispatch does not withdraw the item others wait for."""
    fake = FakeBatchFunction[int, int]()
    got: list[int] = []
    async with bs.BatchScope(fake, key=lambda x: x, max_wait=1.0) as scope:
        async with anyio.create_task_group() as tg:
            leader = anyio.CancelScope()

            async def first() -> None:
                with leader:
                    await scope.submit(7)

            async def second() -> None:
                got.append(await scope.submit(7))

            tg.start_soon(first)
            await anyio.sleep(0.1)
            tg.start_soon(second)
            await anyio.sleep(0.1)
            leader.cancel()
        stats = scope.statistics()
    assert got == [7]
    assert fake.batches == [[7]]
    assert (stats.completed, stats.cancelled) == (1, 1)
    check(stats)


async def test_all_waiters_leaving_cancels_the_async_batch() -> None:
    """When every deduplicated waiter has gone, the running async batch is cancelled."""
    fake = FakeBatchFunction[int, int](delay=10.0)
    async with bs.BatchScope(fake, key=lambda x: x, max_wait=0) as scope:
        with anyio.move_on_after(1.0):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(scope.submit, 9)
        await anyio.sleep(0.01)
        assert fake.cancelled_calls == 1
        stats = scope.statistics()
    assert stats.cancelled == 3
    check(stats)


async def test_dedup_shares_failures_without_caching_them() -> None:
    """Followers get the leader's exception; nothing is cached; next time it is recomputed."""
    fake = FakeBatchFunction[int, int](fail_items={3: KeyError("three")}, delay=0.1)
    async with bs.BatchScope(fake, key=lambda x: x, cache={}, max_wait=0) as scope:
        outcomes: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            for _ in range(3):

                async def call() -> None:
                    try:
                        await scope.submit(3)
                    except KeyError as exc:
                        outcomes.append(exc)

                tg.start_soon(call)
        with pytest.raises(KeyError):
            await scope.submit(3)
    assert len(outcomes) == 3
    assert fake.batches == [[3], [3]]


async def test_follower_revives_an_item_set_aside_for_the_leaders_deadline() -> None:
    """A leader too hurried to be served, then a patient follower: the follower is served."""
    fake = FakeBatchFunction[int, int](delay=0.010)
    got: list[int] = []
    async with bs.BatchScope(fake, key=lambda x: x, max_batch_size=2, max_wait=0.01) as scope:
        assert await scope.submit_many([0]) == [0]
        assert await scope.submit_many([1]) == [1]  # two batches confirm 10 ms
        async with anyio.create_task_group() as tg:

            async def hurried() -> None:
                with anyio.move_on_after(0.005):  # nearer than a batch takes: set aside
                    await scope.submit(4)

            async def patient() -> None:
                got.append(await scope.submit(4))

            tg.start_soon(scope.submit, 5)  # a companion: a full batch, going without it
            await anyio.sleep(0.001)  # item 5 is pending first
            tg.start_soon(hurried)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(patient)
        stats = scope.statistics()
    assert got == [4]
    assert fake.batches == [[0], [1], [5], [4]]
    check(stats)


async def test_cancelled_during_async_cache_lookup_still_adds_up() -> None:
    """A caller cancelled while the async cache answers is counted as cancelled."""

    class Slow:
        async def get(self, key: Any) -> Any:
            await anyio.sleep(10)
            return bs.MISSING

        async def set(self, key: Any, value: Any) -> None:
            pass

    async with bs.BatchScope(FakeBatchFunction[int, int](), cache=Slow()) as scope:
        with anyio.move_on_after(1):
            await scope.submit(1)
        stats = scope.statistics()
    assert (stats.submitted, stats.cancelled) == (1, 1)
    check(stats)


async def test_submit_many_deduplicates_identical_keys() -> None:
    """With key=, submit_many([1, 1, 1, 2, 2]) computes 1 and 2 once each."""
    fake = FakeBatchFunction[int, int](lambda x: x * 10)
    async with bs.BatchScope(fake, key=lambda x: x, max_wait=0.01) as scope:
        assert await scope.submit_many([1, 1, 1, 2, 2]) == [10, 10, 10, 20, 20]
        stats = scope.statistics()
    assert fake.batches == [[1, 2]]
    assert (stats.deduplicated, stats.completed, stats.submitted) == (3, 5, 5)
    check(stats)


async def test_map_deduplicates_identical_keys() -> None:
    """With key=, map computes each key once, in order, across and within batches."""
    fake = FakeBatchFunction[int, int](lambda x: x * 10, delay=0.1)
    async with bs.BatchScope(fake, key=lambda x: x, max_batch_size=2, max_wait=0.01) as scope:
        got = [y async for y in scope.map([3, 3, 4, 3, 5, 4])]
        stats = scope.statistics()
    assert got == [30, 30, 40, 30, 50, 40]
    assert sorted(fake.items) == [3, 4, 5]
    assert (stats.deduplicated, stats.completed) == (3, 6)
    check(stats)


async def test_decorated_many_deduplicates_identical_keys() -> None:
    """A batch(key=...)-decorated function's many() computes identical keys once."""
    fake = FakeBatchFunction[str, str](str.upper)
    upper = bs.batch(key=str.lower, max_wait=0.01)(fake)
    async with upper.serving():
        assert await upper.many(["a", "A", "b"]) == ["A", "A", "B"]
    assert sorted(map(str.lower, fake.items)) == ["a", "b"]


async def test_submit_joins_an_item_of_submit_many() -> None:
    """A submit whose key an item of submit_many computes waits for that item."""
    fake = FakeBatchFunction[int, int](lambda x: x * 10, delay=1.0)
    got: list[object] = []
    async with bs.BatchScope(fake, key=lambda x: x, max_wait=0) as scope:
        async with anyio.create_task_group() as tg:

            async def many() -> None:
                got.append(await scope.submit_many([8, 9]))

            tg.start_soon(many)
            await anyio.sleep(0.1)  # the batch is running
            assert await scope.submit(8) == 80
        stats = scope.statistics()
    assert got == [[80, 90]]
    assert fake.batches == [[8, 9]]
    assert (stats.deduplicated, stats.completed) == (1, 3)
    check(stats)


async def test_a_follower_of_submit_many_leaving_keeps_the_shared_work() -> None:
    """A submit_many item deduplicated onto a running one leaves; the first caller is served."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    got: list[int] = []
    async with bs.BatchScope(fake, key=lambda x: x, max_wait=0) as scope:
        async with anyio.create_task_group() as tg:

            async def patient() -> None:
                got.append(await scope.submit(5))

            tg.start_soon(patient)
            await anyio.sleep(0.1)  # the batch is running
            with anyio.move_on_after(0.2):
                await scope.submit_many([5, 5])  # join, then leave
        stats = scope.statistics()
    assert got == [5]
    assert fake.batches == [[5]]
    assert fake.cancelled_calls == 0
    assert (stats.completed, stats.cancelled, stats.deduplicated) == (1, 2, 2)
    check(stats)


async def test_none_is_a_key_cached_and_deduplicated() -> None:
    """None as an item (its own key) is deduplicated and cached like any other key."""
    fake = FakeBatchFunction[Any, Any](lambda x: "none" if x is None else x)
    cache: dict[Any, Any] = {}
    async with bs.BatchScope(fake, cache=cache, key=lambda x: x, max_wait=0.01) as scope:
        assert await scope.submit_many([None, None, 1]) == ["none", "none", 1]
        assert await scope.submit(None) == "none"  # a hit
        stats = scope.statistics()
    assert fake.batches == [[None, 1]]
    assert cache == {None: "none", 1: 1}
    assert (stats.deduplicated, stats.cache_hits) == (1, 1)
    check(stats)


async def test_a_running_item_whose_caller_left_is_rejoined() -> None:
    """An identical submit joins an abandoned item whose batch still runs: no recompute."""
    fake = FakeBatchFunction[int, int](lambda x: x * 10, delay=1.0)
    got: list[int] = []
    async with bs.BatchScope(fake, key=lambda x: x, max_wait=0.01) as scope:
        async with anyio.create_task_group() as tg:

            async def other() -> None:
                got.append(await scope.submit(6))  # keeps the batch running

            async def leaving() -> None:
                with anyio.move_on_after(0.2):
                    await scope.submit(5)

            tg.start_soon(other)
            tg.start_soon(leaving)
            await anyio.sleep(0.5)  # the batch [6, 5] runs; the caller of 5 has left
            got.append(await scope.submit(5))
        stats = scope.statistics()
    assert sorted(got) == [50, 60]
    assert len(fake.batches) == 1 and sorted(fake.batches[0]) == [5, 6]  # one call
    assert (stats.completed, stats.cancelled, stats.deduplicated) == (2, 1, 1)
    check(stats)


async def test_a_cancelled_batch_is_not_rejoined() -> None:
    """Once every caller of an async batch left (it is cancelled), the key computes anew."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, key=lambda x: x, max_wait=0) as scope:
        with anyio.move_on_after(0.2):
            await scope.submit(5)
        assert await scope.submit(5) == 5
        stats = scope.statistics()
    assert fake.batches == [[5], [5]]
    assert fake.cancelled_calls == 1
    assert (stats.completed, stats.cancelled, stats.deduplicated) == (1, 1, 0)
    check(stats)


async def test_a_failing_key_function_fails_its_submit() -> None:
    """A key function that raises fails that submit with a ValueError naming 'key'."""
    fake = FakeBatchFunction[dict[str, int], int](lambda d: d["k"])
    async with bs.BatchScope(fake, key=lambda d: d["k"]) as scope:
        with pytest.raises(ValueError, match="the 'key' function raised KeyError") as info:
            await scope.submit({})
        assert isinstance(info.value.__cause__, KeyError)
        stats = scope.statistics()
    assert fake.batches == []
    assert stats.rejected == 1
    check(stats)


async def test_a_failing_key_function_fails_its_item_of_submit_many_alone() -> None:
    """In submit_many(return_exceptions=True), only the item whose key failed fails."""
    fake = FakeBatchFunction[dict[str, int], int](lambda d: d["k"])
    async with bs.BatchScope(fake, key=lambda d: d["k"], max_wait=0.01) as scope:
        outcomes = await scope.submit_many([{"k": 1}, {}, {"k": 2}], return_exceptions=True)
        stats = scope.statistics()
    assert outcomes[0] == 1 and outcomes[2] == 2
    with pytest.raises(ValueError, match="the 'key' function raised KeyError for this item"):
        raise cast(ValueError, outcomes[1])
    assert fake.batches == [[{"k": 1}, {"k": 2}]]
    assert (stats.completed, stats.rejected) == (2, 1)
    check(stats)


async def test_a_failing_key_function_fails_its_item_of_map_alone() -> None:
    """In map(return_exceptions=True), the item whose key failed fails; the stream goes on."""
    fake = FakeBatchFunction[dict[str, int], int](lambda d: d["k"])
    async with bs.BatchScope(fake, key=lambda d: d["k"], max_wait=0.01) as scope:
        got = [y async for y in scope.map([{"k": 1}, {}, {"k": 2}], return_exceptions=True)]
    assert got[0] == 1 and got[2] == 2
    assert isinstance(got[1], ValueError) and isinstance(got[1].__cause__, KeyError)


async def test_an_unhashable_key_fails_its_item_of_submit_many_alone() -> None:
    """A key function returning an unhashable key fails that item alone, saying so."""
    fake = FakeBatchFunction[Any, Any]()
    async with bs.BatchScope(fake, key=lambda x: x, max_wait=0.01) as scope:
        outcomes = await scope.submit_many([1, [2], 3], return_exceptions=True)
    assert outcomes[0] == 1 and outcomes[2] == 3
    with pytest.raises(TypeError, match="the 'key' function must return a hashable key, got list"):
        raise cast(TypeError, outcomes[1])


@pytest.mark.parametrize("entry", ["submit", "submit_many"])
async def test_identical_keys_waiting_for_room_are_computed_once(entry: str) -> None:
    """Identical items that both waited for room in a full queue are computed once."""
    fake = FakeBatchFunction[int, int](lambda x: x * 10, delay=0.01)
    async with bs.BatchScope(
        fake, max_batch_size=4, max_wait=0.01, max_queue_size=1, key=lambda x: x
    ) as scope:

        async def call(value: int) -> int:
            if entry == "submit":
                return await scope.submit(value)
            return cast(int, (await scope.submit_many([value]))[0])

        results: list[int] = []

        async def caller(value: int) -> None:
            results.append(await call(value))

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, 0)  # takes the only place in the queue
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(caller, 1)  # both wait for room
            tg.start_soon(caller, 1)
        stats = scope.statistics()
    assert sorted(results) == [0, 10, 10]
    assert fake.batches == [[0], [1]]
    assert (stats.submitted, stats.completed, stats.deduplicated) == (3, 3, 1)
