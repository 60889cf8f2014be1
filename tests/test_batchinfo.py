"""The per-batch view: ``bs.current_batch()`` inside a batch function."""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import anyio
import pytest

import batchscope as bs

pytestmark = pytest.mark.anyio


def test_current_batch_outside_a_batch_is_an_error() -> None:
    """Outside a batch function, current_batch() says where it can be used."""
    with pytest.raises(RuntimeError, match="only available inside a batch function"):
        bs.current_batch()


def test_end_is_one_object() -> None:
    """END is a singleton that survives pickling and names itself."""
    assert repr(bs.END) == "batchscope.END"
    assert type(bs.END)() is bs.END
    assert pickle.loads(pickle.dumps(bs.END)) is bs.END


@pytest.mark.virtual_time
async def test_an_async_fn_sees_its_batch() -> None:
    """An async fn reads its batch's size, release reason and live rows."""
    seen: list[bs.BatchInfo] = []

    async def fn(items: list[int]) -> list[int]:
        info = bs.current_batch()
        seen.append(info)
        assert list(info.alive) == [True] * len(items)
        return items

    async with bs.BatchScope(fn, max_batch_size=2, max_wait=0.1) as scope:
        assert await scope.submit_many([1, 2, 3]) == [1, 2, 3]
    assert [(info.size, info.reason) for info in seen] == [(2, "size"), (1, "timer")]
    assert all(info.partition is None and info.contexts is None for info in seen)
    with pytest.raises(RuntimeError):
        bs.current_batch()  # reset after the call


async def test_a_sync_fn_sees_its_batch_in_its_thread() -> None:
    """A sync fn in a worker thread sees the same view (the context travels with it)."""
    sizes: list[int] = []

    def fn(items: list[int]) -> list[int]:
        sizes.append(bs.current_batch().size)
        return items

    async with bs.BatchScope(fn, max_batch_size=3, max_wait=0.5) as scope:
        assert await scope.submit_many([1, 2, 3]) == [1, 2, 3]
    assert sizes == [3]


@pytest.mark.virtual_time
async def test_alive_turns_false_when_a_caller_leaves() -> None:
    """A row whose caller is cancelled while its batch runs reads alive False."""
    started = anyio.Event()
    left = anyio.Event()
    alive_after: list[bool] = []

    async def fn(items: list[int]) -> list[int]:
        info = bs.current_batch()
        started.set()
        await left.wait()
        alive_after.extend(info.alive)
        return items

    leaving = anyio.CancelScope()
    async with (
        bs.BatchScope(fn, max_batch_size=2, max_wait=1) as scope,
        anyio.create_task_group() as tg,
    ):

        async def leaver() -> None:
            with leaving:
                await scope.submit(1)

        async def stayer() -> None:
            assert await scope.submit(2) == 2

        tg.start_soon(leaver)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(stayer)
        await started.wait()
        leaving.cancel()
        await anyio.sleep(0.01)
        left.set()
    assert alive_after == [False, True]
    assert scope.statistics().cancelled == 1


@pytest.mark.virtual_time
async def test_a_retry_call_sees_only_its_rows() -> None:
    """A retried call's view covers the rows of that call only."""
    sizes: list[int] = []

    async def fn(items: list[int]) -> Sequence[int | Exception]:
        sizes.append(bs.current_batch().size)
        if len(sizes) == 1:
            return [ValueError("again"), *items[1:]]
        return items

    retry = bs.Retry(attempts=2, on=ValueError, wait_initial=0.01, wait_jitter=0)
    async with bs.BatchScope(fn, max_batch_size=3, max_wait=0.1, retry=retry) as scope:
        assert await scope.submit_many([1, 2, 3]) == [1, 2, 3]
    assert sizes == [3, 1]
