"""max_batch_size="auto" and the out-of-memory back-off (oom_errors)."""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import pytest

import batchscope as bs
from batchscope._adaptive import GROW_AFTER
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio


class Timed:
    """An async batch function taking ``per_item`` seconds per item; records its calls."""

    def __init__(self, per_item: float) -> None:
        self.per_item = per_item
        self.sizes: list[int] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        await anyio.sleep(self.per_item * len(items))
        return [item * 2 for item in items]


class Hungry:
    """A batch function that raises MemoryError for a batch above ``limit`` items."""

    def __init__(self, limit: float, *, sync: bool = False) -> None:
        self.limit = limit
        self.calls: list[list[int]] = []
        self.sync = sync

    def run(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        if len(items) > self.limit:
            raise MemoryError(f"{len(items)} items do not fit")
        return [item + 1 for item in items]

    def served(self) -> list[int]:
        """Every item of a call that did not run out of memory, in call order."""
        return [item for call in self.calls if len(call) <= self.limit for item in call]


# -- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_batch_size": "auto"}, ValueError, "max_batch_size='auto' needs 'target_latency'"),
        ({"max_batch_size": "big"}, TypeError, "'max_batch_size' must be an int"),
        ({"batch_size_ceiling": 64}, ValueError, "'batch_size_ceiling' applies only with"),
        (
            {"max_batch_size": "auto", "target_latency": 0.1, "batch_size_ceiling": 0},
            ValueError,
            "'batch_size_ceiling' must be >= 1",
        ),
        ({"oom_errors": [MemoryError]}, TypeError, "'oom_errors' must be an Exception subclass"),
        ({"oom_errors": KeyboardInterrupt}, TypeError, "'oom_errors' must be an Exception"),
    ],
)
def test_invalid_adaptive_options_are_refused(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad max_batch_size='auto', batch_size_ceiling and oom_errors values name the option."""
    with pytest.raises(error, match=match):
        bs.BatchScope(lambda items: items, **options)


def test_oom_errors_takes_one_class_or_a_tuple() -> None:
    """oom_errors=MemoryError is stored as a one-class tuple; the default is empty."""
    assert bs.BatchScope(lambda items: items).config.oom_errors == ()
    scope = bs.BatchScope(lambda items: items, oom_errors=MemoryError)
    assert scope.config.oom_errors == (MemoryError,)


def test_statistics_show_the_configured_cap() -> None:
    """Before any batch, batch_size_cap is max_batch_size (or the ceiling with 'auto')."""
    assert bs.BatchScope(lambda items: items, max_batch_size=8).statistics().batch_size_cap == 8
    scope = bs.BatchScope(
        lambda items: items, max_batch_size="auto", target_latency=0.1, batch_size_ceiling=40
    )
    assert scope.statistics().batch_size_cap == 40


# -- the adaptive size (virtual clock: exact sizes) -------------------------------------


@pytest.mark.virtual_time
async def test_auto_size_meets_the_latency_target() -> None:
    """The cap is the largest batch whose predicted run time plus max_wait meets the target."""
    fn = Timed(per_item=0.001)
    async with bs.BatchScope(
        fn, max_batch_size="auto", max_wait=0.010, target_latency=0.060, batch_size_ceiling=64
    ) as scope:
        results = await scope.submit_many(range(300))
        stats = scope.statistics()
    assert results == [i * 2 for i in range(300)]
    # Untimed: the ceiling; then 50 ms of the 60 ms target is 50 items at 1 ms each.
    assert fn.sizes == [64, 50, 50, 50, 50, 36]
    assert stats.batch_size_cap == 50
    assert (stats.completed, stats.batches) == (300, 6)


@pytest.mark.virtual_time
async def test_auto_size_follows_the_model_slowing_down_and_speeding_up() -> None:
    """A fn twice as slow halves the cap; one four times faster than that quadruples it."""
    fn = Timed(per_item=0.001)
    async with bs.BatchScope(
        fn, max_batch_size="auto", max_wait=0.010, target_latency=0.060, batch_size_ceiling=256
    ) as scope:
        await scope.submit_many(range(300))
        assert scope.statistics().batch_size_cap == 50
        fn.per_item = 0.002
        fn.sizes.clear()
        await scope.submit_many(range(300))
        slow = scope.statistics().batch_size_cap
        slow_sizes = list(fn.sizes)
        fn.per_item = 0.0005
        fn.sizes.clear()
        results = await scope.submit_many(range(600))
        fast = scope.statistics().batch_size_cap
        stats = scope.statistics()
    assert results == [i * 2 for i in range(600)]
    # The first slow batch still has the old cap; the next ones fit the target again
    # (a few a little smaller while the fit still mixes both speeds), never above it.
    assert slow_sizes[:2] == [50, 25] and max(slow_sizes[1:]) == 25
    assert slow_sizes[5:-1] == [25] * (len(slow_sizes) - 6)
    assert slow == 25
    # Faster: the cap doubles at once (at most twice the largest recent batch).
    assert fn.sizes == [25, 100, 100, 100, 100, 100, 75]
    assert fast == 100
    assert stats.completed == 1200


@pytest.mark.virtual_time
async def test_auto_size_and_auto_wait_split_the_target() -> None:
    """With both 'auto', a batch gets half the target and the wait takes the rest."""
    fn = Timed(per_item=0.001)
    async with bs.BatchScope(
        fn, max_batch_size="auto", max_wait="auto", target_latency=0.100, batch_size_ceiling=64
    ) as scope:
        await scope.submit_many(range(200))
        assert scope.statistics().batch_size_cap == 50
        start = anyio.current_time()
        assert await scope.submit(7) == 14  # a lone item: waits 100 - 50 ms, runs 1 ms
        elapsed = anyio.current_time() - start
    assert fn.sizes[:2] == [64, 50]
    assert elapsed == pytest.approx(0.051)


@pytest.mark.virtual_time
async def test_configure_switches_a_running_scope_to_auto() -> None:
    """configure(max_batch_size='auto', target_latency=...) sizes the next batches."""
    fn = Timed(per_item=0.001)
    async with bs.BatchScope(fn, max_batch_size=100, max_wait=0.010) as scope:
        await scope.submit_many(range(100))
        scope.configure(max_batch_size="auto", target_latency=0.030)
        targets: list[float | None] = [scope.config.target_latency]
        await scope.submit_many(range(100))
        stats = scope.statistics()
        scope.configure(max_batch_size=16)  # neither is 'auto' now: the target is dropped
        targets.append(scope.config.target_latency)
        assert targets == [0.030, None]
        assert scope.statistics().batch_size_cap == 16
    assert fn.sizes == [100, 20, 20, 20, 20, 20]
    assert stats.batch_size_cap == 20


# -- out-of-memory back-off -------------------------------------------------------------


@pytest.mark.virtual_time
async def test_oom_splits_the_batch_and_lowers_the_cap() -> None:
    """A batch running out of memory is split until it fits; every caller is served once."""
    hungry = Hungry(limit=10)
    async with bs.BatchScope(
        hungry.run, max_batch_size=32, max_wait=0.010, oom_errors=MemoryError
    ) as scope:
        results = await scope.submit_many(range(200))
        stats = scope.statistics()
    assert results == [i + 1 for i in range(200)]
    assert sorted(hungry.served()) == list(range(200))
    fitting = [len(call) for call in hungry.calls if len(call) <= 10]
    # 32 -> 16 + 16 -> 8 x 4, then batches at the cap (8) and growing back by steps.
    assert [len(call) for call in hungry.calls[:7]] == [32, 16, 8, 8, 16, 8, 8]
    assert max(fitting) == 10 and all(size >= 5 for size in fitting)
    assert stats.oom_splits == sum(1 for call in hungry.calls if len(call) > 10)
    assert (stats.completed, stats.failed, stats.isolation_calls) == (200, 0, 0)
    assert stats.batch_size_cap <= 12


@pytest.mark.virtual_time
async def test_oom_cap_grows_back_step_by_step() -> None:
    """Once batches fit again, the lowered cap grows by a quarter per GROW_AFTER batches."""
    hungry = Hungry(limit=3)
    async with bs.BatchScope(
        hungry.run, max_batch_size=32, max_wait=0.010, oom_errors=(MemoryError,)
    ) as scope:
        await scope.submit_many(range(8))  # 8 -> 4 + 4 -> 2 x 4: the cap is 2
        assert scope.statistics().batch_size_cap == 2
        hungry.limit = math.inf  # memory freed
        hungry.calls.clear()
        results = await scope.submit_many(range(800))
        stats = scope.statistics()
    assert results == [i + 1 for i in range(800)]
    sizes = [len(call) for call in hungry.calls]
    assert sizes[:GROW_AFTER] == [2] * GROW_AFTER
    assert sizes[GROW_AFTER : 2 * GROW_AFTER] == [3] * GROW_AFTER
    assert sizes[2 * GROW_AFTER : 3 * GROW_AFTER] == [4] * GROW_AFTER
    assert sizes[3 * GROW_AFTER] == 5
    # 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 18, 22, 27, then 33 > 32: lifted.
    assert sizes[13 * GROW_AFTER - 1 : 13 * GROW_AFTER + 1] == [27, 32]
    assert max(sizes) == 32 and stats.batch_size_cap == 32  # grown back and lifted
    assert stats.oom_splits == 3


@pytest.mark.virtual_time
async def test_one_item_out_of_memory_fails_alone() -> None:
    """An item that runs out of memory even alone fails with that exception; the rest run."""
    fake = FakeBatchFunction[int, int](raise_on={5: MemoryError("item 5 is huge")})
    async with bs.BatchScope(fake, max_batch_size=8, oom_errors=MemoryError) as scope:
        results = await scope.submit_many(range(8), return_exceptions=True)
        stats = scope.statistics()
    assert results[:5] + results[6:] == [0, 1, 2, 3, 4, 6, 7]
    assert isinstance(results[5], MemoryError)
    assert fake.batches[:3] == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7]]
    assert (stats.completed, stats.failed, stats.oom_splits) == (7, 1, 3)


@pytest.mark.virtual_time
async def test_other_errors_of_a_half_fail_that_half() -> None:
    """After an OOM split, a half raising another error fails whole (no isolate_failures)."""
    calls: list[list[int]] = []

    async def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(items) > 4:
            raise MemoryError
        if 6 in items:
            raise ValueError("bad item")
        return items

    async with bs.BatchScope(fn, max_batch_size=8, oom_errors=MemoryError) as scope:
        results = await scope.submit_many(range(8), return_exceptions=True)
        stats = scope.statistics()
    assert results[:4] == [0, 1, 2, 3]
    assert all(isinstance(result, ValueError) for result in results[4:])
    assert calls == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7]]
    assert (stats.completed, stats.failed, stats.oom_splits) == (4, 4, 1)


@pytest.mark.virtual_time
async def test_oom_is_split_not_retried() -> None:
    """A Retry policy covering MemoryError does not rerun an out-of-memory batch as is."""
    hungry = Hungry(limit=2)
    async with bs.BatchScope(
        hungry.run, max_batch_size=4, oom_errors=MemoryError, retry=bs.Retry(wait_initial=0.01)
    ) as scope:
        assert await scope.submit_many(range(4)) == [1, 2, 3, 4]
        stats = scope.statistics()
    assert [len(call) for call in hungry.calls] == [4, 2, 2]
    assert (stats.retries, stats.oom_splits) == (0, 1)


# -- the real clock: outcomes -----------------------------------------------------------


@pytest.mark.realclock
async def test_auto_size_under_a_busy_cpu(cpu_hog: Any) -> None:
    """On a loaded real loop, 'auto' keeps batches well below the ceiling and serves all."""
    sizes: list[int] = []

    def slow(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.002 * len(items))
        return [item * 2 for item in items]

    async with bs.BatchScope(
        slow, max_batch_size="auto", max_wait=0.005, target_latency=0.080, batch_size_ceiling=200
    ) as scope:
        results = await scope.submit_many(range(400))
        stats = scope.statistics()
    assert results == [i * 2 for i in range(400)]
    assert sum(sizes) == 400 == stats.completed
    # 75 ms at 2 ms per item is about 37 items; a loaded machine only makes it slower.
    assert 1 <= stats.batch_size_cap <= 60
    assert max(sizes[2:]) <= 100


@pytest.mark.realclock
async def test_oom_back_off_under_a_busy_cpu(cpu_hog: Any) -> None:
    """On a loaded real loop, a sync fn out of memory above 8 items still serves everyone once."""
    hungry = Hungry(limit=8)
    async with bs.BatchScope(
        hungry.run, max_batch_size=64, max_wait=0.005, oom_errors=MemoryError
    ) as scope:
        results = await scope.submit_many(range(300))
        stats = scope.statistics()
    assert results == [i + 1 for i in range(300)]
    assert sorted(hungry.served()) == list(range(300))
    assert stats.oom_splits >= 1 and stats.completed == 300 and stats.failed == 0
    assert stats.batch_size_cap <= 10
