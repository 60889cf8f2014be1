"""
Callers' deadlines on the real clock, under a CPU hog: timers fire late, threads steal the
GIL. Outcomes and generous bounds only (who is served), never tight times.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

import batchscope as bs

pytestmark = [pytest.mark.anyio, pytest.mark.realclock]


def identity(items: list[int]) -> list[int]:
    return items


async def async_identity(items: list[int]) -> list[int]:
    return items


def slow_sync(items: list[int]) -> list[int]:
    time.sleep(0.030)
    return items


async def slow_async(items: list[int]) -> list[int]:
    await anyio.sleep(0.030)
    return items


async def served(scope: bs.BatchScope[int, int], patience: float) -> bool:
    """Whether one caller with ``fail_after(patience)`` gets its result."""
    try:
        with anyio.fail_after(patience):
            return await scope.submit(7) == 7
    except TimeoutError:
        return False


async def test_callers_one_after_another_are_served(cpu_hog: Any) -> None:
    """
    Callers with fail_after from 20 ms to 1 s, one after another, max_wait=10: the 1 s
    caller is served, and every batch is released by its caller's deadline.
    """
    timeouts = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    async with bs.BatchScope(identity, max_wait=10) as scope:
        outcomes = {timeout: await served(scope, timeout) for timeout in timeouts}
        stats = scope.statistics()
    # A loaded 2-core machine stalls the loop for tens of milliseconds now and then (and
    # for hundreds, with other processes' CPU hogs beside this one: a 500 ms caller was
    # missed so once), so only the 1 s caller is asserted; the others are served on an
    # unloaded machine. The old code served none of the 500 ms and 1 s callers.
    assert outcomes[1.0], (outcomes, stats)
    assert stats.completed >= sum(outcomes.values())
    assert stats.release_reasons["deadline"] == stats.batches
    assert cpu_hog.spins > 0


async def test_a_single_caller_is_served(cpu_hog: Any) -> None:
    """A lone caller with fail_after(0.5) and max_wait=10 is served, well before its deadline."""
    # An async fn: a sync one's first batch also starts a worker thread, which under the
    # hog, late in a full test run, has been seen to take 40 ms on its own.
    async with bs.BatchScope(async_identity, max_wait=10) as scope:
        assert await served(scope, 0.5)
        stats = scope.statistics()
    assert (stats.completed, stats.release_reasons["deadline"]) == (1, 1)


async def test_one_slow_batch_does_not_lock_callers_out(cpu_hog: Any) -> None:
    """After one 0.6 s cold-start batch, callers with 300 ms timeouts are served (fn runs again)."""
    calls: list[list[int]] = []

    def cold_start(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            time.sleep(0.6)
        return items

    async with bs.BatchScope(cold_start, max_wait=0.005) as scope:
        assert await scope.submit(0) == 0
        outcomes = [await served(scope, 0.3) for _ in range(3)]
    assert outcomes == [True, True, True]
    assert len(calls) == 4


@pytest.mark.parametrize("fn", [identity, slow_sync, slow_async], ids=["fast", "sync", "async"])
async def test_deadlines_are_met_with_fast_and_slow_functions(fn: Any, cpu_hog: Any) -> None:
    """Concurrent callers with deadlines from 20 ms to 2 s, max_wait=10: all that can be, served."""
    timeouts = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
    outcomes: dict[float, bool] = {}

    async def caller(patience: float) -> None:
        outcomes[patience] = await served(scope, patience)

    async with bs.BatchScope(fn, max_batch_size=4, max_wait=10) as scope:
        assert await scope.submit_many(range(4)) == [0, 1, 2, 3]  # a full batch: timed
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            # Staggered, each caller alone with the longer ones pending: every batch is
            # released by the soonest deadline.
            for timeout in timeouts:
                tg.start_soon(caller, timeout)
                await anyio.sleep(0.01)
        elapsed = anyio.current_time() - start
        stats = scope.statistics()
    # The 30 ms functions cannot serve 20 ms; past a loaded machine's worst stalls, every
    # caller is served (500 ms and more: every case, in 4 runs with a second CPU hog
    # process beside this one's).
    assert all(outcomes[timeout] for timeout in timeouts if timeout >= 0.5), (outcomes, stats)
    assert stats.completed >= 4 + sum(outcomes.values())
    assert stats.completed + stats.cancelled == stats.submitted
    # Nothing hung: the callers ended within their deadlines (served ones before theirs,
    # the 2 s caller among them), plus what a loaded loop's stalls add to the task
    # group's exit (measured: 2.66 s with four processes on two cores).
    assert elapsed < 5.0
