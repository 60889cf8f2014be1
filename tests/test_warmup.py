"""Warmup: fn runs on sample items at each batch shape before the scope opens."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("value", "error"), [("ab", TypeError), (3, TypeError), ([], ValueError)])
def test_invalid_warmup_is_refused(value: Any, error: type[Exception]) -> None:
    """warmup= must be a non-empty list of samples or a callable, named in the error."""
    with pytest.raises(error, match="warmup"):
        bs.BatchScope[int, int](lambda items: items, warmup=value)


@pytest.mark.virtual_time
async def test_fn_runs_once_per_preferred_size_before_the_scope_opens() -> None:
    """Samples are cycled to each preferred size; none of it shows in the statistics."""
    fake = FakeBatchFunction[int, int]()
    scope = bs.BatchScope(fake, preferred_batch_sizes=(2, 5), warmup=[7, 8, 9])
    ready = [scope.ready]
    async with scope:
        ready.append(scope.ready)
        assert fake.batches == [[7, 8], [7, 8, 9, 7, 8]]
        assert scope.statistics().batches == 0
        assert await scope.submit(1) == 1
    ready.append(scope.ready)
    assert ready == [False, True, False]
    assert fake.batches[2:] == [[1]]
    stats = scope.statistics()
    assert stats.batches == 1
    assert stats.submitted == stats.completed == 1


@pytest.mark.virtual_time
async def test_without_preferred_sizes_warmup_runs_at_max_batch_size() -> None:
    """No preferred sizes: one warmup call of max_batch_size samples, from a callable."""
    fake = FakeBatchFunction[str, str]()
    async with bs.BatchScope(fake, max_batch_size=3, warmup=lambda: ["x"]) as scope:
        assert fake.batches == [["x", "x", "x"]]
    assert scope.statistics().batches == 0


@pytest.mark.virtual_time
async def test_warmup_timings_let_a_deadline_caller_be_served() -> None:
    """Warmed up, the first deadline caller's batch leaves early enough for a 0.2 s fn."""
    fake = FakeBatchFunction[int, int](delay=0.2)
    async with bs.BatchScope(fake, max_batch_size=4, max_wait=10.0, warmup=[0]) as scope:
        with anyio.fail_after(0.5):
            assert await scope.submit(1) == 1
    assert fake.batches == [[0, 0, 0, 0], [1]]
    stats = scope.statistics()
    assert stats.completed == 1
    assert stats.release_reasons["deadline"] == 1


@pytest.mark.virtual_time
async def test_without_warmup_the_same_deadline_caller_times_out() -> None:
    """The reference: untimed, the batch leaves too late and the caller gives up."""
    fake = FakeBatchFunction[int, int](delay=0.2)
    async with bs.BatchScope(fake, max_batch_size=4, max_wait=10.0) as scope:
        with pytest.raises(TimeoutError), anyio.fail_after(0.5):
            await scope.submit(1)
    assert scope.statistics().completed == 0


@pytest.mark.virtual_time
async def test_warmup_seeds_the_run_time_model_with_the_measured_time() -> None:
    """The model predicts the warmup run time (0.3 s) for a batch of its size."""
    fake = FakeBatchFunction[int, int](delay=0.3)
    async with bs.BatchScope(fake, max_batch_size=4, warmup=[0]) as scope:
        model = scope._engine.scheduler.model  # pyright: ignore[reportPrivateUsage]
        assert model.predict(4) == pytest.approx(0.3, abs=0.01)
    assert scope.statistics().batches == 0


@pytest.mark.virtual_time
async def test_fn_raising_in_warmup_fails_the_opening() -> None:
    """An exception from fn fails `async with` with WarmupError; the scope never opens."""
    fake = FakeBatchFunction[int, int](raise_on={0: KeyError("boom")})
    scope = bs.BatchScope(fake, max_batch_size=2, warmup=[0])
    with pytest.raises(bs.WarmupError, match="KeyError") as info:
        async with scope:
            pytest.fail("the body must not run")
    assert isinstance(info.value.__cause__, KeyError)
    assert not scope.ready
    assert fake.batches == [[0, 0]]
    with pytest.raises(bs.ScopeClosedError):
        await scope.submit(1)


@pytest.mark.virtual_time
async def test_an_exception_result_in_warmup_fails_the_opening() -> None:
    """fn returning an exception for a sample fails the opening too."""
    fake = FakeBatchFunction[int, int](fail_items={0: ValueError("bad sample")})
    with pytest.raises(bs.WarmupError, match="bad sample") as info:
        async with bs.BatchScope(fake, max_batch_size=2, warmup=[0]):
            pass
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.virtual_time
async def test_wrong_result_count_in_warmup_fails_the_opening() -> None:
    """fn returning the wrong number of results for the samples fails the opening."""
    with pytest.raises(bs.WarmupError, match="returned 1 results"):
        async with bs.BatchScope(lambda items: items[:1], max_batch_size=2, warmup=[0]):
            pass


@pytest.mark.virtual_time
async def test_a_raising_warmup_callable_fails_the_opening() -> None:
    """The warmup callable raising (or returning nothing) fails the opening."""

    def samples() -> list[int]:
        raise OSError("no samples on disk")

    with pytest.raises(bs.WarmupError, match="no samples on disk"):
        async with bs.BatchScope(FakeBatchFunction[int, int](), warmup=samples):
            pass
    with pytest.raises(bs.WarmupError, match="no sample items"):
        async with bs.BatchScope(FakeBatchFunction[int, int](), warmup=list[int]):
            pass


@pytest.mark.virtual_time
async def test_cancelling_the_opening_during_warmup_passes_through() -> None:
    """A cancellation during warmup is not wrapped: the opening is simply cancelled."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    scope = bs.BatchScope(fake, max_batch_size=2, warmup=[0])
    with anyio.move_on_after(0.1) as cancel_scope:
        async with scope:
            pytest.fail("the body must not run")
    assert cancel_scope.cancelled_caught
    assert fake.cancelled_calls == 1
    assert not scope.ready


@pytest.mark.virtual_time
async def test_current_batch_inside_warmup() -> None:
    """fn reading current_batch() during warmup sees its size, every row alive."""
    seen: list[tuple[int, list[bool]]] = []

    async def fn(items: list[int]) -> list[int]:
        info = bs.current_batch()
        seen.append((info.size, list(info.alive)))
        return items

    async with bs.BatchScope(fn, preferred_batch_sizes=(1, 2), warmup=[5]):
        pass
    assert seen == [(1, [True]), (2, [True, True])]


def test_blocking_scope_reports_ready() -> None:
    """BlockingBatchScope.ready is True while open, after its warmup."""
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(items)
        return items

    blocking = bs.BlockingBatchScope[int, int](fn, max_batch_size=2, warmup=[3])
    ready = [blocking.ready]
    with blocking:
        ready.append(blocking.ready)
        assert blocking.submit(1) == 1
    ready.append(blocking.ready)
    assert ready == [False, True, False]
    assert calls[0] == [3, 3]


@pytest.mark.realclock
async def test_warmup_on_a_loaded_real_clock(cpu_hog: object) -> None:
    """Real clock, CPU hog: a sync fn warms up in its thread, then serves every caller."""
    calls: list[int] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(len(items))
        time.sleep(0.002)
        return [item + 1 for item in items]

    with anyio.fail_after(10):
        async with bs.BatchScope(
            fn, max_batch_size=8, preferred_batch_sizes=(4, 8), warmup=[0, 1]
        ) as scope:
            assert scope.ready
            assert calls == [4, 8]
            results = await scope.submit_many(range(100))
    assert results == [item + 1 for item in range(100)]
    stats = scope.statistics()
    assert stats.completed == 100
    assert stats.mean_batch_size * stats.batches == pytest.approx(100)
