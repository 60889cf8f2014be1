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


def _adds_up(stats: bs.BatchStatistics) -> bool:
    """The statistics invariant, at any moment."""
    ended = stats.completed + stats.failed + stats.cancelled + stats.rejected
    return stats.submitted == ended + stats.admitting + stats.pending + stats.running


@pytest.mark.parametrize("fails", [False, True], ids=["result", "raises"])
async def test_caller_cancelled_as_its_batch_ends_counts_cancelled(fails: bool) -> None:
    """A caller cancelled in the tick its batch ends counts cancelled, whatever fn returned."""
    caller = anyio.CancelScope()

    async def fn(items: list[int]) -> list[int]:
        await anyio.sleep(1)
        caller.cancel()  # lands as the batch ends: the item is ended, its caller cancelled
        if fails:
            raise ValueError("the batch failed")
        return items

    async with bs.BatchScope(fn, max_wait=0) as scope:
        with caller:
            await scope.submit(1)
        stats = scope.statistics()
    assert caller.cancelled_caught
    assert (stats.submitted, stats.completed, stats.failed, stats.cancelled) == (1, 0, 0, 1)


async def test_follower_cancelled_as_the_shared_batch_ends_counts_cancelled() -> None:
    """A deduplicated caller cancelled as the shared item ends counts cancelled, not completed."""
    follower = anyio.CancelScope()
    results: list[int] = []

    async def fn(items: list[int]) -> list[int]:
        await anyio.sleep(1)
        follower.cancel()
        return items

    async def follow(scope: bs.BatchScope[int, int]) -> None:
        with follower:
            await scope.submit(1)

    async with bs.BatchScope(fn, max_wait=0.1, key=lambda x: x) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, scope)
            await anyio.sleep(0.01)
            results.append(await scope.submit(1))
        stats = scope.statistics()
    assert results == [1]
    assert follower.cancelled_caught
    assert (stats.submitted, stats.deduplicated) == (2, 1)
    assert (stats.completed, stats.failed, stats.cancelled) == (1, 0, 1)


async def test_submit_many_cancelled_as_its_batch_ends_counts_every_item_cancelled() -> None:
    """A submit_many caller cancelled as its batch ends: every item counts cancelled."""
    caller = anyio.CancelScope()

    async def fn(items: list[int]) -> list[int]:
        await anyio.sleep(1)
        caller.cancel()
        return items

    async with bs.BatchScope(fn, max_wait=0) as scope:
        with caller:
            await scope.submit_many([1, 2, 3])
        stats = scope.statistics()
    assert caller.cancelled_caught
    assert (stats.submitted, stats.completed, stats.cancelled) == (3, 0, 3)


async def test_map_items_ended_but_not_handed_out_count_cancelled() -> None:
    """Closing a map stream: items that ended but were never yielded count cancelled."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, max_batch_size=4, max_wait=0.1) as scope:
        async with scope.map(range(4)) as results:
            assert await results.__anext__() == 0  # the whole batch has ended by now
        stats = scope.statistics()
    assert fake.batches == [[0, 1, 2, 3]]
    assert (stats.submitted, stats.completed, stats.cancelled) == (4, 1, 3)


async def test_caller_waiting_for_room_counts_as_admitting() -> None:
    """A submit waiting for room in a full queue counts in 'admitting' until it is queued."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, max_queue_size=1, max_wait=0) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit, 1)  # running
            await anyio.sleep(0.1)
            tg.start_soon(scope.submit, 2)  # pending, fills the queue
            await anyio.sleep(0.1)
            tg.start_soon(scope.submit, 3)  # waits for room
            await anyio.sleep(0.1)
            waiting = scope.statistics()
            await anyio.sleep(1)  # batch [1] ends, [2] runs, 3 is queued
            queued = scope.statistics()
        stats = scope.statistics()
    assert (waiting.submitted, waiting.running, waiting.pending, waiting.admitting) == (3, 1, 1, 1)
    assert _adds_up(waiting)
    assert (queued.completed, queued.running, queued.pending, queued.admitting) == (1, 1, 1, 0)
    assert _adds_up(queued)
    assert (stats.completed, stats.admitting) == (3, 0)


class _SlowCache:
    """An async cache that takes 1 s to answer (always a miss)."""

    async def get(self, key: object) -> object:
        await anyio.sleep(1)
        return bs.MISSING

    async def set(self, key: object, value: object) -> None:
        pass


@pytest.mark.parametrize("many", [False, True], ids=["submit", "submit_many"])
async def test_caller_waiting_for_async_cache_counts_as_admitting(many: bool) -> None:
    """A submit waiting for an async cache look-up counts in 'admitting', and adds up."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, cache=_SlowCache(), max_wait=0) as scope:
        async with anyio.create_task_group() as tg:
            if many:
                tg.start_soon(scope.submit_many, [1])
            else:
                tg.start_soon(scope.submit, 1)
            await anyio.sleep(0.5)
            looking_up = scope.statistics()
        stats = scope.statistics()
    assert (looking_up.submitted, looking_up.admitting, looking_up.pending) == (1, 1, 0)
    assert _adds_up(looking_up)
    assert (stats.submitted, stats.completed, stats.admitting) == (1, 1, 0)


async def test_scope_closing_during_async_cache_lookup_counts_rejected() -> None:
    """A submit refused after its async look-up (the scope closed meanwhile) counts rejected."""
    fake = FakeBatchFunction[int, int]()
    errors: list[BaseException] = []

    async def caller(scope: bs.BatchScope[int, int]) -> None:
        try:
            await scope.submit(1)
        except bs.ScopeClosedError as exc:
            errors.append(exc)

    async with (
        anyio.create_task_group() as tg,
        bs.BatchScope(fake, cache=_SlowCache()) as scope,
    ):
        tg.start_soon(caller, scope)
        await anyio.sleep(0.5)
    stats = scope.statistics()
    assert len(errors) == 1
    assert fake.batches == []
    assert (stats.submitted, stats.rejected, stats.admitting) == (1, 1, 0)
    assert _adds_up(stats)


class _CancelEvents(bs.Hooks):
    def __init__(self) -> None:
        self.cancelled = 0

    def item_cancelled(self, dispatched: bool) -> None:
        self.cancelled += 1


@pytest.mark.parametrize("callers_inside", [True, False], ids=["callers-inside", "scope-inside"])
async def test_scope_and_callers_cancelled_together_count_every_caller_cancelled(
    callers_inside: bool,
) -> None:
    """
    One cancel scope around a scope and its callers (nested either way): whichever the
    backend cancels first, statistics() counts every caller cancelled; item_cancelled
    events are never more than that (they follow the order, see docs/observability.md).
    """
    fake = FakeBatchFunction[int, int](delay=0.05)
    events = _CancelEvents()
    scope = bs.BatchScope(fake, max_batch_size=4, max_wait=0.001, hooks=events)
    with anyio.CancelScope() as outer:
        if callers_inside:
            async with scope, anyio.create_task_group() as tg:
                for value in range(20):
                    tg.start_soon(scope.submit, value)
                await anyio.sleep(0.01)
                outer.cancel()
                await anyio.sleep(1)
        else:
            async with anyio.create_task_group() as tg, scope:
                for value in range(20):
                    tg.start_soon(scope.submit, value)
                await anyio.sleep(0.01)
                outer.cancel()
                await anyio.sleep(1)
    stats = scope.statistics()
    assert (stats.submitted, stats.cancelled) == (20, 20), stats
    assert stats.completed == stats.failed == stats.pending == stats.running == 0
    assert events.cancelled <= 20
