"""Errors go to the items they belong to; the scope keeps running."""

from __future__ import annotations

import threading
import traceback
from typing import Any, cast

import anyio
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio


async def test_results_go_to_their_own_callers() -> None:
    """Many concurrent callers each get the result computed for their own item."""
    fake = FakeBatchFunction[int, int](lambda x: x * 10)
    results: dict[int, int] = {}
    async with bs.BatchScope(fake, max_batch_size=7) as scope:

        async def call(x: int) -> None:
            results[x] = await scope.submit(x)

        async with anyio.create_task_group() as tg:
            for x in range(200):
                tg.start_soon(call, x)
    assert results == {x: x * 10 for x in range(200)}
    assert all(len(batch) <= 7 for batch in fake.batches)
    assert sorted(fake.items) == list(range(200))


async def test_fn_exception_fails_its_batch_only() -> None:
    """fn raising fails every item of that batch with that exception; other batches succeed."""
    fake = FakeBatchFunction[int, int](raise_on={3: ValueError("bad batch")})
    async with bs.BatchScope(fake, max_batch_size=2, max_wait=0) as scope:
        outcomes = await scope.submit_many([1, 2, 3, 4], return_exceptions=True)
        assert await scope.submit(5) == 5
        stats = scope.statistics()
    assert outcomes[:2] == [1, 2]
    assert all(isinstance(o, ValueError) and str(o) == "bad batch" for o in outcomes[2:])
    assert (stats.completed, stats.failed) == (3, 2)


async def test_fn_exception_keeps_its_type() -> None:
    """The caller can catch fn's exception by its own type."""
    fake = FakeBatchFunction[int, int](raise_on={1: KeyError("missing")})
    async with bs.BatchScope(fake) as scope:
        with pytest.raises(KeyError, match="missing"):
            await scope.submit(1)


async def test_shared_exception_traceback_does_not_grow() -> None:
    """Raising one batch exception in many callers does not pile up their tracebacks."""
    fake = FakeBatchFunction[int, int](raise_on={0: RuntimeError("boom")})
    depths: list[int] = []
    async with bs.BatchScope(fake, max_batch_size=20, max_wait=60) as scope:

        async def call(x: int) -> None:
            try:
                await scope.submit(x)
            except RuntimeError as exc:
                depths.append(len(traceback.extract_tb(exc.__traceback__)))

        async with anyio.create_task_group() as tg:
            for x in range(20):
                tg.start_soon(call, x)
    assert len(depths) == 20
    assert max(depths) - min(depths) <= 1


async def test_exception_instance_in_results_fails_that_item_alone() -> None:
    """An Exception at position i of fn's results fails item i; its batch-mates succeed."""
    fake = FakeBatchFunction[int, int](fail_items={2: LookupError("no 2")})
    async with bs.BatchScope(fake, max_batch_size=3, max_wait=0) as scope:
        outcomes = await scope.submit_many([1, 2, 3], return_exceptions=True)
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert isinstance(outcomes[1], LookupError)
    assert fake.batches == [[1, 2, 3]]


async def test_wrong_result_count_fails_the_batch_with_mismatch() -> None:
    """A wrong number of results gives BatchSizeMismatchError to every item; the scope goes on."""
    calls = 0

    async def short(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        return items[:-1] if calls == 1 else items

    async with bs.BatchScope(short, max_batch_size=3, max_wait=0) as scope:
        outcomes = await scope.submit_many([1, 2, 3], return_exceptions=True)
        assert await scope.submit(4) == 4
    assert all(isinstance(o, bs.BatchSizeMismatchError) for o in outcomes)
    assert "returned 2 results for a batch of 3 items" in str(outcomes[0])


async def test_non_sequence_result_is_a_clear_type_error() -> None:
    """fn returning something that is not a sequence fails the batch with a TypeError."""

    async def broken(items: list[int]) -> int:
        return 42

    async with bs.BatchScope[int, int](cast(Any, broken)) as scope:
        with pytest.raises(TypeError, match="must return a sequence of results, got int"):
            await scope.submit(1)


def _as_dict(items: list[int]) -> Any:
    return {item: item * 10 for item in items}


def _as_set(items: list[int]) -> Any:
    return {item * 10 for item in items}


def _as_str(items: list[int]) -> Any:
    return "".join(str(item) for item in items)


def _as_generator(items: list[int]) -> Any:
    return (item * 10 for item in items)


@pytest.mark.parametrize(
    ("make", "kind"),
    [(_as_dict, "dict"), (_as_set, "set"), (_as_str, "str"), (_as_generator, "generator")],
    ids=["dict", "set", "str", "generator"],
)
async def test_a_result_that_is_not_a_sequence_fails_the_batch(
    make: Any, kind: str, cpu_hog: Any
) -> None:
    """A dict, set, str or generator of the right length is refused, never routed."""

    async def fn(items: list[int]) -> Any:
        return make(items)

    async with bs.BatchScope[int, int](fn, max_wait=0.05) as scope:
        outcomes = await scope.submit_many([3, 1, 2], return_exceptions=True)
        stats = scope.statistics()
    assert all(isinstance(outcome, TypeError) for outcome in outcomes)
    with pytest.raises(TypeError, match=f"must return a sequence of results, got {kind} "):
        raise cast(TypeError, outcomes[0])
    assert (stats.failed, stats.completed) == (3, 0)


async def test_an_array_like_result_is_routed(cpu_hog: Any) -> None:
    """Results with __len__ and __getitem__ but not registered as a Sequence (arrays) work."""

    class ArrayLike:
        def __init__(self, values: list[int]) -> None:
            self._values = values

        def __len__(self) -> int:
            return len(self._values)

        def __getitem__(self, index: int) -> int:
            return self._values[index]

    async def fn(items: list[int]) -> Any:
        return ArrayLike([item * 10 for item in items])

    async with bs.BatchScope[int, int](fn, max_wait=0.05) as scope:
        assert await scope.submit_many([3, 1, 2]) == [30, 10, 20]


async def test_mismatch_message_counts_in_singular_and_plural(cpu_hog: Any) -> None:
    """BatchSizeMismatchError says "1 result", "1 item" where there is one."""

    async def one_result(items: list[int]) -> list[int]:
        return [0]

    async def no_result(items: list[int]) -> list[int]:
        return []

    async with bs.BatchScope(one_result, max_wait=0.05) as scope:
        with pytest.raises(
            bs.BatchSizeMismatchError, match=r"returned 1 result for a batch of 2 items$"
        ):
            await scope.submit_many([1, 2])
    async with bs.BatchScope(no_result) as scope:
        with pytest.raises(
            bs.BatchSizeMismatchError, match=r"returned 0 results for a batch of 1 item$"
        ):
            await scope.submit(1)


async def test_fn_raised_log_line_counts_in_singular(
    caplog: pytest.LogCaptureFixture, cpu_hog: Any
) -> None:
    """The warning for a raising fn says "a batch of 1 item", not "1 item(s)"."""
    fake = FakeBatchFunction[int, int](raise_on={1: ValueError("no")})
    with caplog.at_level("WARNING", logger="batchscope"):
        async with bs.BatchScope(fake) as scope:
            with pytest.raises(ValueError, match="no"):
                await scope.submit(1)
    assert "raised ValueError for a batch of 1 item" in caplog.text
    assert "item(s)" not in caplog.text


async def test_sync_fn_runs_in_a_worker_thread() -> None:
    """A plain function is called in a worker thread, never on the event loop's thread."""
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def square(items: list[int]) -> list[int]:
        seen.append(threading.get_ident())
        return [x * x for x in items]

    async with bs.BatchScope(square, max_wait=0) as scope:
        assert await scope.submit_many([2, 3]) == [4, 9]
    assert seen and loop_thread not in seen


async def test_sync_fn_returning_an_awaitable_is_a_clear_error() -> None:
    """A plain callable that returns a coroutine (from its worker thread) fails with a hint."""

    async def double(items: list[int]) -> list[int]:
        return [2 * x for x in items]

    async with bs.BatchScope(lambda items: double(items)) as scope:
        with pytest.raises(TypeError, match="returned an awaitable from a worker thread"):
            await scope.submit(4)
        assert scope.statistics().failed == 1


async def test_async_callable_object_runs_as_a_task() -> None:
    """An object with an async __call__ is treated as async (awaited, not threaded)."""
    loop_thread = threading.get_ident()

    class Model:
        async def __call__(self, items: list[int]) -> list[int]:
            assert threading.get_ident() == loop_thread
            return items

    async with bs.BatchScope(Model()) as scope:
        assert await scope.submit(1) == 1


async def test_batch_timeout_abandons_a_sync_thread() -> None:
    """A sync fn past batch_timeout is abandoned: callers get TimeoutError at once."""
    release = threading.Event()
    finished = threading.Event()
    late: list[list[int]] = []

    def stuck(items: list[int]) -> list[int]:
        release.wait(10)
        late.append(items)
        finished.set()
        return items

    async with bs.BatchScope(stuck, batch_timeout=0.05, max_wait=0) as scope:
        with pytest.raises(TimeoutError):
            await scope.submit(1)
        assert scope.statistics().failed == 1
    release.set()
    assert await anyio.to_thread.run_sync(finished.wait, 5)
    assert late == [[1]]  # the thread finished later; its result went nowhere
