"""Invariants under random schedules (Hypothesis) and under load (a stress test)."""

from __future__ import annotations

import asyncio
import random

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchscope as bs

pytestmark = pytest.mark.anyio


class BatchFailed(Exception):
    """fn raised for a whole batch."""


class ItemFailed(Exception):
    """fn returned an exception for one item."""


def check_invariant(stats: bs.BatchStatistics) -> None:
    accounted = (
        stats.completed
        + stats.failed
        + stats.cancelled
        + stats.rejected
        + stats.pending
        + stats.running
    )
    assert stats.submitted == accounted, stats


# One caller: (arrival delay, patience or None, fate of its item).
callers = st.lists(
    st.tuples(
        st.floats(0, 0.05),
        st.one_of(st.none(), st.floats(0, 0.05)),
        st.sampled_from(["ok", "ok", "ok", "item-fails", "batch-fails"]),
    ),
    min_size=1,
    max_size=40,
)


@pytest.mark.virtual_time
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    schedule=callers,
    max_batch_size=st.integers(1, 6),
    max_wait=st.sampled_from([0.0, 0.001, 0.01]),
    fn_time=st.sampled_from([0.0, 0.002, 0.02]),
    concurrency=st.integers(1, 3),
)
async def test_every_submit_ends_exactly_once(
    schedule: list[tuple[float, float | None, str]],
    max_batch_size: int,
    max_wait: float,
    fn_time: float,
    concurrency: int,
) -> None:
    """Random submits, cancellations and failures: each submit ends once, with its own outcome."""
    fates = {index: fate for index, (_, _, fate) in enumerate(schedule)}
    seen: list[int] = []
    scope: bs.BatchScope[int, int]

    async def fn(items: list[int]) -> list[int | Exception]:
        assert len(items) <= max_batch_size
        check_invariant(scope.statistics())
        seen.extend(items)
        await anyio.sleep(fn_time)
        if any(fates[i] == "batch-fails" for i in items):
            raise BatchFailed(items)
        return [ItemFailed(i) if fates[i] == "item-fails" else i * 7 for i in items]

    outcomes: dict[int, list[tuple[str, object]]] = {i: [] for i in range(len(schedule))}

    async def caller(index: int, delay: float, patience: float | None) -> None:
        await anyio.sleep(delay)
        with anyio.move_on_after(patience if patience is not None else float("inf")):
            try:
                outcomes[index].append(("result", await scope.submit(index)))
            except (BatchFailed, ItemFailed) as exc:
                outcomes[index].append(("error", exc))
            return
        outcomes[index].append(("cancelled", None))

    async with (
        bs.BatchScope(
            fn, max_batch_size=max_batch_size, max_wait=max_wait, max_concurrent_batches=concurrency
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        for index, (delay, patience, _) in enumerate(schedule):
            tg.start_soon(caller, index, delay, patience)

    assert len(seen) == len(set(seen)), "an item reached fn twice"
    results = errors = cancelled = 0
    for index, ends in outcomes.items():
        assert len(ends) == 1, f"caller {index} ended {len(ends)} times"
        kind, value = ends[0]
        if kind == "result":
            results += 1
            assert value == index * 7, "a result went to the wrong caller"
            assert fates[index] == "ok"
        elif kind == "error":
            errors += 1
            assert index in seen
            if isinstance(value, ItemFailed):
                assert value.args == (index,)
            else:
                assert isinstance(value, BatchFailed) and index in value.args[0]
        else:
            cancelled += 1
    stats = scope.statistics()
    check_invariant(stats)
    assert stats.pending == stats.running == 0
    assert stats.submitted == len(schedule)
    # A caller cancelled in the same instant its item ended counts as that end.
    assert stats.completed >= results and stats.failed >= errors
    assert stats.cancelled <= cancelled


def _asyncio_debug() -> bool:
    """Whether this test runs on an asyncio loop in debug mode."""
    try:
        return asyncio.get_running_loop().get_debug()
    except RuntimeError:  # not an asyncio loop (Trio)
        return False


@pytest.mark.parametrize("fn_kind", ["async", "sync"])
async def test_stress_many_callers_with_random_cancellations(fn_kind: str) -> None:
    """
    20,000 concurrent callers, a third of them cancelled at random: nothing lost or crossed.

    5,000 on asyncio's debug mode, which records a traceback for every task and future
    (20,000 there take ~20 s of CI time each run, the other loops ~4 s).
    """
    rng = random.Random(1234)
    count = 5_000 if _asyncio_debug() else 20_000

    async def double_async(items: list[int]) -> list[int]:
        await anyio.lowlevel.checkpoint()
        return [2 * x for x in items]

    def double_sync(items: list[int]) -> list[int]:
        return [2 * x for x in items]

    ended = [0] * count
    wrong = 0

    async def caller(scope: bs.BatchScope[int, int], x: int, patience: float | None) -> None:
        nonlocal wrong
        with anyio.move_on_after(patience if patience is not None else float("inf")):
            if await scope.submit(x) != 2 * x:
                wrong += 1
        ended[x] += 1

    fn = double_async if fn_kind == "async" else double_sync
    async with (
        bs.BatchScope(
            fn, max_batch_size=64, max_wait=0.001, max_queue_size=5_000, max_concurrent_batches=2
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        for x in range(count):
            patience = rng.choice([None, None, rng.uniform(0, 0.01)])
            tg.start_soon(caller, scope, x, patience)
    stats = scope.statistics()
    assert wrong == 0
    assert ended == [1] * count
    check_invariant(stats)
    assert stats.submitted == count
    assert stats.completed + stats.cancelled == count
    assert stats.cancelled > 0 and stats.completed > count // 2
