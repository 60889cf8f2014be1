"""Preferred batch sizes: batches leave at, and are cut to, the sizes fn runs best at."""

from __future__ import annotations

from typing import Any, Literal, cast

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio


def test_sizes_are_sorted_and_deduplicated() -> None:
    """preferred_batch_sizes is stored as a sorted tuple without repeats."""
    scope = bs.BatchScope[int, int](lambda items: items, preferred_batch_sizes=[16, 4, 8, 4])
    assert scope.config.preferred_batch_sizes == (4, 8, 16)
    assert scope.config.batch_cap == 16


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (8, TypeError, "preferred_batch_sizes"),
        ("8", TypeError, "preferred_batch_sizes"),
        ((), ValueError, "at least one"),
        ((0, 4), ValueError, "preferred_batch_sizes"),
        ((True, 4), TypeError, "preferred_batch_sizes"),
        ((2.0,), TypeError, "preferred_batch_sizes"),
        ((8, 64), ValueError, "max_batch_size=32"),
    ],
)
def test_invalid_sizes_are_refused(value: Any, error: type[Exception], match: str) -> None:
    """Bad preferred sizes fail at construction, naming the option."""
    with pytest.raises(error, match=match):
        bs.BatchScope[int, int](lambda items: items, preferred_batch_sizes=value)


def test_configure_cannot_lower_max_batch_size_below_a_preferred_size() -> None:
    """configure(max_batch_size=) below the largest preferred size fails and changes nothing."""
    scope = bs.BatchScope[int, int](lambda items: items, preferred_batch_sizes=(4, 8))
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        scope.configure(max_batch_size=6)
    assert scope.config.max_batch_size == 32


@pytest.mark.virtual_time
async def test_batch_leaves_at_once_at_the_largest_preferred_size() -> None:
    """The largest preferred size pending sends a batch at once, though max_batch_size is more."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(
        fake, max_batch_size=32, max_wait=1.0, preferred_batch_sizes=(4, 8)
    ) as scope:
        start = anyio.current_time()
        assert await scope.submit_many(range(8)) == list(range(8))
        assert anyio.current_time() - start < 0.5
    assert fake.batches == [list(range(8))]
    stats = scope.statistics()
    assert stats.batch_size_histogram == ((8, 1),)
    assert stats.release_reasons["size"] == 1


@pytest.mark.virtual_time
async def test_the_largest_preferred_size_caps_a_batch() -> None:
    """A backlog over the largest preferred size goes in batches of that size."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(
        fake, max_batch_size=32, max_wait=0.1, preferred_batch_sizes=(4, 8)
    ) as scope:
        assert await scope.submit_many(range(20)) == list(range(20))
    assert [len(batch) for batch in fake.batches] == [8, 8, 4]
    assert fake.items == list(range(20))
    assert scope.statistics().release_reasons == {
        "size": 2,
        "cost": 0,
        "timer": 1,
        "deadline": 0,
        "drain": 0,
        "early": 0,
    }


@pytest.mark.virtual_time
async def test_timer_cuts_to_the_largest_preferred_size_oldest_first() -> None:
    """On the timer 7 pending go as 4 (the oldest), then 2, then the last 1."""
    fake = FakeBatchFunction[int, int](delay=0.05)
    async with bs.BatchScope(
        fake, max_batch_size=8, max_wait=0.1, preferred_batch_sizes=(2, 4, 8)
    ) as scope:
        start = anyio.current_time()
        assert await scope.submit_many(range(7)) == list(range(7))
    assert fake.batches == [[0, 1, 2, 3], [4, 5], [6]]
    assert [round(t - start, 3) for t in fake.call_times] == [0.1, 0.15, 0.2]
    stats = scope.statistics()
    assert stats.release_reasons["timer"] == 3
    assert stats.completed == 7


@pytest.mark.virtual_time
async def test_without_preferred_sizes_the_timer_takes_everything() -> None:
    """The reference: without preferred sizes the same 7 items go as one batch."""
    fake = FakeBatchFunction[int, int](delay=0.05)
    async with bs.BatchScope(fake, max_batch_size=8, max_wait=0.1) as scope:
        await scope.submit_many(range(7))
    assert fake.batches == [list(range(7))]
    assert scope.statistics().batches == 1


@pytest.mark.virtual_time
async def test_a_callers_deadline_releases_the_batch_uncut() -> None:
    """A deadline release takes every due item (6), not the preferred 4."""
    fake = FakeBatchFunction[int, int]()

    async def with_deadline(scope: bs.BatchScope[int, int]) -> None:
        with anyio.fail_after(1.0):
            assert await scope.submit(5) == 5

    async with (
        bs.BatchScope(fake, max_batch_size=8, max_wait=10.0, preferred_batch_sizes=(4, 8)) as scope,
        anyio.create_task_group() as tg,
    ):
        start = anyio.current_time()
        for i in range(5):
            tg.start_soon(scope.submit, i)
        await anyio.sleep(0.01)
        tg.start_soon(with_deadline, scope)
    assert sorted(fake.items) == list(range(6))
    assert len(fake.batches) == 1
    assert fake.call_times[0] - start < 1.0
    stats = scope.statistics()
    assert stats.release_reasons["deadline"] == 1
    assert stats.completed == 6


@pytest.mark.virtual_time
async def test_the_length_policy_cuts_too() -> None:
    """policy="length": a timer release of 3 similar items is cut to the preferred 2."""
    fake = FakeBatchFunction[str, str](delay=0.05)
    async with bs.BatchScope(
        fake,
        max_batch_size=8,
        max_wait=0.1,
        cost=len,
        policy="length",
        preferred_batch_sizes=(2, 8),
    ) as scope:
        await scope.submit_many(["aa", "bb", "cc"])
    assert fake.batches == [["aa", "bb"], ["cc"]]
    assert scope.statistics().release_reasons["timer"] == 2


@pytest.mark.virtual_time
async def test_pad_collator_pads_every_batch_to_a_preferred_shape() -> None:
    """PadCollator(batch_sizes=preferred): fn sees only the preferred batch shapes."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("array_api_compat")
    from batchscope.arrays import PadCollator

    shapes: list[tuple[int, ...]] = []

    def fn(batch: Any) -> Any:
        shapes.append(tuple(batch.data.shape))
        return batch.data.sum(axis=1)

    preferred = (2, 4)
    async with bs.BatchScope(
        fn,
        max_batch_size=8,
        max_wait=0.01,
        preferred_batch_sizes=preferred,
        collate=PadCollator(batch_sizes=preferred),
    ) as scope:
        items = [np.arange(n + 1) for n in range(7)]
        results = await scope.submit_many(items)
    assert [int(cast(Any, r)) for r in results] == [int(item.sum()) for item in items]
    assert [shape[0] for shape in shapes] == [4, 2, 2]
    assert scope.statistics().batch_size_histogram == ((1, 1), (2, 1), (4, 1))


@pytest.mark.virtual_time
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    delays=st.lists(st.floats(0, 0.05), min_size=1, max_size=40),
    preferred=st.lists(st.integers(1, 8), min_size=1, max_size=3),
    extra=st.integers(0, 4),
    concurrency=st.integers(1, 3),
    policy=st.sampled_from(["fifo", "priority", "length"]),
)
async def test_every_batch_has_a_preferred_size_unless_drained(
    delays: list[float],
    preferred: list[int],
    extra: int,
    concurrency: int,
    policy: Literal["fifo", "priority", "length"],
) -> None:
    """Random traffic: no item lost; a batch is a preferred size, smaller than all, or drained."""
    batches: list[tuple[str, int]] = []

    async def fn(items: list[int]) -> list[int]:
        batches.append((bs.current_batch().reason, len(items)))
        await anyio.sleep(0.003)
        return items

    async def caller(scope: bs.BatchScope[int, int], index: int) -> None:
        await anyio.sleep(delays[index])
        assert await scope.submit(index, priority=index % 3) == index

    async with (
        bs.BatchScope(
            fn,
            max_batch_size=max(preferred) + extra,
            max_wait=0.01,
            max_concurrent_batches=concurrency,
            cost=(lambda item: 1 + item % 5) if policy == "length" else None,
            policy=policy,
            preferred_batch_sizes=preferred,
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        for index in range(len(delays)):
            tg.start_soon(caller, scope, index)

    sizes = set(preferred)
    for reason, size in batches:
        if reason in ("size", "cost"):
            assert size == max(sizes)
        elif reason == "timer":
            assert size in sizes or size < min(sizes)
        else:
            assert reason == "drain"
            assert size <= max(sizes)
    stats = scope.statistics()
    assert stats.completed == len(delays)
    assert sum(size for _, size in batches) == len(delays)


@pytest.mark.realclock
async def test_preferred_sizes_on_a_loaded_real_clock(cpu_hog: object) -> None:
    """Real clock, CPU hog: everything completes; batches are preferred sizes or stragglers."""
    batches: list[tuple[str, int]] = []

    def fn(items: list[int]) -> list[int]:
        batches.append((bs.current_batch().reason, len(items)))
        return [item * 2 for item in items]

    with anyio.fail_after(10):
        async with bs.BatchScope(
            fn, max_batch_size=16, max_wait=0.005, preferred_batch_sizes=(4, 8)
        ) as scope:
            results = await scope.submit_many(range(300))
    assert results == [item * 2 for item in range(300)]
    for reason, size in batches:
        assert size in (4, 8) or size < 4 or reason in ("deadline", "drain")
    stats = scope.statistics()
    assert stats.completed == 300
    assert max(size for size, _ in stats.batch_size_histogram) <= 8


@pytest.mark.virtual_time
async def test_timer_is_not_cut_when_a_deadline_cannot_wait_for_the_next_batch() -> None:
    """A caller whose deadline release falls within the next run time is not cut off."""
    fake = FakeBatchFunction[int, int](delay=0.2)

    async def with_deadline(scope: bs.BatchScope[int, int]) -> None:
        with anyio.fail_after(0.7):
            assert await scope.submit(4) == 4

    async with (
        bs.BatchScope(
            fake, max_batch_size=8, max_wait=0.1, preferred_batch_sizes=(4, 8), warmup=[0]
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        start = anyio.current_time()
        for i in range(4):
            tg.start_soon(scope.submit, i)
        await anyio.sleep(0.01)
        tg.start_soon(with_deadline, scope)
    assert [sorted(batch) for batch in fake.batches[2:]] == [[0, 1, 2, 3, 4]]
    assert round(fake.call_times[2] - start, 3) == 0.1
    stats = scope.statistics()
    assert stats.release_reasons["timer"] == 1
    assert stats.completed == 5
