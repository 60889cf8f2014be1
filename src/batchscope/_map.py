"""
Many items per call: ``submit_many`` (gather) and ``map`` (a bounded stream).

Both queue one item per input through the same admission and channel as ``submit``, but
their items report to a callback instead of one event each: ``gather`` parks the caller
on a single event for the whole call; ``map`` collects ended items and wakes its consumer
with one event per wait. ``map`` pulls from its source in a feeder task that lives in the
scope's task group, at most ``window`` items ahead of the consumer.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable, Sized
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar, final

import anyio
import anyio.lowlevel
from anyio import WouldBlock

from ._cache import MISSING
from ._exceptions import BatchScopeError, ScopeClosedError
from ._items import NO_KEY, CallbackItem
from ._lifecycle import ScopeState
from ._progress import ProgressBar

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["MapIterator", "gather"]

In = TypeVar("In")
Out = TypeVar("Out")


async def _enqueue(
    engine: Engine[In, Out],
    value: In,
    index: int,
    deadline: float,
    callback: Callable[[CallbackItem[In, Out]], None],
) -> CallbackItem[In, Out]:
    """
    One item of many through the scope's front door: cache, admission, the queue.

    The item comes back queued, following an identical one (``key=``), or already
    ended: answered from the cache, or failed because it was refused (queue full, scope
    closed, too large, bad cost or key, a failing cache look-up) — that item alone.
    Either way *callback* hears of its end like any other item's.
    """
    key = NO_KEY
    front = engine.front
    counted = False
    try:
        if front is not None:
            if engine.state is not ScopeState.OPEN:
                raise engine.closed_now()
            # Counted before the look-up, which may wait (``admitting``), as in submit.
            engine.recorder.submitted += 1
            counted = True
            try:
                key, hit = await front.lookup(value)
            except Exception as exc:  # the key function, the key, the cache's get
                engine.reject("bad_key")
                item = CallbackItem(value, 0, 0.0, 0.0, deadline, index, callback)
                item.waiters = 0  # refused: counted as rejected, never as an outcome
                item.fail(exc)
                return item
            except BaseException:
                engine.recorder.cancelled += 1  # cancelled during an async cache look-up
                raise
            if hit is not MISSING:
                engine.recorder.completed += 1
                item = CallbackItem(value, 0, 0.0, 0.0, deadline, index, callback)
                item.succeed(hit)
                return item
            follower = front.follow(value, key, index, deadline, callback)
            if follower is not None:
                return follower
        cost = await engine.admit(value, count=not counted)
        if front is not None:
            # While this item waited for room, an identical one may have been queued.
            follower = front.follow(value, key, index, deadline, callback)
            if follower is not None:
                engine.room.release()
                return follower
    except (BatchScopeError, ValueError, TypeError) as exc:
        item = CallbackItem(value, 0, 0.0, 0.0, deadline, index, callback)
        item.waiters = 0  # refused: counted as rejected (or not at all), never as an outcome
        item.fail(exc)
        return item
    item = CallbackItem(value, 0, cost, engine.clock(), deadline, index, callback)
    item.key = key
    try:
        engine.queue(item)
    except (ValueError, TypeError) as exc:  # the partition function: this item alone
        item.waiters = 0  # refused: counted as rejected, never as an outcome
        item.fail(exc)
        return item
    if front is not None:
        front.register(item)
    return item


async def gather(
    engine: Engine[In, Out], items: Iterable[In], *, return_exceptions: bool
) -> list[Out | BaseException]:
    """Queue every item, wait for all (or the first failure), return outcomes in order."""
    values = list(items)
    submitted: list[CallbackItem[In, Out]] = []
    remaining = len(values)
    first_failure: list[CallbackItem[In, Out]] = []
    done = anyio.Event()

    def on_done(item: CallbackItem[In, Out]) -> None:
        nonlocal remaining
        remaining -= 1
        if item.error is not None and not first_failure:
            first_failure.append(item)
            if not return_exceptions:
                done.set()
        if remaining == 0:
            done.set()

    try:
        deadline = engine.deadline()
        for index, value in enumerate(values):
            submitted.append(await _enqueue(engine, value, index, deadline, on_done))
            if first_failure and not return_exceptions:
                break  # it will be raised: queue nothing more
        if remaining and not done.is_set():
            await done.wait()
        else:
            await anyio.lowlevel.checkpoint()
    except BaseException:
        for item in submitted:
            engine.leave(item)
        raise

    if first_failure and not return_exceptions:
        raised = first_failure[0]
        for item in submitted:
            if item is not raised:
                # Withdraw what is still queued, drop what runs; what ended is never
                # handed out: all count as cancelled.
                engine.leave(item)
        raised.outcome()
    return [
        item.error if item.error is not None else item.result  # type: ignore[misc]
        for item in submitted
    ]


@final
class MapIterator(Generic[In, Out]):
    """
    The async iterator :meth:`BatchScope.map` returns; also an async context manager.

    Leaving ``async with`` (or ``aclose()``) stops the feeder and withdraws every item not
    yet dispatched. Every item pulled but not yet handed out then counts as ``cancelled``
    in the scope's statistics, even one that had ended: its caller never saw it.
    """

    def __init__(
        self,
        engine: Engine[In, Out],
        source: Iterable[In] | AsyncIterable[In],
        *,
        ordered: bool,
        return_exceptions: bool,
        window: int,
        progress: bool = False,
    ) -> None:
        self._engine = engine
        self._progress: ProgressBar | None = None
        if progress:
            total = len(source) if isinstance(source, Sized) else None
            self._progress = ProgressBar(total, f"batchscope map ({engine.fn_name})")
        self._source = source
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._window_size = window
        self._window: anyio.Semaphore | None = None
        self._started = False
        self._stop_requested = False
        self._closed = False
        self._feeder_scope: anyio.CancelScope | None = None
        #: Items pulled from the source and not yet yielded, by index.
        self._outstanding: dict[int, CallbackItem[In, Out]] = {}
        #: Ended items not yet yielded (ordered mode: waiting for their turn).
        self._ready: dict[int, CallbackItem[In, Out]] = {}
        #: Set when an item ends or the feeder stops, while the consumer waits.
        self._wakeup: anyio.Event | None = None
        self._next = 0
        self._yielded = 0
        #: How many items the feeder queued in all, once it has stopped.
        self._fed: int | None = None
        self._feed_error: BaseException | None = None

    # -- feeder ----------------------------------------------------------------------------

    def stop_feeding(self) -> None:
        """Stop pulling from the source (the scope is closing, or the consumer left)."""
        self._stop_requested = True
        if self._feeder_scope is not None:
            self._feeder_scope.cancel()

    def _on_done(self, item: CallbackItem[In, Out]) -> None:
        if not self._closed:
            self._ready[item.index] = item
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def _put(self, value: In, index: int, deadline: float) -> bool:
        """Queue one item; False when the scope refuses more."""
        window = self._window
        assert window is not None
        try:
            window.acquire_nowait()
        except WouldBlock:
            await window.acquire()
        try:
            item = await _enqueue(self._engine, value, index, deadline, self._on_done)
        except BaseException:
            window.release()
            raise
        if self._closed:
            # The consumer closed the stream while this item was admitted: nobody will
            # take its result, so withdraw it (it counts as cancelled).
            self._engine.leave(item)
            return False
        self._outstanding[index] = item
        # A refused item is reported in its turn; a closed scope takes no more.
        return not isinstance(item.error, ScopeClosedError)

    async def _feed(self) -> None:
        count = 0
        source = self._source
        try:
            with anyio.CancelScope() as feeder_scope:
                self._feeder_scope = feeder_scope
                if self._stop_requested:
                    feeder_scope.cancel()
                deadline = self._engine.deadline()
                if isinstance(source, AsyncIterable):
                    async for value in source:
                        if not await self._put(value, count, deadline):
                            count += 1
                            break
                        count += 1
                else:
                    for value in source:
                        if not await self._put(value, count, deadline):
                            count += 1
                            break
                        count += 1
            if feeder_scope.cancelled_caught and not self._closed:
                # The scope closed under a consumer that still reads: say so after the
                # results of everything already queued.
                self._feed_error = self._engine.closed_error()
        except Exception as exc:
            self._feed_error = exc  # the source raised; re-raised to the consumer
        finally:
            self._fed = count
            self._wake()

    def _start(self) -> None:
        engine = self._engine
        if engine.state is not ScopeState.OPEN:
            raise engine.closed_now()
        self._started = True
        self._window = anyio.Semaphore(self._window_size)
        engine.maps.add(self)
        engine.task_group.start_soon(
            self._feed, name=f"batchscope map feeder of {engine.describe()}"
        )

    # -- consumer --------------------------------------------------------------------------

    def __aiter__(self) -> MapIterator[In, Out]:
        return self

    async def __anext__(self) -> Out | BaseException:
        """
        The next result (in input order, or as completed with ``ordered=False``).

        Raises:
            StopAsyncIteration: Every item of the source has been handed out.
            Exception: An item's exception (without ``return_exceptions``), which also
                closes the stream; or the source's own exception, after the results of
                the items before it.

        Cancellation:
            Closes the stream: the feeder stops, items still queued are withdrawn and
            the results of running ones are dropped; the cancellation propagates. Every
            item not yet handed out, ended or not, counts as ``cancelled``.
        """
        if self._closed:
            raise StopAsyncIteration
        if not self._started:
            self._start()
        ready = self._ready
        while True:
            if ready:
                # The earliest to end first (dicts keep insertion order), or the next one.
                index = next(iter(ready)) if not self._ordered else self._next
                if index in ready:
                    try:
                        await anyio.lowlevel.checkpoint()
                    except BaseException:
                        self._close_now()  # its result was not handed out
                        raise
                    if self._ordered:
                        self._next += 1
                    return self._hand_out(ready.pop(index))
            if self._fed is not None and self._yielded >= self._fed:
                self._finish()
                if self._feed_error is not None:
                    raise self._feed_error
                raise StopAsyncIteration
            wakeup = self._wakeup = anyio.Event()
            try:
                await wakeup.wait()
            except BaseException:
                self._close_now()
                raise

    def _hand_out(self, item: CallbackItem[In, Out]) -> Out | BaseException:
        self._yielded += 1
        if self._progress is not None:
            self._progress.advance()
        del self._outstanding[item.index]
        assert self._window is not None
        self._window.release()
        if item.error is None:
            return item.result  # type: ignore[return-value]
        if self._return_exceptions:
            return item.error
        self._close_now()
        return item.outcome()

    def _finish(self) -> None:
        self._closed = True
        self._engine.maps.discard(self)
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def _close_now(self) -> None:
        if self._closed:
            return
        self.stop_feeding()
        engine = self._engine
        for item in self._outstanding.values():
            engine.leave(item)
        self._outstanding.clear()
        self._finish()

    async def aclose(self) -> None:
        """
        Stop the stream: withdraw every queued item, drop results of running ones.

        Cancellation:
            Nothing to cancel: the work is done before the first checkpoint.
        """
        self._close_now()
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> MapIterator[In, Out]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._close_now()
