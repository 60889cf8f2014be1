"""
The reference batchers every result is measured against.

* :class:`FloorBatcher` — "the floor": the smallest correct dynamic batcher on raw
  asyncio futures. A batch goes when ``max_batch_size`` items are pending or the oldest
  has waited ``max_wait``; one batch in flight; an idle batcher waits on a future with no
  timer. asyncio (and uvloop) only. Its ``async def submit`` costs a coroutine per item.
* The lean floor (:func:`open_lean_floor`): the same batcher, whose ``submit`` is
  :meth:`FloorBatcher.submit_future`, a plain function that returns the loop's future
  itself (no coroutine per item): the leanest correct batcher, one worker loop,
  ``call_at`` timers. What the per-item overhead target of issue 15 is measured against.
* :class:`EventBatcher` — the same algorithm on one ``anyio.Event`` per item and an AnyIO
  cancel scope as the timer, so it also runs under Trio: what an AnyIO library costs
  before it does anything clever.
* :func:`open_unbatched` — no batching: every submit calls fn with a list of one.

They are deliberately simple (no backpressure, no statistics, no cancellation
bookkeeping beyond "a cancelled caller's result is dropped"): the price of any feature
batchscope adds shows up as a ratio against them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

__all__ = [
    "BatchFn",
    "EventBatcher",
    "FloorBatcher",
    "Submit",
    "open_event",
    "open_floor",
    "open_lean_floor",
    "open_unbatched",
]

#: The batch function every implementation gets: async, list in, list out.
BatchFn = Callable[[list[Any]], Awaitable[list[Any]]]
#: What an opened implementation hands the harness: one item in, its result out.
Submit = Callable[[Any], Awaitable[Any]]

_TIMER = object()


class FloorBatcher:
    """A minimal correct batcher on raw asyncio futures (the floor)."""

    def __init__(self, fn: BatchFn, *, max_batch_size: int, max_wait: float) -> None:
        self._fn = fn
        self._size = max_batch_size
        self._max_wait = max_wait
        self._pending: deque[tuple[Any, asyncio.Future[Any], float]] = deque()
        self._wake: asyncio.Future[Any] | None = None
        self._want_full = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop
        self._task: asyncio.Task[None]

    async def __aenter__(self) -> FloorBatcher:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        self._poke()
        await self._task

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def submit(self, value: Any) -> Any:
        """Queue *value* and wait for its result."""
        return await self.submit_future(value)

    def submit_future(self, value: Any) -> asyncio.Future[Any]:
        """Queue *value*; return the future of its result (no coroutine of its own)."""
        loop = self._loop
        future = loop.create_future()
        pending = self._pending
        pending.append((value, future, loop.time()))
        wake = self._wake
        full = len(pending) >= self._size
        if wake is not None and not wake.done() and (full or not self._want_full):
            wake.set_result(None)
        return future

    async def _park(self, due: float | None) -> object:
        loop = self._loop
        wake = self._wake = loop.create_future()
        self._want_full = due is not None
        handle = None
        if due is not None:
            handle = loop.call_at(due, _fire, wake)
        try:
            return await wake
        finally:
            self._wake = None
            if handle is not None:
                handle.cancel()

    async def _run(self) -> None:
        loop = self._loop
        pending = self._pending
        size = self._size
        while True:
            if not pending:
                if self._closing:
                    return
                await self._park(None)
                continue
            if len(pending) < size and not self._closing:
                due = pending[0][2] + self._max_wait
                if loop.time() < due and await self._park(due) is not _TIMER:
                    continue  # woken by a full batch or by closing: look again
            batch = [pending.popleft() for _ in range(min(size, len(pending)))]
            try:
                results = await self._fn([entry[0] for entry in batch])
            except Exception as exc:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future, _), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)


def _fire(wake: asyncio.Future[Any]) -> None:
    if not wake.done():
        wake.set_result(_TIMER)


class _EventItem:
    __slots__ = ("arrival", "error", "event", "result", "value")

    def __init__(self, value: Any, arrival: float) -> None:
        self.value = value
        self.arrival = arrival
        self.event = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class EventBatcher:
    """The floor's algorithm on ``anyio.Event`` (one per item); runs under Trio too."""

    def __init__(self, fn: BatchFn, *, max_batch_size: int, max_wait: float) -> None:
        self._fn = fn
        self._size = max_batch_size
        self._max_wait = max_wait
        self._pending: deque[_EventItem] = deque()
        self._wake: anyio.Event | None = None
        self._want_full = False
        self._closing = False

    @asynccontextmanager
    async def open(self) -> AsyncIterator[EventBatcher]:
        """Run the batcher's worker in a task group for the duration of the block."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run)
            try:
                yield self
            finally:
                self._closing = True
                if self._wake is not None:
                    self._wake.set()

    async def submit(self, value: Any) -> Any:
        """Queue *value* and wait for its result."""
        item = _EventItem(value, anyio.current_time())
        pending = self._pending
        pending.append(item)
        wake = self._wake
        if wake is not None and (not self._want_full or len(pending) >= self._size):
            wake.set()
        await item.event.wait()
        if item.error is not None:
            raise item.error
        return item.result

    async def _park(self, due: float) -> None:
        wake = self._wake = anyio.Event()
        self._want_full = due != float("inf")
        try:
            with anyio.CancelScope(deadline=due):
                await wake.wait()
        finally:
            self._wake = None

    async def _run(self) -> None:
        pending = self._pending
        size = self._size
        while True:
            if not pending:
                if self._closing:
                    return
                await self._park(float("inf"))
                continue
            if len(pending) < size and not self._closing:
                due = pending[0].arrival + self._max_wait
                if anyio.current_time() < due:
                    await self._park(due)
                    early = anyio.current_time() < due
                    if early and len(pending) < size and not self._closing:
                        continue
            batch = [pending.popleft() for _ in range(min(size, len(pending)))]
            try:
                results = await self._fn([item.value for item in batch])
            except Exception as exc:
                for item in batch:
                    item.error = exc
                    item.event.set()
            else:
                for item, result in zip(batch, results, strict=True):
                    item.result = result
                    item.event.set()


@asynccontextmanager
async def open_floor(fn: BatchFn, *, max_batch_size: int, max_wait: float) -> AsyncIterator[Submit]:
    """The floor as an implementation: yields its ``submit``."""
    async with FloorBatcher(fn, max_batch_size=max_batch_size, max_wait=max_wait) as batcher:
        yield batcher.submit


@asynccontextmanager
async def open_lean_floor(
    fn: BatchFn, *, max_batch_size: int, max_wait: float
) -> AsyncIterator[Submit]:
    """The lean floor as an implementation: yields ``submit_future`` (no coroutine per item)."""
    async with FloorBatcher(fn, max_batch_size=max_batch_size, max_wait=max_wait) as batcher:
        yield batcher.submit_future


@asynccontextmanager
async def open_event(fn: BatchFn, *, max_batch_size: int, max_wait: float) -> AsyncIterator[Submit]:
    """The anyio.Event reference as an implementation: yields its ``submit``."""
    batcher = EventBatcher(fn, max_batch_size=max_batch_size, max_wait=max_wait)
    async with batcher.open():
        yield batcher.submit


@asynccontextmanager
async def open_unbatched(
    fn: BatchFn, *, max_batch_size: int, max_wait: float
) -> AsyncIterator[Submit]:
    """No batching: each submit is ``fn([item])[0]``."""

    async def submit(value: Any) -> Any:
        return (await fn([value]))[0]

    yield submit
