"""A caller that leaves: before dispatch (withdrawn) and after (result dropped)."""

from __future__ import annotations

import anyio
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def test_timed_out_caller_is_withdrawn_before_dispatch() -> None:
    """A caller whose move_on_after fires before dispatch: its item never reaches fn."""
    fake = FakeBatchFunction[int, int](delay=0.005)
    async with (
        bs.BatchScope(fake, max_batch_size=1, max_wait=0.010) as scope,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(scope.submit, 0)  # the only slot is busy for 5 ms
        await anyio.sleep(0.001)  # item 0 is running
        with anyio.move_on_after(0.001) as waited:
            await scope.submit(1)
        assert waited.cancelled_caught  # the cancellation reached the caller's scope
        assert await scope.submit(2) == 2
        stats = scope.statistics()
    assert fake.batches == [[0], [2]]
    assert (stats.submitted, stats.completed, stats.cancelled, stats.pending) == (3, 2, 1, 0)


async def test_fail_after_raises_timeout_error_and_withdraws() -> None:
    """fail_after around submit raises TimeoutError (from AnyIO) and the item is withdrawn."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with (
        bs.BatchScope(fake, max_batch_size=1, max_wait=1.0) as scope,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(scope.submit, 0)  # the only slot is busy for a second
        await anyio.sleep(0.001)  # item 0 is running
        with pytest.raises(TimeoutError), anyio.fail_after(0.001):
            await scope.submit(1)
    assert fake.batches == [[0]]


async def test_cancellation_after_dispatch_takes_effect_at_once() -> None:
    """A caller cancelled while its batch runs leaves at once; the batch still runs for others."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, max_batch_size=2, max_wait=0.1) as scope:
        results: list[int] = []

        async def patient() -> None:
            results.append(await scope.submit(1))

        async with anyio.create_task_group() as tg:
            tg.start_soon(patient)
            with anyio.move_on_after(0.25):
                await scope.submit(2)
            assert anyio.current_time() == pytest.approx(0.25)  # not at the batch's end
        stats = scope.statistics()
    assert results == [1]
    assert [sorted(b) for b in fake.batches] == [[1, 2]]
    assert fake.cancelled_calls == 0
    assert (stats.completed, stats.cancelled) == (1, 1)


async def test_async_batch_whose_callers_all_left_is_cancelled() -> None:
    """When every caller of a running async batch has gone, the batch itself is cancelled."""
    fake = FakeBatchFunction[int, int](delay=10.0)
    async with bs.BatchScope(fake, max_wait=0) as scope:
        with anyio.move_on_after(1.0):
            await scope.submit_many([1, 2])
        await anyio.sleep(0.001)
        assert fake.cancelled_calls == 1
        assert scope.statistics().in_flight == 0
        assert await scope.submit(3) == 3  # the slot is free again at once
        assert anyio.current_time() == pytest.approx(11.001)


async def test_cancellation_is_never_swallowed() -> None:
    """An outer cancel scope's cancellation propagates through submit unchanged."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, max_wait=0) as scope:
        with anyio.CancelScope() as outer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(scope.submit, 1)
                await anyio.sleep(0.5)
                outer.cancel()
                await anyio.sleep_forever()
        assert outer.cancelled_caught


async def test_caller_waiting_for_room_can_be_cancelled() -> None:
    """A caller blocked by backpressure leaves cleanly when cancelled; nothing was queued."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, max_queue_size=1, max_wait=0) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit, 1)  # running
            await anyio.sleep(0.1)
            tg.start_soon(scope.submit, 2)  # pending, fills the queue
            await anyio.sleep(0.1)
            with anyio.move_on_after(0.1):
                await scope.submit(3)  # waits for room, then gives up
        stats = scope.statistics()
    assert [sorted(b) for b in fake.batches] == [[1], [2]]
    assert (stats.submitted, stats.completed, stats.cancelled) == (3, 2, 1)
