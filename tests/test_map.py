"""submit_many and map: many items per call, order, errors, bounded streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio


async def test_submit_many_keeps_input_order() -> None:
    """submit_many returns results in input order across several batches."""
    fake = FakeBatchFunction[int, int](lambda x: -x)
    async with bs.BatchScope(fake, max_batch_size=3) as scope:
        assert await scope.submit_many(range(10)) == [-x for x in range(10)]
        assert await scope.submit_many([]) == []
    assert len(fake.batches) == 4


@pytest.mark.virtual_time
async def test_submit_many_raises_first_failure_and_withdraws_the_rest() -> None:
    """
    Without return_exceptions the first failure is raised; items still queued then are
    withdrawn and never reach fn (item 4 would wait 10 s for companions). The caller saw
    one failure: the other items, ended or not, count as cancelled.
    """
    fake = FakeBatchFunction[int, int](raise_on={0: ValueError("first batch")})
    async with bs.BatchScope(fake, max_batch_size=4, max_wait=10) as scope:
        with pytest.raises(ValueError, match="first batch"):
            await scope.submit_many(range(5))
        assert anyio.current_time() < 10
        stats = scope.statistics()
    assert fake.batches == [[0, 1, 2, 3]]
    assert (stats.failed, stats.cancelled, stats.pending) == (1, 4, 0)


async def test_map_ordered_yields_in_input_order() -> None:
    """map(ordered=True) yields results in the order of the source."""
    fake = FakeBatchFunction[int, int](lambda x: x * 3)
    async with bs.BatchScope(fake, max_batch_size=4) as scope:
        assert [y async for y in scope.map(range(25))] == [x * 3 for x in range(25)]


async def test_map_unordered_yields_everything_once() -> None:
    """map(ordered=False) yields each result exactly once, as completed."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_batch_size=4, max_concurrent_batches=3) as scope:
        got = [y async for y in scope.map(range(50), ordered=False)]
    assert sorted(got) == list(range(50))  # type: ignore[type-var]


async def test_map_takes_async_iterables() -> None:
    """map accepts an async iterable source."""

    async def source() -> AsyncIterator[int]:
        for x in range(10):
            await anyio.lowlevel.checkpoint()
            yield x

    fake = FakeBatchFunction[int, int](lambda x: x + 1)
    async with bs.BatchScope(fake) as scope:
        assert [y async for y in scope.map(source())] == list(range(1, 11))


async def test_map_window_bounds_items_pulled_ahead() -> None:
    """The feeder never pulls more than `window` items ahead of the consumer."""
    pulled = 0
    consumed = 0
    worst = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for x in range(100):
            pulled += 1
            yield x

    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_batch_size=4, max_wait=0) as scope:
        async for _ in scope.map(source(), window=5):
            consumed += 1
            worst = max(worst, pulled - consumed)
            await anyio.lowlevel.checkpoint()
    assert consumed == 100
    # At most `window` outstanding after a hand-out, plus the one being pulled.
    assert worst <= 5


async def test_map_return_exceptions_yields_them() -> None:
    """With return_exceptions=True a failed item's exception is yielded in its place."""
    fake = FakeBatchFunction[int, int](fail_items={2: KeyError("two")})
    async with bs.BatchScope(fake) as scope:
        got = [y async for y in scope.map(range(4), return_exceptions=True)]
    assert got[:2] == [0, 1] and got[3] == 3
    assert isinstance(got[2], KeyError)


async def test_map_raises_and_stops_on_failure() -> None:
    """Without return_exceptions, a failed item raises and the stream stops."""
    fake = FakeBatchFunction[int, int](fail_items={2: KeyError("two")})
    got: list[object] = []
    async with bs.BatchScope(fake, max_batch_size=1, max_wait=0) as scope:
        with pytest.raises(KeyError):
            async for y in scope.map(range(1000), window=4):
                got.append(y)
        stats = scope.statistics()
    assert got == [0, 1]
    assert len(fake.items) < 10  # the feeder stopped
    assert stats.pending == 0


async def test_map_source_error_reaches_the_consumer_after_earlier_results() -> None:
    """An exception from the source is raised after the results of the items before it."""

    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("source broke")

    fake = FakeBatchFunction[int, int]()
    got: list[object] = []
    async with bs.BatchScope(fake) as scope:
        with pytest.raises(OSError, match="source broke"):
            async for y in scope.map(source()):
                got.append(y)
    assert got == [1, 2]


async def test_map_early_exit_with_context_manager_withdraws_queued_items() -> None:
    """Leaving `async with scope.map(...)` early withdraws items not yet dispatched."""
    fake = FakeBatchFunction[int, int](delay=0.01)
    async with bs.BatchScope(fake, max_batch_size=2, max_wait=0) as scope:
        async with scope.map(range(1000), window=20) as results:
            async for y in results:
                if y == 3:
                    break
        stats = scope.statistics()
        assert stats.pending == 0
    assert len(fake.items) < 30
    assert stats.submitted == stats.completed + stats.cancelled + stats.running


async def test_map_broken_out_of_without_closing_does_not_block_exit() -> None:
    """A plain `async for ... break` leaves the feeder parked; closing the scope still exits."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_batch_size=2) as scope:
        async for y in scope.map(range(10_000), window=8):
            if y == 1:
                break
    assert len(fake.items) < 20


async def test_map_on_a_closed_scope_raises() -> None:
    """Iterating a map of a closed scope raises ScopeClosedError."""
    async with bs.BatchScope(FakeBatchFunction[int, int]()) as scope:
        pass
    with pytest.raises(bs.ScopeClosedError):
        async for _ in scope.map([1]):
            pass


@pytest.mark.parametrize("window", [0, -1, 1.5, True])
async def test_map_rejects_bad_window(window: object) -> None:
    """window must be a positive int."""
    async with bs.BatchScope(FakeBatchFunction[int, int]()) as scope:
        with pytest.raises((TypeError, ValueError), match="'window' must be"):
            scope.map([1], window=window)  # type: ignore[arg-type]


async def test_map_progress_bar_counts_items(capsys: pytest.CaptureFixture[str]) -> None:
    """map(progress=True) draws a bar on stderr that ends at n/n, under any backend."""
    pytest.importorskip("rich")
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_batch_size=8) as scope:
        got = [y async for y in scope.map(range(40), progress=True)]
    assert got == list(range(40))
    err = capsys.readouterr().err
    assert "batchscope map" in err and "40/40" in err
