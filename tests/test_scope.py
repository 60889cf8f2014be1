"""The scope's lifetime: open, close, drain, failure, crash, backpressure."""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import anyio
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio


class Boom(BaseException):
    """A BaseException that is not a cancellation (like KeyboardInterrupt)."""


async def test_submit_before_open_raises_no_active_scope() -> None:
    """Submitting to a scope that was never opened is misuse: NoActiveScopeError."""
    scope = bs.BatchScope(FakeBatchFunction[int, int]())
    with pytest.raises(bs.NoActiveScopeError, match="is not open"):
        await scope.submit(1)
    assert isinstance(bs.NoActiveScopeError(), RuntimeError)


async def test_submit_after_close_raises_scope_closed() -> None:
    """After close(), submit raises ScopeClosedError; pending items still run."""
    fake = FakeBatchFunction[int, int]()
    results: list[int] = []
    async with bs.BatchScope(fake, max_wait=0.01) as scope, anyio.create_task_group() as tg:

        async def call() -> None:
            results.append(await scope.submit(1))

        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        scope.close()
        with pytest.raises(bs.ScopeClosedError, match="is closed"):
            await scope.submit(2)
    assert results == [1]
    with pytest.raises(bs.ScopeClosedError):
        await scope.submit(3)
    assert scope.statistics().rejected == 0  # calls after close are not submits


async def test_submit_that_had_not_run_before_close_is_refused() -> None:
    """A task that called submit() but had not run yet when close() came gets ScopeClosedError."""
    fake = FakeBatchFunction[int, int]()
    outcome: list[BaseException] = []
    async with bs.BatchScope(fake) as scope, anyio.create_task_group() as tg:

        async def late() -> None:
            try:
                await scope.submit(1)
            except bs.ScopeClosedError as exc:
                outcome.append(exc)

        tg.start_soon(late)  # scheduled, not yet running
        scope.close()
    assert len(outcome) == 1
    assert fake.batches == []


async def test_scope_opens_only_once() -> None:
    """A BatchScope is single-use; opening it again is a RuntimeError."""
    scope = bs.BatchScope(FakeBatchFunction[int, int]())
    async with scope:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        async with scope:
            pass


async def test_body_exception_fails_waiting_callers_and_propagates() -> None:
    """The body raising: callers outside get ScopeClosedError caused by it; it propagates as is."""
    fake = FakeBatchFunction[int, int](delay=10.0)
    errors: list[bs.ScopeClosedError] = []

    async def outside(scope: bs.BatchScope[int, int], x: int) -> None:
        try:
            await scope.submit(x)
        except bs.ScopeClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        with pytest.raises(ValueError, match="body failed"):
            async with bs.BatchScope(fake, max_batch_size=1, max_wait=0) as scope:
                tg.start_soon(outside, scope, 1)  # will be running
                tg.start_soon(outside, scope, 2)  # will be pending
                await anyio.wait_all_tasks_blocked()
                raise ValueError("body failed")
    assert len(errors) == 2
    assert all(isinstance(e.__cause__, ValueError) for e in errors)
    assert fake.cancelled_calls == 1  # nothing keeps running after exit
    stats = scope.statistics()
    assert stats.failed == 2
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled + stats.rejected


async def test_body_cancelled_fails_waiting_callers() -> None:
    """The body cancelled: outside callers get ScopeClosedError, the cancellation propagates."""
    fake = FakeBatchFunction[int, int](delay=10.0)
    errors: list[BaseException] = []

    async def outside(scope: bs.BatchScope[int, int]) -> None:
        try:
            await scope.submit(1)
        except bs.ScopeClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as cancel_scope:
            async with bs.BatchScope(fake, max_wait=0) as scope:
                tg.start_soon(outside, scope)
                await anyio.wait_all_tasks_blocked()
                cancel_scope.cancel()
                await anyio.sleep_forever()
    assert cancel_scope.cancelled_caught
    assert len(errors) == 1
    assert errors[0].__cause__ is None  # a cancellation is never wrapped as a cause
    assert fake.cancelled_calls == 1


async def test_base_exception_from_fn_keeps_its_cause() -> None:
    """A BaseException that fn raised from another comes out of the scope with its cause."""

    async def crash(items: list[int]) -> list[int]:
        try:
            raise LookupError("the root cause")
        except LookupError as exc:
            raise Boom("fn crashed") from exc

    with pytest.raises(Boom, match="fn crashed") as caught:
        async with bs.BatchScope(crash, max_wait=0) as scope:
            with pytest.raises(bs.ScopeClosedError):
                await scope.submit(1)
            await anyio.sleep_forever()
    assert isinstance(caught.value.__cause__, LookupError)
    assert caught.value.__suppress_context__


@pytest.mark.parametrize("sync", [False, True], ids=["async-fn", "sync-fn"])
async def test_base_exception_from_fn_fails_everyone_and_propagates(sync: bool) -> None:
    """A BaseException from fn: every waiter gets ScopeClosedError caused by it; it propagates."""
    crash_now = threading.Event()

    def crash_sync(items: list[int]) -> list[int]:
        crash_now.wait(10)
        raise Boom("fn crashed")

    async def crash_async(items: list[int]) -> list[int]:
        await anyio.to_thread.run_sync(crash_now.wait, 10)
        raise Boom("fn crashed")

    errors: list[bs.ScopeClosedError] = []

    async def outside(scope: bs.BatchScope[int, int], x: int) -> None:
        try:
            await scope.submit(x)
        except bs.ScopeClosedError as exc:
            errors.append(exc)

    fn: Any = crash_sync if sync else crash_async
    async with anyio.create_task_group() as tg:
        with pytest.raises(Boom, match="fn crashed"):
            async with bs.BatchScope(fn, max_batch_size=2, max_wait=60) as scope:
                for x in range(4):  # two in the running (full) batch, two formed next
                    tg.start_soon(outside, scope, x)
                await anyio.wait_all_tasks_blocked()
                assert scope.statistics().running == 4
                assert scope.statistics().pending == 0
                crash_now.set()
                await anyio.sleep_forever()
    assert len(errors) == 4
    assert all(isinstance(e.__cause__, Boom) for e in errors)
    stats = scope.statistics()
    assert stats.failed == 4
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled + stats.rejected


async def test_internal_bug_fails_everyone_and_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug inside the scheduler fails every waiter with ScopeClosedError; the bug propagates."""
    from batchscope import _pending

    def broken_take(self: object, *args: object) -> None:
        raise RuntimeError("scheduler bug")

    monkeypatch.setattr(_pending.FifoPool, "take", broken_take)
    errors: list[bs.ScopeClosedError] = []

    async def outside(scope: bs.BatchScope[int, int]) -> None:
        try:
            await scope.submit(1)
        except bs.ScopeClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        with pytest.raises(RuntimeError, match="scheduler bug"):
            async with bs.BatchScope(FakeBatchFunction[int, int]()) as scope:
                tg.start_soon(outside, scope)
                await anyio.sleep_forever()
    assert len(errors) == 1
    assert isinstance(errors[0].__cause__, RuntimeError)


@pytest.mark.virtual_time
async def test_backpressure_bounds_pending_items() -> None:
    """With on_full='wait', pending items never exceed max_queue_size; submitters wait."""
    gate = anyio.Event()
    peak = 0

    async def slow(items: list[int]) -> list[int]:
        await gate.wait()
        return items

    async with bs.BatchScope(slow, max_batch_size=2, max_queue_size=5, max_wait=0) as scope:
        async with anyio.create_task_group() as tg:
            for x in range(40):
                tg.start_soon(scope.submit, x)
            for _ in range(20):
                await anyio.wait_all_tasks_blocked()
                peak = max(peak, scope.statistics().pending)
                gate.set()
                gate = anyio.Event()
            gate.set()
            await anyio.wait_all_tasks_blocked()
            gate.set()
        stats = scope.statistics()
    assert peak == 5
    assert stats.completed == 40


@pytest.mark.virtual_time
async def test_reject_when_full_raises_queue_full() -> None:
    """With on_full='reject', a submit into a full queue raises QueueFullError at once."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(
        fake, max_queue_size=2, on_full="reject", max_batch_size=1, max_wait=0
    ) as scope:
        async with anyio.create_task_group() as tg:
            for x in range(4):  # one running, one formed next, two pending: the queue is full
                tg.start_soon(scope.submit, x)
                await anyio.wait_all_tasks_blocked()
            with pytest.raises(bs.QueueFullError, match="max_queue_size=2"):
                await scope.submit(99)
        stats = scope.statistics()
    assert (stats.submitted, stats.completed, stats.rejected) == (5, 4, 1)


@pytest.mark.virtual_time
async def test_close_refuses_callers_waiting_for_room() -> None:
    """Callers blocked on a full queue get ScopeClosedError when the scope closes."""
    gate = anyio.Event()

    async def slow(items: list[int]) -> list[int]:
        await gate.wait()
        return items

    refused: list[int] = []
    async with bs.BatchScope(slow, max_queue_size=1, max_batch_size=1, max_wait=0) as scope:
        async with anyio.create_task_group() as tg:

            async def call(x: int) -> None:
                try:
                    await scope.submit(x)
                except bs.ScopeClosedError:
                    refused.append(x)

            for x in range(6):  # 0 runs, 1 formed next, 2 pending, 3..5 wait for room
                tg.start_soon(call, x)
                await anyio.wait_all_tasks_blocked()
            scope.close()
            await anyio.wait_all_tasks_blocked()
            gate.set()
        stats = scope.statistics()
    assert sorted(refused) == [3, 4, 5]
    assert (stats.completed, stats.rejected) == (3, 3)


async def test_statistics_add_up_while_open_and_after_exit() -> None:
    """submitted == completed + failed + cancelled + rejected + pending + running, always."""
    fake = FakeBatchFunction[int, int](delay=0.01, fail_items={3: ValueError("x")})

    def check(stats: bs.BatchStatistics) -> None:
        total = (
            stats.completed
            + stats.failed
            + stats.cancelled
            + stats.rejected
            + stats.pending
            + stats.running
        )
        assert stats.submitted == total

    async with (
        bs.BatchScope(fake, max_batch_size=4, max_wait=0.001) as scope,
        anyio.create_task_group() as tg,
    ):
        for x in range(10):
            tg.start_soon(functools.partial(scope.submit_many, [x], return_exceptions=True))
        await anyio.wait_all_tasks_blocked()
        check(scope.statistics())
        with anyio.move_on_after(0.001):
            await scope.submit(100)
        check(scope.statistics())
    stats = scope.statistics()
    check(stats)
    assert stats.pending == stats.running == stats.in_flight == 0
    assert stats.batches == sum(count for _, count in stats.batch_size_histogram)
    assert stats.mean_batch_size == pytest.approx(
        sum(size * count for size, count in stats.batch_size_histogram) / stats.batches
    )
    assert stats.latency_ms.p50 >= stats.queue_wait_ms.p50 >= 0
    assert stats.padding_efficiency == 1.0
    assert not math.isnan(stats.latency_ms.p99)
    with pytest.raises(TypeError):
        stats.release_reasons["size"] = 0  # type: ignore[index]


async def test_statistics_of_a_fresh_scope() -> None:
    """Before any item, the snapshot is all zeros (percentiles nan)."""
    stats = bs.BatchScope(FakeBatchFunction[int, int]()).statistics()
    assert stats.submitted == stats.batches == 0
    assert stats.batch_size_histogram == ()
    assert math.isnan(stats.latency_ms.p50)
    assert dict(stats.release_reasons) == dict.fromkeys(
        ["size", "cost", "timer", "deadline", "drain", "early"], 0
    )


@pytest.mark.virtual_time
async def test_pending_gauge_is_the_statistic() -> None:
    """scope.pending (the exporters' cheap gauge) reads what statistics().pending does."""
    async with bs.BatchScope(
        FakeBatchFunction[int, int](), max_batch_size=10, max_wait=1.0
    ) as scope:
        assert scope.pending == 0
        async with anyio.create_task_group() as tg:
            for x in range(3):
                tg.start_soon(scope.submit, x)
            await anyio.sleep(0.5)  # queued, waiting for companions or the timer
            assert scope.pending == scope.statistics().pending == 3
        assert scope.pending == scope.statistics().pending == 0
        assert scope.statistics().scheduler_wakeups > 0  # arrivals and the timer woke it
