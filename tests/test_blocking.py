"""BlockingBatchScope: blocking, thread-safe submits from sync code, on both backends."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

BACKENDS: dict[str, dict[str, Any]] = {"asyncio": {"backend": "asyncio"}}
if importlib.util.find_spec("uvloop") is not None:
    BACKENDS["asyncio+uvloop"] = {"backend": "asyncio", "backend_options": {"use_uvloop": True}}
if importlib.util.find_spec("trio") is not None:
    BACKENDS["trio"] = {"backend": "trio"}


@pytest.fixture(params=list(BACKENDS))
def loop(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The backend (and its options) of the portal's event loop."""
    return BACKENDS[request.param]


class GatedDouble:
    """A sync batch function that records batches; a batch holding 'hold' waits for the gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.holding = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if 0 in items:  # item 0 holds its batch until the test opens the gate
            self.holding.set()
            if not self.gate.wait(30):
                raise RuntimeError("gate never opened")  # pragma: no cover
        return [x * 2 for x in items]


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll until *condition* holds (no timing is asserted; 30 s is a hang guard)."""
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:  # pragma: no cover
            raise AssertionError("condition never held")
        time.sleep(0.001)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """A pool of caller threads, shut down after the test."""
    with ThreadPoolExecutor(max_workers=16) as executor:
        yield executor


def test_concurrent_submits_from_threads_batch_together(
    loop: dict[str, Any], pool: ThreadPoolExecutor
) -> None:
    """Items submitted by many threads while a batch runs are collected into one batch."""
    fn = GatedDouble()
    with bs.BlockingBatchScope(fn, **loop, max_batch_size=64, max_wait=0) as scope:
        first = pool.submit(scope.submit, 0)  # its batch holds until the gate opens
        assert fn.holding.wait(30)
        rest = [pool.submit(scope.submit, x) for x in range(1, 16)]
        wait_until(lambda: scope.statistics().pending == 15)
        fn.gate.set()
        assert first.result() == 0
        assert [f.result() for f in rest] == [x * 2 for x in range(1, 16)]
    assert fn.batches[0] == [0]
    assert sorted(fn.batches[1]) == list(range(1, 16))  # one batch of 15, from 15 threads
    stats = scope.statistics()
    assert (stats.batches, stats.completed) == (2, 16)
    assert dict(stats.batch_size_histogram) == {1: 1, 15: 1}


def test_submit_many_keeps_input_order(loop: dict[str, Any]) -> None:
    """submit_many returns one result per item, in input order."""
    fake = FakeBatchFunction[int, int](lambda x: -x)
    with bs.BlockingBatchScope(fake, **loop, max_batch_size=3, max_wait=0) as scope:
        assert scope.submit_many(iter([4, 5, 6, 7])) == [-4, -5, -6, -7]
    assert sorted(fake.items) == [4, 5, 6, 7]
    assert all(len(batch) <= 3 for batch in fake.batches)


def test_async_batch_function_runs_in_the_portal(loop: dict[str, Any]) -> None:
    """An async fn runs in the portal's event loop; the caller gets its result."""
    fake = FakeBatchFunction[int, str](str)
    with bs.BlockingBatchScope(fake, **loop, max_wait=0) as scope:
        assert scope.submit(12) == "12"
    assert fake.batches == [[12]]


def test_exception_of_fn_reaches_the_calling_thread_unchanged(
    loop: dict[str, Any], pool: ThreadPoolExecutor
) -> None:
    """fn's own exception (its type and object) reaches the thread that submitted."""
    error = KeyError("no such key")
    fake = FakeBatchFunction[int, int](raise_on={1: error})
    with bs.BlockingBatchScope(fake, **loop, max_batch_size=1, max_wait=0) as scope:
        future = pool.submit(scope.submit, 1)
        with pytest.raises(KeyError) as caught:
            future.result()
        assert caught.value is error
        assert scope.submit(2) == 2  # the scope goes on


@pytest.mark.realclock
def test_a_non_finite_priority_is_refused(loop: dict[str, Any], cpu_hog: Any) -> None:
    """A thread's submit with priority=nan raises ValueError naming 'priority'."""
    fake = FakeBatchFunction[int, int]()
    with bs.BlockingBatchScope(fake, **loop, policy="priority", max_wait=0) as scope:
        with pytest.raises(ValueError, match="'priority' must be a finite number"):
            scope.submit(1, priority=float("nan"))
        assert scope.submit(2) == 2
    assert fake.batches == [[2]]


def test_per_item_exception_fails_only_that_item(loop: dict[str, Any]) -> None:
    """An Exception at an item's position fails that item alone, in submit_many too."""
    bad = ValueError("bad item")
    fake = FakeBatchFunction[int, int](fail_items={2: bad})
    with bs.BlockingBatchScope(fake, **loop, max_wait=0) as scope:
        assert scope.submit_many([1, 2, 3], return_exceptions=True) == [1, bad, 3]
        with pytest.raises(ValueError, match="bad item"):
            scope.submit(2)


def test_timeout_raises_timeout_error_and_withdraws_the_item(
    loop: dict[str, Any], pool: ThreadPoolExecutor
) -> None:
    """submit(timeout=...) raises the builtin TimeoutError; the queued item never reaches fn."""
    fn = GatedDouble()
    with bs.BlockingBatchScope(fn, **loop, max_batch_size=1, max_wait=0) as scope:
        first = pool.submit(scope.submit, 0)
        assert fn.holding.wait(30)  # the only batch slot is busy: item 5 stays queued
        with pytest.raises(TimeoutError):
            scope.submit(5, timeout=0.01)
        fn.gate.set()
        assert first.result() == 0
    assert fn.batches == [[0]]
    stats = scope.statistics()
    assert (stats.completed, stats.cancelled) == (1, 1)


def test_invalid_timeout_is_rejected(loop: dict[str, Any]) -> None:
    """A negative timeout is a ValueError naming the argument."""
    blocking = bs.BlockingBatchScope(FakeBatchFunction[int, int](), **loop)
    with blocking as scope, pytest.raises(ValueError, match="'timeout'"):
        scope.submit(1, timeout=-1)


def test_leaving_the_block_drains_pending_items(
    loop: dict[str, Any], pool: ThreadPoolExecutor
) -> None:
    """Leaving the with block runs the items still queued before it returns."""
    fn = GatedDouble()
    futures: list[Future[int]] = []
    with bs.BlockingBatchScope(fn, **loop, max_batch_size=64, max_wait=0) as scope:
        futures.append(pool.submit(scope.submit, 0))
        assert fn.holding.wait(30)
        futures += [pool.submit(scope.submit, x) for x in (1, 2, 3)]
        wait_until(lambda: scope.statistics().pending == 3)
        fn.gate.set()  # items 1-3 are still queued as we leave
    # Not ScopeClosedError: leaving ran them (their threads may wake a moment later).
    assert [f.result() for f in futures] == [0, 2, 4, 6]
    assert scope.statistics().completed == 4


def test_submit_outside_the_block(loop: dict[str, Any]) -> None:
    """Before the block: NoActiveScopeError; after it: ScopeClosedError."""
    blocking = bs.BlockingBatchScope(FakeBatchFunction[int, int](), **loop)
    with pytest.raises(bs.NoActiveScopeError, match="with BlockingBatchScope"):
        blocking.submit(1)
    with blocking as scope:
        assert scope.submit(1) == 1
    with pytest.raises(bs.ScopeClosedError, match="is closed"):
        scope.submit(2)
    with pytest.raises(bs.ScopeClosedError):
        scope.submit_many([3])
    assert scope.statistics().completed == 1


def test_close_refuses_new_items(loop: dict[str, Any]) -> None:
    """After close(), submit raises ScopeClosedError; close() is idempotent."""
    with bs.BlockingBatchScope(FakeBatchFunction[int, int](), **loop) as scope:
        assert scope.submit(1) == 1
        scope.close()
        scope.close()
        with pytest.raises(bs.ScopeClosedError):
            scope.submit(2)


def test_exception_in_the_block_fails_waiting_items_and_propagates(
    loop: dict[str, Any], pool: ThreadPoolExecutor
) -> None:
    """The block raising: waiting callers get ScopeClosedError caused by it; it propagates."""
    fn = GatedDouble()
    futures: list[Future[int]] = []
    blocking = bs.BlockingBatchScope(fn, **loop, max_batch_size=1, max_wait=0)
    try:
        with pytest.raises(ZeroDivisionError), blocking as scope:
            futures.append(pool.submit(scope.submit, 0))  # running, held
            assert fn.holding.wait(30)
            futures.append(pool.submit(scope.submit, 1))  # pending, or formed ahead
            wait_until(lambda: scope.statistics().submitted == 2)
            _ = 1 / 0
    finally:
        fn.gate.set()  # let the abandoned worker thread finish
    for future in futures:
        error = future.exception()
        assert isinstance(error, bs.ScopeClosedError)
        assert isinstance(error.__cause__, ZeroDivisionError)
    assert fn.batches == [[0]]


def test_blocking_submit_from_the_portal_loop_thread_is_refused(loop: dict[str, Any]) -> None:
    """Blocking submit from the portal's own event loop raises RuntimeError, not a deadlock."""
    holder: list[bs.BlockingBatchScope[str, str]] = []

    async def reenter(items: list[str]) -> list[str]:
        if "outer" in items:
            holder[0].submit("inner")  # on the portal's loop thread: refused
        return items  # pragma: no cover

    with bs.BlockingBatchScope(reenter, **loop, max_wait=0) as scope:
        holder.append(scope)
        with pytest.raises(RuntimeError, match="event loop thread would deadlock"):
            scope.submit("outer")


def test_statistics_and_configure_pass_through(loop: dict[str, Any]) -> None:
    """statistics() and configure() reach the scope in the portal, before, during and after."""
    fake = FakeBatchFunction[int, int]()
    blocking = bs.BlockingBatchScope(fake, **loop, max_batch_size=2, max_wait=0)
    assert blocking.statistics().submitted == 0
    with blocking as scope:
        scope.configure(max_batch_size=5)
        assert scope.scope.config.max_batch_size == 5
        with pytest.raises(ValueError, match="max_batch_size"):
            scope.configure(max_batch_size=0)
        scope.submit_many(range(5))
        assert scope.statistics().completed == 5
    assert scope.statistics().submitted == 5


def test_opens_only_once(loop: dict[str, Any]) -> None:
    """A BlockingBatchScope is single-use; entering it again is a RuntimeError."""
    blocking = bs.BlockingBatchScope(FakeBatchFunction[int, int](), **loop)
    with blocking:
        pass
    with pytest.raises(RuntimeError, match="only once"), blocking:
        pass  # pragma: no cover


def test_invalid_options_fail_at_construction() -> None:
    """Options are validated in the constructor, naming the option; so is the backend."""
    with pytest.raises(ValueError, match="max_batch_size"):
        bs.BlockingBatchScope(FakeBatchFunction[int, int](), max_batch_size=0)
    with pytest.raises(ValueError, match="'backend'"):
        bs.BlockingBatchScope(FakeBatchFunction[int, int](), backend="curio")
