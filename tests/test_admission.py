"""Deadline-aware admission, ``retry_after`` on refusals, and an upstream's "slow down"."""

from __future__ import annotations

import math
import pickle
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio


class SlowDown(Exception):
    """What a rate-limited upstream raises: HTTP 429 with a Retry-After."""

    def __init__(self, retry_after: Any) -> None:
        super().__init__(f"slow down for {retry_after} s")
        self.retry_after = retry_after


async def _backlog(scope: bs.BatchScope[int, int], task_group: Any, count: int) -> None:
    """Fill *scope* with *count* callers that have no deadline."""
    before = scope.statistics().submitted
    for i in range(count):
        task_group.start_soon(scope.submit, 100 + i)
    # Checkpoints, not wait_all_tasks_blocked(): a virtual clock would jump meanwhile.
    while scope.statistics().submitted < before + count:
        await anyio.lowlevel.checkpoint()
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def _warm(scope: bs.BatchScope[int, int]) -> None:
    """Two full batches, so the run-time model is fitted."""
    assert await scope.submit_many([0, 1]) == [0, 1]
    assert await scope.submit_many([2, 3]) == [2, 3]


def test_admission_option_is_validated() -> None:
    """admission takes 'queue' or 'deadline'; anything else names the option."""
    assert bs.BatchScope(FakeBatchFunction[int, int]()).config.admission == "queue"
    with pytest.raises(ValueError, match="'admission' must be one of 'queue', 'deadline'"):
        bs.BatchScope(FakeBatchFunction[int, int](), admission="later")  # type: ignore[call-overload]


def test_refusals_keep_retry_after_through_pickle() -> None:
    """QueueFullError and DeadlineUnmeetableError keep message and retry_after when pickled."""
    for error in (bs.QueueFullError("full", 0.25), bs.DeadlineUnmeetableError("late", 1.5)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.retry_after == error.retry_after
        assert isinstance(copy, bs.BatchScopeError)


@pytest.mark.virtual_time
async def test_unmeetable_deadline_is_refused_at_once() -> None:
    """A caller whose deadline the backlog cannot meet gets DeadlineUnmeetableError at once."""
    fake = FakeBatchFunction[int, int](delay=0.1)
    async with (
        bs.BatchScope(fake, max_batch_size=2, max_wait=0, admission="deadline") as scope,
        anyio.create_task_group() as task_group,
    ):
        await _warm(scope)
        await _backlog(scope, task_group, 10)
        start = anyio.current_time()
        with pytest.raises(bs.DeadlineUnmeetableError, match="deadline") as caught:
            with anyio.fail_after(0.15):
                await scope.submit(99)
        assert anyio.current_time() == start
        # The backlog (4 batches queued, 1 running) drains in about 0.45 s.
        assert 0.3 <= caught.value.retry_after <= 0.6
    assert 99 not in fake.items
    stats = scope.statistics()
    assert stats.rejected == 1
    assert stats.completed == 14
    assert stats.submitted == stats.completed + stats.rejected


@pytest.mark.virtual_time
async def test_without_admission_the_same_caller_times_out() -> None:
    """The default admission='queue' queues that caller, which then times out waiting."""
    fake = FakeBatchFunction[int, int](delay=0.1)
    async with (
        bs.BatchScope(fake, max_batch_size=2, max_wait=0) as scope,
        anyio.create_task_group() as task_group,
    ):
        await _warm(scope)
        await _backlog(scope, task_group, 10)
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.15):
                await scope.submit(99)
    assert 99 not in fake.items
    stats = scope.statistics()
    assert (stats.rejected, stats.cancelled, stats.completed) == (0, 1, 14)


@pytest.mark.virtual_time
async def test_meetable_deadline_is_admitted_and_served() -> None:
    """A caller whose deadline leaves time for the backlog is queued and served in time."""
    fake = FakeBatchFunction[int, int](delay=0.1)
    async with (
        bs.BatchScope(fake, max_batch_size=2, max_wait=0, admission="deadline") as scope,
        anyio.create_task_group() as task_group,
    ):
        await _warm(scope)
        await _backlog(scope, task_group, 10)
        with anyio.fail_after(2.0):
            assert await scope.submit(99) == 99
    assert 99 in fake.items
    stats = scope.statistics()
    assert (stats.rejected, stats.completed) == (0, 15)


@pytest.mark.virtual_time
async def test_caller_without_deadline_is_always_admitted() -> None:
    """admission='deadline' never refuses a caller that has no deadline."""
    fake = FakeBatchFunction[int, int](delay=0.1)
    async with (
        bs.BatchScope(fake, max_batch_size=2, max_wait=0, admission="deadline") as scope,
        anyio.create_task_group() as task_group,
    ):
        await _warm(scope)
        await _backlog(scope, task_group, 40)
        assert await scope.submit(99) == 99
    assert scope.statistics().rejected == 0
    assert len(fake.items) == 45


@pytest.mark.virtual_time
async def test_fresh_scope_refuses_nobody() -> None:
    """Before any batch was timed the model predicts milliseconds: a 50 ms caller is served."""
    fake = FakeBatchFunction[int, int](delay=0.01)
    async with bs.BatchScope(fake, max_batch_size=4, admission="deadline") as scope:
        with anyio.fail_after(0.05):
            assert await scope.submit(1) == 1
    assert fake.batches == [[1]]
    assert scope.statistics().rejected == 0


@pytest.mark.virtual_time
async def test_queue_full_error_carries_retry_after() -> None:
    """QueueFullError says how long a batch's worth of backlog takes to drain."""
    fake = FakeBatchFunction[int, int](delay=0.1)
    refusals: list[bs.QueueFullError] = []

    async def caller(value: int) -> None:
        try:
            await scope.submit(value)
        except bs.QueueFullError as exc:
            refusals.append(exc)

    async with (
        bs.BatchScope(
            fake, max_batch_size=2, max_wait=0, max_queue_size=4, on_full="reject"
        ) as scope,
        anyio.create_task_group() as task_group,
    ):
        await _warm(scope)
        # More callers at once than running batches, a batch formed ahead and a full
        # queue can hold (at most 2 + 2 + 4): the rest are refused at once.
        for i in range(12):
            task_group.start_soon(caller, 100 + i)
    assert refusals, "no caller was refused"
    assert all("retry after" in str(exc) for exc in refusals)
    assert all(exc.retry_after == pytest.approx(0.1, rel=0.2) for exc in refusals)
    stats = scope.statistics()
    assert stats.rejected == len(refusals)
    assert stats.completed == 4 + 12 - len(refusals)


@pytest.mark.virtual_time
async def test_upstream_retry_after_holds_dispatch_for_the_scope() -> None:
    """fn raising an exception with retry_after holds every batch's dispatch until then."""
    calls: list[tuple[float, list[int]]] = []

    async def upstream(items: list[int]) -> list[int]:
        calls.append((anyio.current_time(), list(items)))
        if len(calls) == 1:
            raise SlowDown(1.0)
        return items

    async with bs.BatchScope(upstream, max_batch_size=2, max_wait=0) as scope:
        start = anyio.current_time()
        with pytest.raises(SlowDown):
            await scope.submit(1)
        assert await scope.submit_many([2, 3, 4]) == [2, 3, 4]
    assert [items for _, items in calls] == [[1], [2, 3], [4]]
    assert calls[1][0] - start == pytest.approx(1.0, abs=0.01)
    stats = scope.statistics()
    assert (stats.failed, stats.completed, stats.batches) == (1, 3, 3)


@pytest.mark.virtual_time
async def test_retry_waits_out_the_upstream_pause() -> None:
    """With retry=, a batch refused by "slow down" is retried after the pause, not before."""
    calls: list[float] = []

    async def upstream(items: list[int]) -> list[int]:
        calls.append(anyio.current_time())
        if len(calls) == 1:
            raise SlowDown(0.5)
        return items

    retry = bs.Retry(attempts=2, on=SlowDown, wait_initial=0.01, wait_jitter=0)
    async with bs.BatchScope(upstream, max_wait=0, retry=retry) as scope:
        assert await scope.submit(1) == 1
    assert calls[1] - calls[0] == pytest.approx(0.5, abs=0.01)
    assert scope.statistics().retries == 1


@pytest.mark.virtual_time
@pytest.mark.parametrize("value", [None, "soon", -1.0, math.nan, True])
async def test_invalid_retry_after_holds_nothing(value: Any) -> None:
    """An exception whose retry_after is absent or not a positive number pauses nothing."""
    calls: list[float] = []

    async def upstream(items: list[int]) -> list[int]:
        calls.append(anyio.current_time())
        if len(calls) == 1:
            raise SlowDown(value)
        return items

    async with bs.BatchScope(upstream, max_wait=0) as scope:
        with pytest.raises(SlowDown):
            await scope.submit(1)
        assert await scope.submit(2) == 2
    assert calls[1] == calls[0]


@pytest.mark.virtual_time
async def test_slow_batches_never_lock_callers_out() -> None:
    """
    After two slow batches the estimate says no caller can be served in time; an idle
    scope still admits the next caller (the probe), whose fast batch corrects the estimate.
    """
    fake = FakeBatchFunction[int, int](delay=0.6)
    async with bs.BatchScope(fake, max_batch_size=8, max_wait=0, admission="deadline") as scope:
        await _warm(scope)
        fake.delay = 0.01

        async def probe() -> None:
            # Admitted though the estimate (0.6 s) exceeds its 0.3 s, and served.
            with anyio.fail_after(0.3):
                assert await scope.submit(50) == 50

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(probe)
            # Trio runs tasks in a random order: wait until the probe has been admitted.
            while scope.statistics().submitted < 5:
                await anyio.lowlevel.checkpoint()
            # While it waits to run, a caller that fits only if the probe is fast is
            # judged against the stale estimate and refused.
            with pytest.raises(bs.DeadlineUnmeetableError):
                with anyio.fail_after(0.3):
                    await scope.submit(51)
        for i in range(5):
            with anyio.fail_after(0.3):
                assert await scope.submit(60 + i) == 60 + i
    assert 51 not in fake.items
    assert fake.items[4:] == [50, 60, 61, 62, 63, 64]
    stats = scope.statistics()
    assert (stats.rejected, stats.completed) == (1, 10)


@pytest.mark.realclock
async def test_slow_batches_never_lock_callers_out_real_clock(cpu_hog: Any) -> None:
    """
    Real clock, CPU hog: after two batches slower than the callers' deadlines, callers one
    after another are admitted (the first as the probe) and served, none refused.
    """
    fake = FakeBatchFunction[int, int](delay=1.2)
    async with bs.BatchScope(fake, max_batch_size=8, max_wait=0, admission="deadline") as scope:
        await _warm(scope)  # two batches of 1.2 s: the estimate exceeds every 1 s deadline
        fake.delay = 0.01
        for i in range(5):
            with anyio.fail_after(1.0):
                assert await scope.submit(60 + i) == 60 + i
        stats = scope.statistics()
    assert stats.rejected == 0
    assert fake.items[4:] == [60, 61, 62, 63, 64]


@pytest.mark.realclock
async def test_admission_under_overload_real_clock(cpu_hog: Any) -> None:
    """Real clock, CPU hog, 7x overload: every caller ends once, served or refused early."""
    fake = FakeBatchFunction[int, int](delay=0.05)
    outcomes: dict[str, int] = {"served": 0, "refused": 0, "timeout": 0}
    retry_afters: list[float] = []

    async def caller(i: int) -> None:
        try:
            with anyio.fail_after(1.0):
                await scope.submit(i)
        except bs.DeadlineUnmeetableError as exc:
            retry_afters.append(exc.retry_after)
            outcomes["refused"] += 1
        except TimeoutError:
            outcomes["timeout"] += 1
        else:
            outcomes["served"] += 1

    async with (
        bs.BatchScope(fake, max_batch_size=8, max_wait=0.002, admission="deadline") as scope,
        anyio.create_task_group() as task_group,
    ):
        # Capacity ~160 items/s; offer ~1200/s for 0.6 s: the backlog outgrows a
        # caller's second within a quarter of that.
        for i in range(720):
            task_group.start_soon(caller, i)
            if i % 12 == 11:
                await anyio.sleep(0.01)
    stats = scope.statistics()
    assert sum(outcomes.values()) == 720
    assert outcomes["served"] > 0
    assert outcomes["refused"] > 0
    assert all(seconds > 0 for seconds in retry_afters)
    assert stats.submitted == 720
    assert stats.rejected == outcomes["refused"]
    assert stats.completed == outcomes["served"]
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled + stats.rejected
    assert stats.completed <= len(fake.items) <= stats.completed + stats.cancelled
