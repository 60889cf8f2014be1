"""
The executor: runs each dispatched batch, calls fn, routes every outcome.

Batches run in the slots' persistent worker tasks (``_slots``), one batch per slot at a
time. An async fn runs in its slot's task; a sync fn runs in a worker thread (never on the
event loop) through ``anyio.to_thread.run_sync`` with the scope's own capacity limiter.
Results are split back per item; an ``Exception`` instance at position *i* fails item *i*
alone; an exception raised by fn fails every item of that batch and nothing else.

Around each call: the circuit breaker (fail fast while open), the rate limits, and
``batch_timeout``; around the calls of one batch: retries with backoff (only the failed
items when fn returned per-item exceptions) and, when fn keeps raising, isolation by
bisection (``isolate_failures``).

A batch whose callers have all left is cancelled when fn is async. A sync fn cannot be
interrupted (no Python thread can): when its batch is cancelled the thread is abandoned
and its late result discarded.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence, Set
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

import anyio
import anyio.to_thread

from ._admission import slow_down
from ._batchinfo import reset, using
from ._exceptions import BatchSizeMismatchError, CircuitOpenError
from ._hooks import BatchFinished, BatchStarted, Outcome, ReleaseReason
from ._items import ABANDONED, DONE, RUNNING, Item

if TYPE_CHECKING:
    from ._engine import Engine
    from ._streaming import StreamRunner

__all__ = ["Batch", "BatchFunction", "Collator", "Executor", "is_async_callable"]

logger = logging.getLogger("batchscope")

In = TypeVar("In")
Out = TypeVar("Out")
Out_co = TypeVar("Out_co", covariant=True)

#: ``fn(items) -> results``, sync or async; an ``Exception`` in the results fails one item.
BatchFunction = (
    Callable[[list[In]], Sequence[Out | Exception]]
    | Callable[[list[In]], Awaitable[Sequence[Out | Exception]]]
)


class Collator(Protocol[In, Out_co]):
    """
    Turns a batch's items into the batch function's input, and its output back into items.

    With ``BatchScope(fn, collate=collator)``, each batch runs as::

        batch_input, context = await collator.collate(items)
        output = fn(batch_input)            # or await fn(batch_input)
        results = await collator.split(output, context)

    ``results`` must hold one result per item, in order (an ``Exception`` fails one item).
    An exception from ``collate`` or ``split`` fails every item of that batch, like one
    from fn. Both are coroutines so that a device collator can await its copies without
    blocking the event loop; they run in the batch's task, so with
    ``max_concurrent_batches=2`` one batch collates while another computes.

    .. versionadded:: 0.1.0
    """

    async def collate(self, items: list[In]) -> tuple[Any, Any]:
        """
        Return ``(input for fn, context for split)`` for *items*.

        Cancellation:
            Runs in the batch's task: cancelled when the batch is (its callers all left,
            ``batch_timeout``, the scope closing); fn is then not called.
        """
        ...

    async def split(self, output: Any, context: Any) -> Sequence[Out_co | Exception]:
        """
        Return one result per item from fn's *output*.

        Cancellation:
            As for :meth:`collate`; results not yet handed out are dropped.
        """
        ...


def check_collator(collate: object) -> None:
    """Raise TypeError unless *collate* has coroutine methods ``collate`` and ``split``."""
    for method in ("collate", "split"):
        if not inspect.iscoroutinefunction(getattr(collate, method, None)):
            raise TypeError(
                f"'collate' must be a collator with async collate() and split() methods, "
                f"got {type(collate).__name__}"
            )


#: What is never a sequence of results, though it has a length or can be iterated.
_NOT_RESULTS = (str, bytes, bytearray, memoryview, Mapping, Set, Iterator)


def items_phrase(count: int) -> str:
    """``"1 item"``, ``"2 items"``."""
    return f"{count} item" if count == 1 else f"{count} items"


def count_results(results: object) -> int:
    """
    The number of results in fn's (or a collator's ``split``) output; TypeError if it
    is not a sequence of results.

    A sequence is a ``collections.abc.Sequence`` (list, tuple...) or an array (NumPy,
    CuPy, PyTorch: it has ``__len__`` and ``__getitem__``). Refused, because their
    order or their items are not one result per item: a mapping (its keys), a set
    (no order), ``str``/``bytes`` (characters), and an iterator or generator (it would
    run lazily on the event loop, and has no length to check).
    """
    kind = type(results)
    if kind is list or kind is tuple:
        return len(cast("Sequence[object]", results))
    if not isinstance(results, _NOT_RESULTS) and hasattr(kind, "__getitem__"):
        try:
            return len(cast("Sequence[object]", results))
        except TypeError:
            pass  # no __len__, or an array of zero dimensions
    raise TypeError(
        f"the batch function must return a sequence of results, got {kind.__name__} "
        f"(one result per item: a list, a tuple, an array)"
    )


def is_async_callable(fn: object) -> bool:
    """Whether calling *fn* returns a coroutine (coroutine functions, partials, objects)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the method itself
    return call is not None and inspect.iscoroutinefunction(call)


class Batch(Generic[In, Out]):
    """One dispatched batch: its items and what is needed to cancel it."""

    __slots__ = (
        "began",
        "calling",
        "cancel_scope",
        "failed",
        "items",
        "live",
        "load",
        "reason",
        "started",
    )

    def __init__(self, items: list[Item[In, Out]], load: float, reason: ReleaseReason) -> None:
        self.items: list[Item[In, Out]] = items
        #: Why the scheduler released it.
        self.reason: ReleaseReason = reason
        #: The hooks' start event (None without hooks, or until the batch starts).
        self.started: BatchStarted | None = None
        #: Whether the batch's last call raised.
        self.failed: bool = False
        #: The batch's size, or cost, for the run-time model.
        self.load: float = load
        #: Items whose callers still wait for this batch.
        self.live: int = len(items)
        self.cancel_scope: anyio.CancelScope | None = None
        #: The items of the call of fn running now (their outcomes are still to come).
        self.calling: list[Item[In, Out]] | None = None
        #: When it started (None while it waits, formed ahead).
        self.began: float | None = None


class Executor(Generic[In, Out]):
    """Runs batches (in the slots' tasks) and routes their outcomes."""

    def __init__(
        self,
        engine: Engine[In, Out],
        fn: BatchFunction[In, Out] | Callable[[Any], Any],
        collator: Collator[In, Out] | None,
    ) -> None:
        self._engine = engine
        self._fn = fn
        self._collator = collator
        self._is_async = is_async_callable(fn)
        self._limiter = anyio.CapacityLimiter(engine.config.max_concurrent_batches)
        #: Batches running now (for failing their items if the scope breaks).
        self.running: set[Batch[In, Out]] = set()
        #: Runs every batch instead of :meth:`_execute` when fn is an async generator
        #: (``_streaming``; set by the scope).
        self.stream: StreamRunner[In, Out] | None = None

    def set_capacity(self, batches: int) -> None:
        """Apply a new ``max_concurrent_batches`` (from the next batch)."""
        self._limiter.total_tokens = batches

    def form(
        self, items: list[Item[In, Out]], load: float, reason: ReleaseReason
    ) -> Batch[In, Out]:
        """Make *items* one batch, theirs from now on (a caller leaving abandons it)."""
        batch = Batch(items, load, reason)
        for item in items:
            item.batch = batch
            item.state = RUNNING
        self.running.add(batch)
        return batch

    def cancel_if_abandoned(self, batch: Batch[In, Out]) -> None:
        """Cancel an async batch once its last caller has left."""
        if (
            batch.live == 0
            and (self._is_async or self.stream is not None)
            and batch.cancel_scope is not None
        ):
            batch.cancel_scope.cancel()

    def will_end(self, item: Item[In, Out]) -> bool:
        """
        Whether the outcome of an abandoned *item* is still to come: a call of fn that
        covers it runs now and its batch is not cancelled (so a caller may rejoin it).
        """
        batch: Batch[In, Out] | None = item.batch
        if batch is None or batch.calling is None:
            return False
        cancel_scope = batch.cancel_scope
        if cancel_scope is not None and cancel_scope.cancel_called:
            return False
        return any(other is item for other in batch.calling)

    async def _call(self, values: list[In]) -> Any:
        collator = self._collator
        if collator is None:
            return await self._invoke(values)
        batch_input, context = await collator.collate(values)
        return await collator.split(await self._invoke(batch_input), context)

    async def call_once(self, values: list[In]) -> Any:
        """One call of fn on *values* (through the collator) outside any batch: warmup."""
        return await self._call(values)

    async def _invoke(self, batch_input: Any) -> Any:
        if self._is_async:
            return await cast("Callable[[Any], Awaitable[Any]]", self._fn)(batch_input)
        return await anyio.to_thread.run_sync(
            self._call_in_thread, batch_input, abandon_on_cancel=True, limiter=self._limiter
        )

    def _call_in_thread(self, values: Any) -> Any:
        result = self._fn(values)
        if inspect.isawaitable(result):
            # A plain callable (a lambda, a partial) around a coroutine function: its
            # coroutine cannot run in a thread, and we could not tell before calling it.
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise TypeError(
                f"the batch function {self._fn!r} returned an awaitable from a worker "
                f"thread; make it an 'async def' function (or an object with an async "
                f"__call__) so that it runs on the event loop"
            )
        return result

    async def run(self, batch: Batch[In, Out]) -> None:
        """
        Run *batch* to its end, in the calling slot's task.

        Cancellation:
            When the batch's callers have all left (async fn only), it ends at once and
            nothing propagates; when the scope's task group is cancelled (or fn raised a
            BaseException), every item still running fails with ScopeClosedError and
            the exception propagates.
        """
        engine = self._engine
        recorder = engine.recorder
        items = batch.items
        clock = engine.clock
        started = clock()
        try:
            with anyio.CancelScope() as cancel_scope:
                batch.cancel_scope = cancel_scope
                if batch.live == 0:
                    # Every caller left between dispatch and this slot starting it.
                    cancel_scope.cancel()
                    return
                if self.stream is not None:
                    await self.stream.run(batch)
                else:
                    await self._execute(batch)
        except BaseException as exc:
            # The scope's task group is being cancelled, or fn raised a BaseException
            # (KeyboardInterrupt, SystemExit...): nobody may hang, so fail the items with
            # ScopeClosedError and let the exception propagate.
            engine.note_crash(exc)
            self.fail_all(items, engine.closed_error())
            raise
        finally:
            self.running.discard(batch)
            ended = clock()
            recorder.in_flight -= 1
            if not recorder.in_flight:
                recorder.busy_seconds += ended - recorder.busy_since
            recorder.finished_batches += 1
            recorder.batch_seconds += ended - started
            latencies = recorder.latencies
            for item in items:
                latencies.append(ended - item.arrival)
            if engine.device is not None:
                engine.scheduler.device_slot_freed(ended - started)
            if batch.started is not None and engine.hooks is not None:
                engine.hooks.call("batch_finished", _finished(batch, ended - started, ended))
        if engine.front is not None:
            await engine.front.settle(items)

    async def _execute(self, batch: Batch[In, Out]) -> None:
        """End every item of *batch*: through the breaker, retries and isolation."""
        breaker = self._engine.breaker
        if breaker is not None and not breaker.allow_batch():
            self.fail_all(
                batch.items,
                CircuitOpenError(
                    "the circuit breaker is open: recent batches failed", breaker.reopens_in()
                ),
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
        """Call fn, retrying per the Retry policy; True when the batch's last call raised."""
        config = self._engine.config
        retry = config.retry
        attempts = retry.attempts if retry is not None else 1
        first_call = self._engine.clock()
        items = batch.items
        for attempt in range(1, attempts + 1):
            live = [item for item in items if item.state == RUNNING]
            if not live:
                return False
            retrying = retry is not None and attempt < attempts
            wait = retry.wait(attempt) if retry is not None and retrying else 0.0
            if retrying and retry is not None and retry.timeout is not None:
                # No call may start after the timeout: retry only if the next one would
                # begin within it.
                retrying = self._engine.clock() + wait - first_call < retry.timeout
            try:
                results = await self._call_limited(live, batch if attempt == 1 else None)
            except Exception as exc:
                oom = config.oom_errors
                if oom and isinstance(exc, oom) and len(live) > 1:
                    # Out of memory: not worth a retry at the same size. Split it.
                    self._out_of_memory(live, exc)
                    await self._isolate(live, exc, oom)
                    return any(item.error is not None for item in live)
                # An upstream that says "slow down" holds the whole scope's dispatch.
                paused = slow_down(self._engine, exc)
                if retrying and retry is not None and isinstance(exc, retry.on):
                    self._engine.recorder.retries += 1
                    await anyio.sleep(max(wait, paused))
                    continue
                self._engine.log.log(
                    logging.WARNING,
                    f"fn-raised:{type(exc).__name__}",
                    "batchscope: the batch function raised %s for a batch of %s%s",
                    type(exc).__name__,
                    items_phrase(len(live)),
                    "; isolating the failing items" if config.isolate_failures else "",
                )
                if config.isolate_failures and len(live) > 1:
                    await self._isolate(live, exc)
                else:
                    self.fail_all(live, exc)
                return True
            if config.oom_errors:
                self._engine.sizer.succeeded(len(live))
            again = self._route(live, results, retry.on if retrying and retry else None)
            if not again:
                return False
            self._engine.recorder.retries += 1
            items = again
            await anyio.sleep(wait)
        return False

    async def _isolate(
        self,
        items: list[Item[In, Out]],
        error: Exception,
        oom: tuple[type[Exception], ...] = (),
    ) -> None:
        """
        Find the items that make fn raise by splitting the batch in halves, recursively.

        Items that succeed in a half get their results; an item that fails alone gets its
        own exception. k bad items in a batch of n cost O(k log n) extra calls.

        Also the out-of-memory back-off (*oom*: ``oom_errors``): a half that runs out of
        memory again is split again; one that raises anything else is isolated only
        with ``isolate_failures``, and otherwise fails whole.
        """
        if len(items) == 1:
            self.fail_all(items, error)
            return
        engine = self._engine
        isolating = not (oom and isinstance(error, oom))
        middle = len(items) // 2
        for half in (items[:middle], items[middle:]):
            live = [item for item in half if item.state == RUNNING]
            if not live:
                continue
            if isolating:
                engine.recorder.isolation_calls += 1
            try:
                results = await self._call_limited(live, None)
            except Exception as exc:
                if oom and isinstance(exc, oom):
                    if len(live) > 1:
                        self._out_of_memory(live, exc)
                    await self._isolate(live, exc, oom)
                elif engine.config.isolate_failures:
                    await self._isolate(live, exc, oom)
                else:
                    self.fail_all(live, exc)
            else:
                self._route(live, results, None)

    def _out_of_memory(self, items: list[Item[In, Out]], error: Exception) -> None:
        """A call on *items* ran out of memory: count the split, lower the cap, warn."""
        engine = self._engine
        engine.recorder.oom_splits += 1
        cap = engine.sizer.out_of_memory(len(items))
        engine.log.log(
            logging.WARNING,
            f"oom:{type(error).__name__}",
            "batchscope: the batch function ran out of memory (%s) on a batch of %s; "
            "splitting it in halves, batch size cap now %d",
            type(error).__name__,
            items_phrase(len(items)),
            cap,
        )

    async def _call_limited(self, items: list[Item[In, Out]], timed: Batch[In, Out] | None) -> Any:
        """One call of fn on *items*: rate limits, then ``batch_timeout``; times *timed*."""
        engine = self._engine
        if engine.batch_bucket is not None:
            await engine.batch_bucket.take(1)
        if engine.cost_bucket is not None:
            await engine.cost_bucket.take(sum(item.cost for item in items))
        values = [item.value for item in items]
        timeout = engine.config.batch_timeout
        clock = engine.clock
        started = clock()
        batch: Batch[In, Out] = items[0].batch
        batch.calling = items
        token = using(items, batch.reason)
        try:
            if timeout is None:
                results = await self._call(values)
            else:
                with anyio.fail_after(timeout):
                    results = await self._call(values)
        finally:
            reset(token)
            batch.calling = None  # routed right after, with no checkpoint between
        if timed is not None:
            engine.scheduler.model.observe(timed.load, clock() - started)
        return results

    def _route(
        self,
        items: list[Item[In, Out]],
        results: Any,
        retry_on: type[Exception] | tuple[type[Exception], ...] | None,
    ) -> list[Item[In, Out]]:
        """
        End each item with its result (or its exception result); return the items whose
        exception result is one of *retry_on*, left running for another attempt.
        """
        try:
            count = count_results(results)
        except TypeError as exc:
            self.fail_all(items, exc)
            return []
        if count != len(items):
            self.fail_all(
                items,
                BatchSizeMismatchError(
                    f"the batch function returned {count} result{'' if count == 1 else 's'} "
                    f"for a batch of {items_phrase(len(items))}"
                ),
            )
            return []
        recorder = self._engine.recorder
        completed = failed = 0
        again: list[Item[In, Out]] = []
        for item, result in zip(items, results, strict=True):
            if item.state != RUNNING:
                continue  # its caller left; the result is dropped
            if isinstance(result, Exception):
                if retry_on is not None and isinstance(result, retry_on):
                    again.append(item)
                    continue
                item.fail(result)
                failed += item.waiters
            else:
                # item.succeed(result), inline (once per item).
                item.result = result
                item.state = DONE
                item.notify()
                completed += item.waiters
        recorder.completed += completed
        recorder.failed += failed
        recorder.running -= completed + failed
        return again

    def fail_all(self, items: list[Item[In, Out]], error: BaseException) -> None:
        failed = 0
        for item in items:
            if item.state == RUNNING:
                item.fail(error)
                failed += item.waiters
        recorder = self._engine.recorder
        recorder.failed += failed
        recorder.running -= failed


def _finished(batch: Batch[Any, Any], seconds: float, ended: float) -> BatchFinished:
    """The hooks' end event of *batch* (only built when the scope has hooks)."""
    assert batch.started is not None
    completed = failed = 0
    for item in batch.items:
        if item.state == DONE:
            if item.error is None:
                completed += 1
            else:
                failed += 1
    outcome: Outcome
    if completed == failed == 0:
        outcome = "abandoned" if all(i.state == ABANDONED for i in batch.items) else "failed"
    elif failed == 0:
        outcome = "ok"
    elif completed == 0 and batch.failed:
        outcome = "failed"
    else:
        outcome = "partial"
    return BatchFinished(
        batch.started,
        seconds,
        outcome,
        completed,
        failed,
        tuple(ended - item.arrival for item in batch.items),
    )
