"""
Streaming batch functions: fn is an async generator, each row streams its outputs.

Each step of the generator yields one list aligned with the batch; entry *i* is for row
*i*: a value (handed to that row's caller at once), :data:`batchscope.END` (the row has
ended), or an ``Exception`` instance (the row fails alone). A generator that finishes
ends every row still open. The timeline of one batch::

    dispatch ──► fn(values) ──► step ──► step ──► ... ──► return / every row ended
                                 │         │                    │
                         outputs to live rows          aclose() the generator

Rows are independent: one row's end, error or caller leaving never stops the others.
After every step the runner looks at the rows: once none is still wanted (each ended,
failed, or its caller left) the generator is ``aclose()``d and never stepped again; a
caller that leaves while the generator computes a step cancels the batch when it was the
last one. fn sees which rows are still wanted through ``current_batch().alive``, set
around the whole stream.

Around the stream: the circuit breaker, the rate limits, ``batch_timeout`` (on the whole
stream) and ``retry`` (only while the generator has yielded nothing: a stream already
handed out is never replayed). ``collate``, ``isolate_failures``, ``cache`` and ``key``
are refused at construction (:func:`check_options`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, final

import anyio
import anyio.lowlevel

from ._batchinfo import reset, using
from ._config import ScopeConfig
from ._exceptions import BatchSizeMismatchError, CircuitOpenError
from ._executor import count_results, items_phrase
from ._items import DONE, RUNNING, Item, StreamItem
from ._markers import END, End

if TYPE_CHECKING:
    from ._engine import Engine
    from ._executor import Batch, Executor

__all__ = [
    "OutputStream",
    "StreamFunction",
    "StreamRunner",
    "check_options",
    "collect",
    "is_streaming",
]

logger = logging.getLogger("batchscope")

In = TypeVar("In")
Out = TypeVar("Out")


#: A streaming fn: ``async def fn(items): ... yield [entry per item]``; an entry is an
#: output, :data:`batchscope.END` or an ``Exception``.
StreamFunction = Callable[[list[In]], AsyncIterator[Sequence[Out | Exception | End]]]


def is_streaming(fn: object) -> bool:
    """Whether calling *fn* returns an async generator (functions, methods, objects)."""
    if inspect.isasyncgenfunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the method itself
    return call is not None and inspect.isasyncgenfunction(call)


def check_options(config: ScopeConfig, collate: object) -> None:
    """Refuse the options a streaming fn does not combine with, naming each."""
    if collate is not None:
        raise TypeError(
            "'collate' cannot be used with a streaming batch function (an async "
            "generator): yield per-row outputs instead"
        )
    if config.isolate_failures:
        raise ValueError(
            "'isolate_failures' cannot be used with a streaming batch function (an async "
            "generator): rerunning halves would replay outputs already handed out; "
            "yield an Exception for a failing row instead"
        )
    for name in ("cache", "key"):
        if getattr(config, name) is not None:
            raise ValueError(
                f"'{name}' cannot be used with a streaming batch function (an async "
                f"generator): its outputs are a stream, not one cacheable result"
            )


class StreamRunner(Generic[In, Out]):
    """Runs each batch of a streaming fn: steps the generator, routes each step."""

    def __init__(
        self,
        engine: Engine[In, Out],
        fn: Callable[[list[In]], AsyncIterator[Sequence[Any]]],
        executor: Executor[In, Out],
    ) -> None:
        self._engine = engine
        self._fn = fn
        self._executor = executor

    async def run(self, batch: Batch[In, Out]) -> None:
        """End every row of *batch*: through the breaker and retries."""
        engine = self._engine
        breaker = engine.breaker
        if breaker is not None and not breaker.allow_batch():
            self._executor.fail_all(
                batch.items,
                CircuitOpenError("the circuit breaker is open: recent batches failed"),
            )
            return
        try:
            failed = await self._attempts(batch)
        except BaseException:
            # Cancelled (callers gone, scope closing): says nothing about fn's health.
            if breaker is not None:
                breaker.trial_running = False
            raise
        batch.failed = failed
        if breaker is not None:
            change = breaker.record(failed)
            if change == "opened":
                logger.warning("batchscope: the circuit breaker opened: batches keep failing")
            elif change == "closed":
                logger.info("batchscope: the circuit breaker closed: a trial batch succeeded")

    async def _attempts(self, batch: Batch[In, Out]) -> bool:
        """Stream, retrying a stream that raised before its first step; True if it raised."""
        engine = self._engine
        retry = engine.config.retry
        attempts = retry.attempts if retry is not None else 1
        first_call = engine.clock()
        for attempt in range(1, attempts + 1):
            live = [item for item in batch.items if item.state == RUNNING]
            if not live:
                return False
            error, stepped = await self._stream(batch, live, timed=attempt == 1)
            if error is None:
                return False
            if retry is not None and attempt < attempts and not stepped:
                wait = retry.wait(attempt)
                retrying = isinstance(error, retry.on) and (
                    retry.timeout is None or engine.clock() + wait - first_call < retry.timeout
                )
                if retrying:
                    engine.recorder.retries += 1
                    await anyio.sleep(wait)
                    continue
            engine.log.log(
                logging.WARNING,
                f"fn-raised:{type(error).__name__}",
                "batchscope: the streaming batch function raised %s for a batch of %s",
                type(error).__name__,
                items_phrase(len(live)),
            )
            self._executor.fail_all(live, error)
            return True
        return False  # pragma: no cover - the loop always returns

    async def _stream(
        self, batch: Batch[In, Out], items: list[Item[In, Out]], *, timed: bool
    ) -> tuple[Exception | None, bool]:
        """
        One run of the generator over *items*; return what it raised (None if nothing)
        and whether it yielded a step. Rows still open when it returns end normally.
        """
        engine = self._engine
        if engine.batch_bucket is not None:
            await engine.batch_bucket.take(1)
        if engine.cost_bucket is not None:
            await engine.cost_bucket.take(sum(item.cost for item in items))
        timeout = engine.config.batch_timeout
        started = engine.clock()
        stepped = False
        error: Exception | None = None
        token = using(items, batch.reason)
        try:
            generator = self._fn([item.value for item in items])
            try:
                with nullcontext() if timeout is None else anyio.fail_after(timeout):
                    while True:
                        try:
                            step = await generator.__anext__()
                        except StopAsyncIteration:
                            self._end_open(items)
                            break
                        stepped = True
                        if not self._route(items, step):
                            break  # no row is wanted any more
            except Exception as exc:
                error = exc
            finally:
                # Never step it again: let it clean up (a no-op if it has finished).
                aclose = getattr(generator, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception as exc:
                        error = error or exc
        finally:
            reset(token)
        if timed and error is None:
            engine.scheduler.model.observe(batch.load, engine.clock() - started)
        return error, stepped

    def _route(self, items: list[Item[In, Out]], step: object) -> bool:
        """Hand out one step's entries; return whether a row is still wanted."""
        try:
            count = count_results(step)
        except TypeError:
            self._executor.fail_all(
                items,
                TypeError(
                    f"each step of a streaming batch function must yield a sequence of "
                    f"entries, one per item, got {type(step).__name__}"
                ),
            )
            return False
        if count != len(items):
            self._executor.fail_all(
                items,
                BatchSizeMismatchError(
                    f"a step of the streaming batch function yielded {count} "
                    f"entr{'y' if count == 1 else 'ies'} for a batch of {items_phrase(len(items))}"
                ),
            )
            return False
        recorder = self._engine.recorder
        now = self._engine.clock()
        wanted = False
        completed = failed = 0
        ended = 0
        for item, entry in zip(items, cast("Sequence[Any]", step), strict=True):
            if item.state != RUNNING:
                continue  # ended, or its caller left: the entry is dropped
            if entry is END:
                item.succeed(cast(Out, None))
                completed += item.waiters
                ended += 1
            elif isinstance(entry, Exception):
                item.fail(entry)
                failed += item.waiters
                ended += 1
            else:
                streamed = cast(StreamItem[In, Out], item)
                last = streamed.last
                if last is None:
                    recorder.first_outputs.append(now - item.arrival)
                else:
                    recorder.output_gaps.append(now - last)
                streamed.last = now
                streamed.put(entry)
                wanted = True
        recorder.completed += completed
        recorder.failed += failed
        recorder.running -= completed + failed
        # An ended row's caller no longer waits for the batch: once the last caller
        # still reading leaves, the batch is cancelled (``Executor.cancel_if_abandoned``).
        batch = items[0].batch
        batch.live -= ended
        return wanted or any(item.state == RUNNING for item in items)

    def _end_open(self, items: list[Item[In, Out]]) -> None:
        """The generator finished: every row still open ends."""
        completed = 0
        for item in items:
            if item.state == RUNNING:
                item.succeed(cast(Out, None))
                completed += item.waiters
        self._engine.recorder.completed += completed
        self._engine.recorder.running -= completed


@final
class OutputStream(Generic[Out]):
    """
    One item's outputs from a streaming batch function, from :meth:`BatchScope.stream`.

    The item is submitted when iteration starts (or on ``async with``). Use it as
    ``async for out in scope.stream(x)``; leaving the loop (``break``) or the block, or
    being cancelled, withdraws the item (or ends its row at once, when its batch runs).
    ``async with scope.stream(x) as outs:`` makes the leaving explicit; a plain
    ``break`` leaves when the stream is garbage collected, at once on CPython.

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_done", "_engine", "_item", "_priority", "_value")

    def __init__(self, engine: Engine[Any, Out], value: object, priority: float) -> None:
        self._engine = engine
        self._value = value
        self._priority = priority
        self._item: StreamItem[Any, Out] | None = None
        #: The caller has seen the end (or left): nothing more to hand out.
        self._done = False

    async def _start(self) -> StreamItem[Any, Out]:
        engine = self._engine
        cost = await engine.admit(self._value)
        item: StreamItem[Any, Out] = StreamItem(
            self._value, self._priority, cost, engine.clock(), engine.deadline()
        )
        engine.queue(item)
        self._item = item
        return item

    def __aiter__(self) -> OutputStream[Out]:
        return self

    async def __anext__(self) -> Out:
        """
        The item's next output.

        Raises:
            StopAsyncIteration: The row has ended.
            ScopeClosedError, QueueFullError, NoActiveScopeError: As for
                :meth:`BatchScope.submit`.
            BatchSizeMismatchError: A step of fn had the wrong number of entries.
            Exception: The row's exception (yielded for it, or raised by fn), after the
                outputs before it.

        Cancellation:
            Ends this row at once (the item is withdrawn before dispatch; after it, its
            row's further outputs are dropped and ``current_batch().alive`` reads False
            for it; a batch whose callers have all left is cancelled and its generator
            closed). The cancellation propagates.
        """
        item = self._item
        if item is None:
            if self._done:
                raise StopAsyncIteration
            item = await self._start()
        elif self._done:
            raise StopAsyncIteration
        try:
            return cast(Out, await item.outputs.receive())
        except anyio.EndOfStream:
            pass
        except BaseException:
            self._leave()
            raise
        self._done = True
        item.outputs.close()
        item.outcome()  # raises the row's error
        raise StopAsyncIteration

    def _leave(self) -> None:
        """The caller is gone: end its row now (an ended row keeps its outcome)."""
        item = self._item
        if self._done:
            return
        self._done = True
        if item is None:
            return
        if item.state != DONE:
            self._engine.leave(item)
        item.close()

    async def aclose(self) -> None:
        """
        Stop reading: withdraw the item or end its row (see :meth:`__anext__`).

        Cancellation:
            Nothing to cancel: the work is done before the first checkpoint.
        """
        self._leave()
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> OutputStream[Out]:
        """
        Submit the item now.

        Cancellation:
            While waiting for room in the queue: nothing was queued.
        """
        if self._item is None and not self._done:
            await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._leave()

    def __del__(self) -> None:
        # A caller that broke out of ``async for`` without ``async with``: leave now.
        if not self._done and self._item is not None:
            self._leave()


async def collect(engine: Engine[Any, Out], value: object, priority: float) -> list[Out]:
    """``submit`` on a streaming fn: every output of the item, in order."""
    stream = OutputStream(engine, value, priority)
    return [output async for output in stream]
