"""Streaming batch functions: ``scope.stream(x)`` over an async-generator fn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchscope as bs

pytestmark = pytest.mark.anyio


class Counted:
    """An async-generator fn yielding ``f"{x}:{k}"`` for k < x, then END; it records."""

    def __init__(self, step_time: float = 1.0) -> None:
        self.step_time = step_time
        self.batches: list[list[int]] = []
        self.steps = 0
        self.closed = 0
        self.alive: list[list[bool]] = []

    async def __call__(self, items: list[int]) -> AsyncIterator[list[Any]]:
        self.batches.append(list(items))
        info = bs.current_batch()
        try:
            for k in range(max(items) + 1):
                await anyio.sleep(self.step_time)
                self.alive.append(list(info.alive))
                self.steps += 1
                yield [f"{x}:{k}" if k < x else bs.END for x in items]
        finally:
            self.closed += 1


def check_invariant(stats: bs.BatchStatistics) -> None:
    assert stats.submitted == (
        stats.completed
        + stats.failed
        + stats.cancelled
        + stats.rejected
        + stats.pending
        + stats.running
    ), stats


@pytest.mark.virtual_time
async def test_outputs_arrive_as_they_are_yielded() -> None:
    """Each output reaches its caller when its step is yielded, not at the end."""
    fn = Counted(step_time=1.0)
    arrivals: list[tuple[float, str]] = []
    async with bs.BatchScope(fn, max_batch_size=1, max_wait=0) as scope:
        start = anyio.current_time()
        async for out in scope.stream(3):
            arrivals.append((round(anyio.current_time() - start, 6), out))
    assert arrivals == [(1.0, "3:0"), (2.0, "3:1"), (3.0, "3:2")]
    assert fn.batches == [[3]] and fn.closed == 1
    stats = scope.statistics()
    assert (stats.completed, stats.batches) == (1, 1)
    assert stats.first_output_ms.p50 == pytest.approx(1000.0)
    assert stats.output_gap_ms.p50 == pytest.approx(1000.0)
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_submit_collects_each_rows_outputs() -> None:
    """submit() on a streaming fn returns its own row's outputs, rows independent."""
    fn = Counted(step_time=0.1)
    async with bs.BatchScope(fn, max_batch_size=3, max_wait=1) as scope:
        results: dict[int, list[str]] = {}

        async def one(x: int) -> None:
            results[x] = await scope.submit(x)

        async with anyio.create_task_group() as tg:
            for x in (2, 0, 3):
                tg.start_soon(one, x)
    assert results == {0: [], 2: ["2:0", "2:1"], 3: ["3:0", "3:1", "3:2"]}
    assert len(fn.batches) == 1 and sorted(fn.batches[0]) == [0, 2, 3]
    assert fn.alive[-1] == [x == 3 for x in fn.batches[0]]  # ended rows read not alive
    stats = scope.statistics()
    assert (stats.completed, stats.failed, stats.batches) == (3, 0, 1)


@pytest.mark.virtual_time
async def test_an_exception_entry_fails_its_row_alone() -> None:
    """An Exception yielded for a row fails that row after its earlier outputs."""

    async def fn(items: list[int]) -> AsyncIterator[list[Any]]:
        yield [x * 10 for x in items]
        yield [ValueError(f"bad {x}") if x == 2 else x * 10 + 1 for x in items]
        yield [bs.END for _ in items]

    async with bs.BatchScope(fn, max_batch_size=2, max_wait=1) as scope:
        seen: dict[int, list[int]] = {1: [], 2: []}
        errors: list[BaseException] = []

        async def one(x: int) -> None:
            try:
                async for out in scope.stream(x):
                    seen[x].append(out)
            except ValueError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 1)
            tg.start_soon(one, 2)
    assert seen == {1: [10, 11], 2: [20]}
    assert [str(e) for e in errors] == ["bad 2"]
    stats = scope.statistics()
    assert (stats.completed, stats.failed) == (1, 1)
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_a_generator_that_returns_ends_open_rows() -> None:
    """Rows still open when the generator finishes end normally."""

    async def fn(items: list[int]) -> AsyncIterator[list[int]]:
        yield items

    async with bs.BatchScope(fn, max_batch_size=2, max_wait=1) as scope:
        outputs: object = await scope.submit(7)  # typed as one output: see the docs
        assert outputs == [7]
    assert scope.statistics().completed == 1


@pytest.mark.virtual_time
async def test_a_caller_breaking_out_frees_its_row() -> None:
    """break ends the row at once: fn reads alive False at its next step; others go on."""
    fn = Counted(step_time=1.0)
    async with bs.BatchScope(fn, max_batch_size=2, max_wait=1) as scope:
        got: list[str] = []
        other: list[str] = []

        async def breaker() -> None:
            async for out in scope.stream(5):
                got.append(out)
                break

        async def stayer() -> None:
            other.extend(await scope.submit(3))

        async with anyio.create_task_group() as tg:
            tg.start_soon(breaker)
            await anyio.sleep(0.01)  # 5 is queued first (Trio starts tasks in any order)
            tg.start_soon(stayer)
    assert got == ["5:0"] and other == ["3:0", "3:1", "3:2"]
    assert fn.alive[0] == [True, True]
    assert fn.alive[1] == [False, True]
    assert fn.steps == 4  # the row of 3 ends at step 4; no step for 5 after that
    assert fn.closed == 1
    stats = scope.statistics()
    assert (stats.completed, stats.cancelled) == (1, 1)
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_the_generator_is_closed_when_every_caller_left() -> None:
    """Once every caller has left, fn is never stepped again and is aclose()d."""
    fn = Counted(step_time=1.0)
    async with bs.BatchScope(fn, max_batch_size=2, max_wait=1) as scope:

        async def one(x: int, patience: float) -> None:
            with anyio.move_on_after(patience):
                async with scope.stream(x) as outs:
                    async for _ in outs:
                        pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 100, 2.5)  # leaves while fn computes its 3rd step
            await anyio.sleep(0.01)  # its row is row 0 (Trio starts tasks in any order)
            tg.start_soon(one, 100, 3.5)  # the last: leaves during the 4th
        await anyio.sleep(10)
        assert fn.steps == 3 and fn.closed == 1
        assert fn.alive == [[True, True], [True, True], [False, True]]
        assert await scope.submit(1) == ["1:0"]  # the scope serves on
    stats = scope.statistics()
    assert (stats.cancelled, stats.completed, stats.batches) == (2, 1, 2)
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_a_wrong_length_step_fails_its_batch_only() -> None:
    """A step of the wrong length fails that batch's rows; the scope serves on."""
    calls: list[list[int]] = []

    async def fn(items: list[int]) -> AsyncIterator[list[Any]]:
        calls.append(items)
        yield list(items)
        if len(calls) == 1:
            yield [*items, 0]
        yield [bs.END] * len(items)

    async with bs.BatchScope(fn, max_batch_size=2, max_wait=1) as scope:
        with pytest.raises(
            bs.BatchSizeMismatchError, match="yielded 2 entries for a batch of 1 item"
        ):
            await scope.submit(1)
        assert await scope.submit(2) == [2]
    assert calls == [[1], [2]]
    stats = scope.statistics()
    assert (stats.failed, stats.completed) == (1, 1)


@pytest.mark.virtual_time
async def test_a_raising_generator_fails_its_open_rows() -> None:
    """fn raising mid-stream: outputs before stay delivered, open rows get the error."""

    async def fn(items: list[int]) -> AsyncIterator[list[Any]]:
        yield [bs.END if x == 1 else x for x in items]
        raise KeyError("boom")

    async with bs.BatchScope(fn, max_batch_size=2, max_wait=1) as scope:
        got: list[int] = []

        async def one() -> None:
            with pytest.raises(KeyError, match="boom"):
                async for out in scope.stream(2):
                    got.append(out)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(scope.submit, 1)
        assert got == [2]
    stats = scope.statistics()
    assert (stats.completed, stats.failed) == (1, 1)


@pytest.mark.virtual_time
async def test_a_silent_generator_times_out() -> None:
    """A generator that never yields fails its rows with TimeoutError at batch_timeout."""
    calls = 0

    async def fn(items: list[int]) -> AsyncIterator[list[int]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep_forever()
        yield items

    async with bs.BatchScope(fn, max_batch_size=1, max_wait=0, batch_timeout=5) as scope:
        start = anyio.current_time()
        with pytest.raises(TimeoutError):
            await scope.submit(1)
        assert anyio.current_time() - start == pytest.approx(5)
        outputs: object = await scope.submit(2)
        assert outputs == [2]
    assert scope.statistics().failed == 1


@pytest.mark.virtual_time
async def test_retry_reruns_only_a_stream_that_yielded_nothing() -> None:
    """A generator that raised before its first step is retried; one that yielded is not."""
    calls = 0

    async def fn(items: list[int]) -> AsyncIterator[list[int]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("cold")
        yield items
        if calls == 2:
            raise OSError("mid-stream")

    retry = bs.Retry(attempts=3, on=OSError, wait_initial=0.1, wait_jitter=0)
    async with bs.BatchScope(fn, max_batch_size=1, max_wait=0, retry=retry) as scope:
        got: list[int] = []
        with pytest.raises(OSError, match="mid-stream"):
            async for out in scope.stream(4):
                got.append(out)
    assert got == [4] and calls == 2
    assert scope.statistics().retries == 1


def test_options_a_stream_cannot_combine_with_are_refused() -> None:
    """collate, isolate_failures, cache and key are refused at construction, by name."""

    async def fn(items: list[int]) -> AsyncIterator[list[int]]:
        yield items

    class ListCollator:
        async def collate(self, items: list[int]) -> tuple[list[int], None]:
            return items, None

        async def split(self, output: list[int], context: None) -> list[int]:
            return output

    with pytest.raises(TypeError, match="'collate'"):
        bs.BatchScope(fn, collate=ListCollator())
    with pytest.raises(ValueError, match="'isolate_failures'"):
        bs.BatchScope(fn, isolate_failures=True)
    with pytest.raises(ValueError, match="'cache'"):
        bs.BatchScope(fn, cache={})
    with pytest.raises(ValueError, match="'key'"):
        bs.BatchScope(fn, key=str)


async def test_stream_needs_a_streaming_fn_and_many_refuses_one() -> None:
    """stream() on a plain fn, and submit_many()/map() on a streaming one, raise TypeError."""

    async def plain(items: list[int]) -> list[int]:
        return items

    async def streaming(items: list[int]) -> AsyncIterator[list[int]]:
        yield items

    with pytest.raises(TypeError, match="stream\\(\\) needs a streaming batch function"):
        bs.BatchScope(plain).stream(1)
    async with bs.BatchScope(streaming) as scope:
        with pytest.raises(TypeError, match="submit_many"):
            await scope.submit_many([1])
        with pytest.raises(TypeError, match="map"):
            scope.map([1])


@pytest.mark.realclock
async def test_many_streams_complete_on_the_real_clock(cpu_hog: Any) -> None:
    """Under a CPU hog, every caller gets its own outputs, in order."""
    fn = Counted(step_time=0.002)
    results: dict[int, list[str]] = {}
    async with bs.BatchScope(fn, max_batch_size=8, max_wait=0.005) as scope:

        async def one(x: int) -> None:
            results[x] = [out async for out in scope.stream(x)]

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for x in range(30):
                    tg.start_soon(one, x % 6)
    assert results == {x % 6: [f"{x % 6}:{k}" for k in range(x % 6)] for x in range(30)}
    assert sum(len(b) for b in fn.batches) == 30
    stats = scope.statistics()
    assert stats.completed == 30 and stats.batches == len(fn.batches)
    check_invariant(stats)


# One caller: (arrival delay, output count, patience or None, leaves after k outputs or None).
schedules = st.lists(
    st.tuples(
        st.floats(0, 0.05),
        st.integers(0, 5),
        st.one_of(st.none(), st.floats(0, 0.1)),
        st.one_of(st.none(), st.integers(0, 4)),
    ),
    min_size=1,
    max_size=20,
)


@pytest.mark.virtual_time
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(schedule=schedules, max_batch_size=st.integers(1, 5))
async def test_random_leave_schedules_keep_every_stream_whole(
    schedule: list[tuple[float, int, float | None, int | None]], max_batch_size: int
) -> None:
    """Rows that stay get all their outputs in order; none to a wrong caller; no late step."""
    steps_after_all_left: list[int] = []

    async def fn(items: list[tuple[int, int]]) -> AsyncIterator[list[Any]]:
        info = bs.current_batch()
        for k in range(max(count for _, count in items) + 1):
            # Resumed for a step after every caller had left: the generator should have
            # been closed. (Checked as the step starts: a caller whose patience ends in
            # the very instant the step's work does may leave on either side of it.)
            if not any(info.alive):
                steps_after_all_left.append(k)
            await anyio.sleep(0.01)
            yield [(ident, k) if k < count else bs.END for ident, count in items]

    outcomes: dict[int, tuple[list[Any], bool]] = {}
    async with bs.BatchScope(fn, max_batch_size=max_batch_size, max_wait=0.01) as scope:

        async def one(
            ident: int, delay: float, count: int, patience: float | None, leave_after: int | None
        ) -> None:
            await anyio.sleep(delay)
            got: list[Any] = []
            finished = False
            with anyio.move_on_after(patience if patience is not None else 1e9):
                async with scope.stream((ident, count)) as outs:
                    async for out in outs:
                        got.append(out)
                        if leave_after is not None and len(got) > leave_after:
                            break
                    else:
                        finished = True
            outcomes[ident] = (got, finished)

        async with anyio.create_task_group() as tg:
            for ident, (delay, count, patience, leave_after) in enumerate(schedule):
                tg.start_soon(one, ident, delay, count, patience, leave_after)
    assert steps_after_all_left == []
    for ident, (_, count, _, _) in enumerate(schedule):
        got, finished = outcomes[ident]
        assert got == [(ident, k) for k in range(len(got))]  # own outputs, in order
        if finished:
            assert len(got) == count
    stats = scope.statistics()
    assert stats.submitted == len(schedule)
    check_invariant(stats)
