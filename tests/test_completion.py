"""
The per-item completion a caller parks on: the running loop's own (a loop future under
asyncio and uvloop, a parked task under Trio) and the ``anyio.Event`` fallback for any
other loop. Both must give the same guarantees: woken exactly once, cancellable at every
stage, the park a checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest

import batchscope as bs
import batchscope._wiring
from batchscope._completion import (
    EventItem,
    FutureItem,
    LoopCalls,
    anyio_get_async_backend,
    loop_calls,
)
from batchscope.testing import FakeBatchFunction

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def cancel_at(when: float, cancel_scope: anyio.CancelScope) -> None:
    await anyio.sleep(when - anyio.current_time())
    cancel_scope.cancel()


def _event_calls() -> LoopCalls:
    native = loop_calls()
    return LoopCalls(native.clock, native.deadline, EventItem, anyio.Event)


@pytest.fixture(params=["native", "anyio-event"])
def completion(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the loop's own completion, then with the anyio.Event fallback."""
    if request.param == "anyio-event":
        monkeypatch.setattr(batchscope._wiring, "loop_calls", _event_calls)
    return str(request.param)


async def test_anyio_private_backend_lookup_is_found() -> None:
    """AnyIO's private get_async_backend is where batchscope imports it from (else CI fails)."""
    get_async_backend = anyio_get_async_backend()
    assert get_async_backend is not None, "anyio moved anyio._core._eventloop.get_async_backend"
    backend = get_async_backend()
    assert backend.current_time() == anyio.current_time()
    assert backend.current_effective_deadline() == anyio.current_effective_deadline()


async def test_the_running_loop_picks_its_own_completion(anyio_backend_name: str) -> None:
    async with bs.BatchScope(FakeBatchFunction[int, int]()) as scope:
        assert await scope.submit(1) == 1
        kind = scope._engine.item_type
    if anyio_backend_name == "asyncio":
        assert kind is FutureItem
    else:
        from batchscope._trio import TaskItem

        assert kind is TaskItem


async def test_results_and_errors_reach_their_own_callers(completion: str) -> None:
    def fn(items: list[int]) -> list[Any]:
        return [ValueError(f"bad {i}") if i % 3 == 0 else i * 10 for i in items]

    async with bs.BatchScope(fn, max_batch_size=4, max_wait=0.01) as scope:
        outcomes: dict[int, object] = {}

        async def call(i: int) -> None:
            try:
                outcomes[i] = await scope.submit(i)
            except ValueError as exc:
                outcomes[i] = str(exc)

        async with anyio.create_task_group() as tg:
            for i in range(1, 11):
                tg.start_soon(call, i)
    assert outcomes == {i: f"bad {i}" if i % 3 == 0 else i * 10 for i in range(1, 11)}


async def test_an_already_cancelled_caller_queues_nothing_that_runs(completion: str) -> None:
    """Parking is a checkpoint: a caller cancelled before it submits never reaches fn."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_wait=0) as scope:
        with anyio.CancelScope() as cancelled:
            cancelled.cancel()
            await scope.submit(1)
        assert cancelled.cancelled_caught
        assert await scope.submit(2) == 2
        stats = scope.statistics()
    assert fake.batches == [[2]]
    assert (stats.submitted, stats.completed, stats.cancelled, stats.pending) == (2, 1, 1, 0)


async def test_cancelled_before_and_after_dispatch(completion: str) -> None:
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, max_batch_size=3, max_wait=0.5) as scope:
        results: list[int] = []

        async def patient(value: int) -> None:
            results.append(await scope.submit(value))

        async with anyio.create_task_group() as tg:
            tg.start_soon(patient, 1)
            await anyio.sleep(0.01)
            with anyio.CancelScope() as leave:  # before dispatch (at 0.5): withdrawn
                tg.start_soon(cancel_at, 0.1, leave)
                await scope.submit(2)
            tg.start_soon(patient, 3)
            await anyio.sleep(2.0 - anyio.current_time())  # [1, 3] ran from 0.5 to 1.5
            with anyio.CancelScope() as leave:  # after dispatch (at 2.5): dropped, at once
                tg.start_soon(cancel_at, 2.7, leave)
                await scope.submit(4)
            assert anyio.current_time() == pytest.approx(2.7)
        stats = scope.statistics()
    assert sorted(results) == [1, 3]
    assert [sorted(batch) for batch in fake.batches] == [[1, 3], [4]]
    assert (stats.completed, stats.cancelled) == (2, 2)


async def test_a_leaving_follower_does_not_disturb_the_others(completion: str) -> None:
    """Deduplicated callers park on events of their own; one leaving wakes nobody else."""
    fake = FakeBatchFunction[str, str](delay=1.0)
    async with bs.BatchScope(fake, key=lambda item: item, max_wait=0) as scope:
        got: list[str] = []

        async def wait_for(value: str) -> None:
            got.append(await scope.submit(value))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for, "a")
            await anyio.sleep(0.1)
            tg.start_soon(wait_for, "a")
            await anyio.sleep(0.1)
            with anyio.move_on_after(0.1):
                await scope.submit("a")  # a third caller of "a" leaves early
        stats = scope.statistics()
    assert got == ["a", "a"]
    assert fake.batches == [["a"]]
    assert (stats.deduplicated, stats.completed, stats.cancelled) == (2, 2, 1)


async def test_the_submitting_caller_may_leave_while_a_follower_stays(completion: str) -> None:
    fake = FakeBatchFunction[str, str](delay=1.0)
    async with bs.BatchScope(fake, key=lambda item: item, max_wait=0) as scope:
        got: list[str] = []

        async def late_follower() -> None:
            await anyio.sleep(0.1)
            got.append(await scope.submit("a"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(late_follower)
            with anyio.move_on_after(0.5):
                await scope.submit("a")  # the leader: its batch runs from 0 to 1
        assert anyio.current_time() == pytest.approx(1.0)
        stats = scope.statistics()
    assert got == ["a"]
    assert fake.batches == [["a"]]
    assert (stats.deduplicated, stats.completed, stats.cancelled) == (1, 1, 1)


def test_a_trio_item_that_ended_before_its_caller_parked_does_not_hang() -> None:
    trio = pytest.importorskip("trio")
    from batchscope._trio import TaskItem

    async def main() -> int:
        item = TaskItem[int, int](1, 0, 1.0, 0.0, math.inf, None)
        item.succeed(5)  # nobody is parked on it yet: nothing to reschedule
        await item.park()
        return item.outcome()

    assert trio.run(main) == 5
