"""
BatchScope: the public object, its lifetime, and the caller's side of every item.

``async with BatchScope(fn) as scope`` opens a task group holding the scheduler task and,
later, one task per running batch. A caller's ``submit`` is admitted (room in the queue),
queued on the memory channel, and parks on its item's completion; if the caller leaves
first, its item is withdrawn (before dispatch) or abandoned (after). Leaving the block
normally drains; leaving it with an exception fails everything still waiting with
``ScopeClosedError`` and cancels the rest.
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Hashable,
    Iterable,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Generic, Literal, TypeVar, cast, final, overload

import anyio
import attrs
from anyio import AsyncContextManagerMixin
from anyio.abc import TaskGroup

from ._bucketing import LengthPool
from ._cache import AsyncCache, CacheFront
from ._completion import loop_calls
from ._config import CostMode, OnFull, Oversize, Policy, ScopeConfig, check_int
from ._exceptions import (
    CircuitOpenError,
    ItemTooLargeError,
    NoActiveScopeError,
    QueueFullError,
    ScopeClosedError,
)
from ._executor import BatchFunction, Collator, Executor, check_collator
from ._hooks import HookRunner, Hooks, RateLimitedLog, RejectReason
from ._map import MapIterator, gather
from ._pending import (
    ABANDONED,
    DONE,
    EXPIRED,
    FOLLOWING,
    POOLED,
    QUEUED,
    RUNNING,
    WITHDRAWN,
    CallbackItem,
    FifoPool,
    Item,
    Pool,
    PriorityPool,
    WaitedItem,
)
from ._resilience import BreakerState, CircuitBreaker, RateLimit, Retry, TokenBucket
from ._room import Room
from ._scheduler import Scheduler
from ._statistics import BatchStatistics, Recorder

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["BatchScope"]

logger = logging.getLogger("batchscope")

In = TypeVar("In")
Out = TypeVar("Out")

_NEW, _OPEN, _CLOSING, _CLOSED = "new", "open", "closing", "closed"


def _hook_runner(hooks: object, log: RateLimitedLog) -> HookRunner | None:
    if hooks is None:
        return None
    if isinstance(hooks, type):
        # A class, not an instance (hooks=MyHooks): say so, it is the likely slip.
        raise TypeError(
            f"'hooks' must be a batchscope.Hooks or a list of them, got the class "
            f"{hooks.__name__} (pass an instance: {hooks.__name__}())"
        )
    if not isinstance(hooks, (Hooks, Iterable)) or isinstance(hooks, (str, bytes)):
        raise TypeError(
            f"'hooks' must be a batchscope.Hooks or a list of them, got {type(hooks).__name__}"
        )
    listed: list[object] = (
        [hooks] if isinstance(hooks, Hooks) else list(cast("Iterable[object]", hooks))
    )
    for hook in listed:
        if not isinstance(hook, Hooks):
            raise TypeError(
                f"'hooks' must be a batchscope.Hooks or a list of them, got {type(hook).__name__}"
            )
    return HookRunner(cast("Sequence[Hooks]", listed), log) if listed else None


def _check_priority(priority: object) -> None:
    kind = type(priority)
    if kind is int:
        return  # the common case, without the checks below (per-item path)
    if kind is not float:
        if isinstance(priority, bool) or not isinstance(priority, numbers.Real):
            raise TypeError(f"'priority' must be a number, not {kind.__name__}")
        if isinstance(priority, numbers.Integral):
            return
    if not math.isfinite(cast(float, priority)):
        # NaN compares false with everything (it would starve in the priority heap);
        # an infinite rank defeats aging.
        raise ValueError(f"'priority' must be a finite number, got {priority}")


@final
class BatchScope(AsyncContextManagerMixin, Generic[In, Out]):
    """
    Collect items submitted by many concurrent callers into batches for one function.

    ``fn`` takes a list of items and returns a sequence of results, one per item, in the
    same order (or an awaitable of it). An ``Exception`` instance at position *i* of the
    results fails item *i* alone. A plain (sync) function runs in a worker thread, never on
    the event loop; an ``async def`` function runs in a task of the scope's task group.

    Use it as an async context manager; every option is keyword-only and validated here::

        async with BatchScope(model, max_batch_size=32, max_wait=0.005) as scope:
            y = await scope.submit(x)

    Args:
        fn: The batch function. Its results must be a sequence (a list, a tuple, any
            ``collections.abc.Sequence``, or a NumPy/CuPy/PyTorch array) of one result
            per item; anything else fails the batch with ``TypeError``: a mapping, a
            set, ``str``/``bytes``, and an iterator or generator (return a list).
        max_batch_size: Hard cap on items per batch.
        max_wait: Seconds (or a ``timedelta``) the oldest pending item waits at most for
            companions before a partial batch goes. A full batch goes at once. ``"auto"``
            waits as long as a full batch still finishes within ``target_latency``, by
            the scope's fitted model of batch run time.
        target_latency: With ``max_wait="auto"``, the end-to-end latency to aim for.
        max_queue_size: Bound on pending (queued, not yet dispatched) items.
        on_full: ``"wait"``: ``submit`` waits for room in the queue (backpressure);
            ``"reject"``: ``submit`` raises :class:`QueueFullError` at once.
        max_concurrent_batches: Batches running at once.
        cost: ``item -> number >= 0`` (say ``len``): enables cost budgets and length
            bucketing. Called once per item, at submit; an error in it fails that item.
        max_batch_cost: Budget per batch in cost units. A batch exceeds it only when it
            is a single item.
        cost_mode: How a batch's cost adds up: ``"padded"`` is ``len(batch) *
            max(cost)`` (padded GPU batches), ``"sum"`` the plain sum (varlen models,
            token quotas).
        oversize: An item whose own cost exceeds ``max_batch_cost``: ``"run_alone"``
            (a batch of one) or ``"reject"`` (:class:`ItemTooLargeError` to its caller).
        policy: ``"fifo"``; ``"length"`` (each batch holds items of similar cost; the
            oldest item anchors the next batch once it has waited ``max_wait``, so none
            starves); ``"priority"`` (lower ``priority`` first, FIFO within one, aging).
        aging: With ``policy="priority"``, the wait in seconds worth one priority level.
        batch_timeout: Seconds a call of fn may take; a batch running longer is cancelled
            (async fn) or abandoned (sync fn: its thread runs on, its late result is
            discarded) and its items fail with ``TimeoutError``.
        isolate_failures: When fn raises, split the batch in halves and rerun them to find
            the failing items, so the others still get their results.
        retry: A :class:`Retry` policy for transient failures.
        circuit_breaker: A :class:`CircuitBreaker`; while open, submits fail fast with
            :class:`CircuitOpenError`.
        rate_limit: A :class:`RateLimit` on calls per second and cost per minute.
        cache: A ``MutableMapping`` (``cachetools.LRUCache``, ``TTLCache``...) or an
            :class:`AsyncCache`; hits skip the queue, failures are never cached.
        key: ``item -> hashable`` for the cache (the item itself without it); giving it
            also turns on in-flight deduplication: identical keys pending or running are
            computed once for every caller (``submit``, ``submit_many``, ``map``). An
            error in it fails that item with ``ValueError`` (an unhashable key:
            ``TypeError``).
        hooks: :class:`Hooks` (or a list of them) that receive batch and item events;
            :mod:`batchscope.metrics` has Prometheus and OpenTelemetry exporters.
        collate: A :class:`Collator` that turns the item list into fn's input (say, one
            padded array) and fn's output back into per-item results
            (:mod:`batchscope.arrays` has collators for NumPy, CuPy and PyTorch).

    Raises:
        TypeError: *fn* is not callable, or an option has the wrong type.
        ValueError: An option is out of range. The message names the option.

    .. versionadded:: 0.1.0
    """

    @overload
    def __init__(
        self,
        fn: BatchFunction[In, Out],
        *,
        max_batch_size: int = 32,
        max_wait: float | timedelta | Literal["auto"] = 0.005,
        target_latency: float | timedelta | None = None,
        max_queue_size: int = 10_000,
        on_full: OnFull = "wait",
        max_concurrent_batches: int = 1,
        cost: Callable[[In], float] | None = None,
        max_batch_cost: float | None = None,
        cost_mode: CostMode = "padded",
        oversize: Oversize = "run_alone",
        policy: Policy = "fifo",
        aging: float | timedelta = 0.1,
        batch_timeout: float | timedelta | None = None,
        isolate_failures: bool = False,
        retry: Retry | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
        cache: MutableMapping[Any, Any] | AsyncCache | None = None,
        key: Callable[[In], Hashable] | None = None,
        hooks: Hooks | Sequence[Hooks] | None = None,
        collate: None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        max_batch_size: int = 32,
        max_wait: float | timedelta | Literal["auto"] = 0.005,
        target_latency: float | timedelta | None = None,
        max_queue_size: int = 10_000,
        on_full: OnFull = "wait",
        max_concurrent_batches: int = 1,
        cost: Callable[[In], float] | None = None,
        max_batch_cost: float | None = None,
        cost_mode: CostMode = "padded",
        oversize: Oversize = "run_alone",
        policy: Policy = "fifo",
        aging: float | timedelta = 0.1,
        batch_timeout: float | timedelta | None = None,
        isolate_failures: bool = False,
        retry: Retry | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
        cache: MutableMapping[Any, Any] | AsyncCache | None = None,
        key: Callable[[In], Hashable] | None = None,
        hooks: Hooks | Sequence[Hooks] | None = None,
        collate: Collator[In, Out],
    ) -> None: ...

    def __init__(
        self,
        fn: BatchFunction[In, Out] | Callable[[Any], Any],
        *,
        max_batch_size: int = 32,
        max_wait: float | timedelta | Literal["auto"] = 0.005,
        target_latency: float | timedelta | None = None,
        max_queue_size: int = 10_000,
        on_full: OnFull = "wait",
        max_concurrent_batches: int = 1,
        cost: Callable[[In], float] | None = None,
        max_batch_cost: float | None = None,
        cost_mode: CostMode = "padded",
        oversize: Oversize = "run_alone",
        policy: Policy = "fifo",
        aging: float | timedelta = 0.1,
        batch_timeout: float | timedelta | None = None,
        isolate_failures: bool = False,
        retry: Retry | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
        cache: MutableMapping[Any, Any] | AsyncCache | None = None,
        key: Callable[[In], Hashable] | None = None,
        hooks: Hooks | Sequence[Hooks] | None = None,
        collate: Collator[In, Out] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"'fn' must be callable, not {type(fn).__name__}")
        if collate is not None:
            check_collator(collate)
        self._fn = fn
        self._collate = collate
        self._config = ScopeConfig(
            max_batch_size=max_batch_size,
            max_wait=max_wait,
            target_latency=target_latency,
            max_queue_size=max_queue_size,
            on_full=on_full,
            max_concurrent_batches=max_concurrent_batches,
            cost=cost,
            max_batch_cost=max_batch_cost,
            cost_mode=cost_mode,
            oversize=oversize,
            policy=policy,
            aging=aging,
            batch_timeout=batch_timeout,
            isolate_failures=isolate_failures,
            retry=retry,
            circuit_breaker=circuit_breaker,
            rate_limit=rate_limit,
            cache=cache,
            key=key,
        )
        #: The cache and in-flight deduplication in front of the queue (None without).
        self._front: CacheFront[In, Out] | None = None
        if cache is not None or key is not None:
            self._front = CacheFront(self, cache, key)
        self._breaker = None if circuit_breaker is None else BreakerState(circuit_breaker)
        self._log = RateLimitedLog()
        self._hooks = _hook_runner(hooks, self._log)
        self._batch_bucket: TokenBucket | None = None
        self._cost_bucket: TokenBucket | None = None
        self._state = _NEW
        self._recorder = Recorder()
        self._failure: BaseException | None = None
        self._maps: set[MapIterator[In, Out]] = set()
        # Created when the scope opens: they belong to its event loop.
        self._send: Any = None
        self._clock: Callable[[], float] = anyio.current_time
        self._deadline: Callable[[], float] = anyio.current_effective_deadline
        self._item_type: type[WaitedItem[Any, Any]]
        self._new_signal: Callable[[], object]
        self._room: Room
        self._task_group: TaskGroup
        self._executor: Executor[In, Out]
        self._scheduler: Scheduler[In, Out]

    @property
    def _fn_name(self) -> str:
        return getattr(self._fn, "__qualname__", None) or type(self._fn).__qualname__

    def __repr__(self) -> str:
        return f"<BatchScope {self._fn_name} {self._state}>"

    @property
    def config(self) -> ScopeConfig:
        """The options in force (a frozen :class:`ScopeConfig`)."""
        return self._config

    # -- lifetime ------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[BatchScope[In, Out], None]:
        if self._state is not _NEW:
            raise RuntimeError("a BatchScope can be opened only once; create a new one")
        calls = loop_calls()
        self._clock, self._deadline = calls.clock, calls.deadline
        self._item_type, self._new_signal = calls.item_type, calls.new_signal
        send, receive = anyio.create_memory_object_stream[Item[In, Out]](math.inf)
        self._send = send
        self._room = Room(self._config.max_queue_size)
        limit = self._config.rate_limit
        if limit is not None and limit.batches_per_second is not None:
            rate = limit.batches_per_second
            self._batch_bucket = TokenBucket(rate, max(1.0, rate))
        if limit is not None and limit.cost_per_minute is not None:
            self._cost_bucket = TokenBucket(limit.cost_per_minute / 60, limit.cost_per_minute)
        self._executor = Executor(self, self._fn, self._collate)
        self._scheduler = Scheduler(self, send, receive, self._new_pool(), self._executor)
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(
                    self._schedule, task_group, name=f"batchscope scheduler of {self!r}"
                )
                self._state = _OPEN
                if self._hooks is not None:
                    self._hooks.call("scope_opened", self)
                try:
                    yield self
                except BaseException as exc:
                    self._abort(exc)
                    raise
                self.close()
        except BaseExceptionGroup as group:
            # Our own tasks failed (fn raised a BaseException, or a bug in batchscope):
            # one failure comes out as itself, not wrapped in a group of one.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            self._state = _CLOSED
            send.close()
            if self._hooks is not None:
                self._hooks.call("scope_closed", self)

    def _new_pool(self) -> Pool:
        policy = self._config.policy
        if policy == "length":
            return LengthPool()
        if policy == "priority":
            return PriorityPool(self._config.aging)
        return FifoPool()

    async def _schedule(self, task_group: TaskGroup) -> None:
        try:
            await self._scheduler.run(task_group)
        except BaseException as exc:
            self._note_crash(exc)
            self._fail_waiting()
            raise

    def close(self) -> None:
        """
        Stop accepting items; those already queued still run.

        Submits that have not queued their item yet (including callers waiting for room
        in the queue) fail with :class:`ScopeClosedError`. Idempotent. Leaving ``async
        with`` normally calls it and then waits for the queue to drain.

        .. versionadded:: 0.1.0
        """
        if self._state is not _OPEN:
            return
        self._state = _CLOSING
        self._send.close()
        if self._room.waiting:
            # Wake the first waiter for room; it sees the scope closing and passes the
            # wake-up on, so every waiter gets ScopeClosedError.
            self._room.release()
        for iterator in list(self._maps):
            iterator.stop_feeding()

    def _note_crash(self, exc: BaseException) -> None:
        if self._failure is None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            self._failure = exc

    def _closed_error(self) -> ScopeClosedError:
        failure = self._failure
        if failure is None:
            return ScopeClosedError(f"{self!r} is closed: it takes no more items")
        error = ScopeClosedError(f"{self!r} failed: {type(failure).__name__}: {failure}")
        error.__cause__ = failure
        return error

    def _fail_waiting(self) -> None:
        """End every queued or pooled item with ScopeClosedError."""
        failed = self._scheduler.fail_waiting(self._closed_error())
        self._recorder.failed += failed
        self._recorder.pending -= failed

    def _abort(self, exc: BaseException) -> None:
        """The body failed or was cancelled: fail everything waiting, stop everything."""
        self._note_crash(exc)
        self.close()
        self._state = _CLOSING
        self._fail_waiting()
        error = self._closed_error()
        for batch in list(self._executor.running):
            self._executor.fail_all(batch.items, error)
        self._task_group.cancel_scope.cancel()

    # -- the caller's side ---------------------------------------------------------------

    def _closed_now(self) -> Exception:
        if self._state is _NEW:
            return NoActiveScopeError(
                f"{self!r} is not open: use 'async with BatchScope(fn) as scope:' "
                f"and submit inside the block"
            )
        return self._closed_error()

    def _cost_of(self, value: In, cost_fn: Callable[[In], float]) -> float:
        """The item's cost by *cost_fn*, checked; raises for this item."""
        config = self._config
        try:
            cost: object = cost_fn(value)
        except Exception as exc:
            raise ValueError(
                f"the 'cost' function raised {type(exc).__name__} for this item: {exc}"
            ) from exc
        if isinstance(cost, bool) or not isinstance(cost, numbers.Real):
            raise TypeError(f"the 'cost' function must return a number, got {type(cost).__name__}")
        cost = float(cost)
        if not math.isfinite(cost) or cost < 0:
            raise ValueError(f"the 'cost' function must return a finite number >= 0, got {cost}")
        limit = config.max_batch_cost
        if limit is not None and cost > limit and config.oversize == "reject":
            raise ItemTooLargeError(
                f"this item costs {cost:g}, more than max_batch_cost={limit:g} (oversize='reject')"
            )
        return cost

    def _price(self, value: In, count: bool) -> float:
        """
        Count a submit (if *count*) and price its item; raises if it cannot be queued.

        Without *count* the caller has counted the submit already (before an async cache
        look-up): a scope that closed meanwhile then counts it as rejected.
        """
        if self._state is not _OPEN:
            if not count:
                self._reject("closed")
            raise self._closed_now()
        if count:
            self._recorder.submitted += 1
        breaker = self._breaker
        if breaker is not None and breaker.is_open():
            self._reject("circuit_open")
            raise CircuitOpenError(
                f"the circuit breaker of {self!r} is open: recent batches failed"
            )
        cost_fn = self._config.cost
        if cost_fn is None:
            return 1.0
        try:
            return self._cost_of(value, cost_fn)
        except ItemTooLargeError:
            self._reject("too_large")
            raise
        except Exception:
            self._reject("bad_cost")
            raise

    async def _admit(self, value: In, *, count: bool = True) -> float:
        """Count a submit, price its item, take room for it in the queue; return the cost."""
        cost = self._price(value, count)
        if not self._room.take_nowait():
            await self._wait_for_room()
        return cost

    async def _wait_for_room(self) -> None:
        """The queue is full: reject, or wait for room (``on_full``)."""
        if self._config.on_full == "reject":
            self._reject("queue_full")
            raise QueueFullError(
                f"the queue of {self!r} holds max_queue_size="
                f"{self._config.max_queue_size} pending items"
            )
        recorder = self._recorder
        recorder.admitting += 1  # counted, not yet queued
        try:
            await self._room.take()
        except BaseException:
            recorder.admitting -= 1
            recorder.cancelled += 1
            if self._hooks is not None:
                self._hooks.call("item_cancelled", False)
            raise
        recorder.admitting -= 1
        if self._state is not _OPEN:
            self._room.release()  # pass the wake-up on to the next waiter
            self._reject("closed")
            raise self._closed_now()

    def _reject(self, reason: RejectReason) -> None:
        self._recorder.rejected += 1
        if self._hooks is not None:
            self._hooks.call("item_rejected", reason)

    def _queue(self, item: Item[In, Out]) -> None:
        self._recorder.pending += 1
        self._send.send_nowait(item)

    def _leave(self, item: Item[In, Out]) -> None:
        """
        One caller of *item* is gone: withdraw the item or drop its result, once no
        other caller (deduplicated onto it) still waits.

        That caller counts as cancelled, even when the item has ended already (its outcome
        arrived as the caller was cancelled): the count moves from completed or failed.
        """
        state = item.state
        if state == FOLLOWING:
            # An item of submit_many/map deduplicated onto another: its caller is one
            # of the leader's.
            item.state = WITHDRAWN
            item = cast(CallbackItem[In, Out], item).leader  # type: ignore[assignment]
            state = item.state
        recorder = self._recorder
        if self._hooks is not None and state in (QUEUED, POOLED, EXPIRED, RUNNING):
            self._hooks.call("item_cancelled", state == RUNNING)
        if state in (QUEUED, POOLED, EXPIRED):
            recorder.pending -= 1
            recorder.cancelled += 1
            item.waiters -= 1
            if item.waiters:
                return
            if state == POOLED:
                self._scheduler.pool.discard(item)
            item.state = WITHDRAWN
            self._room.release()
            if self._front is not None:
                self._front.forget(item)
        elif state == RUNNING:
            recorder.running -= 1
            recorder.cancelled += 1
            item.waiters -= 1
            if item.waiters:
                return
            item.state = ABANDONED  # still its key's leader: an identical submit rejoins it
            batch = item.batch
            batch.live -= 1
            self._executor.cancel_if_abandoned(batch)
        elif state == DONE and item.waiters:
            # Its outcome arrived as its caller left: that caller saw a cancellation (or
            # never got the outcome), so it counts as cancelled, whatever fn returned. An
            # item refused before it was queued has no waiters: it stays rejected.
            item.waiters -= 1
            if item.error is None:
                recorder.completed -= 1
            else:
                recorder.failed -= 1
            recorder.cancelled += 1

    async def submit(self, item: In, *, priority: float = 0) -> Out:
        """
        Submit one item and wait for its result.

        There is no ``timeout=`` argument: bound the wait with ``anyio.fail_after`` or
        ``anyio.move_on_after`` around the call, as everywhere in AnyIO and Trio.

        Args:
            item: The item to pass to the batch function.
            priority: With ``policy="priority"``, lower goes first (ignored otherwise);
                a finite number.

        Returns:
            The result the batch function returned for this item.

        Raises:
            ScopeClosedError: The scope is closed or closing, or failed while the item
                waited (then ``__cause__`` says why).
            QueueFullError: The queue is full and ``on_full="reject"``.
            ItemTooLargeError: The item's cost exceeds ``max_batch_cost`` and
                ``oversize="reject"``.
            ValueError, TypeError: The ``cost`` or ``key`` function failed for this item,
                or returned something that is not a number >= 0 (``cost``) or not
                hashable (``key``), or *priority* is not a finite number (the message
                says which).
            NoActiveScopeError: The scope has not been opened.
            BatchSizeMismatchError: fn returned the wrong number of results.
            Exception: Whatever fn raised for this item's batch, or returned at its
                position, unchanged.

        Cancellation:
            While waiting for room in the queue: nothing was queued. While the item is
            queued: it is withdrawn and never reaches fn. While its batch runs: the
            cancellation takes effect at once, the batch still runs for the other items,
            this item's result is dropped; an async batch whose callers have all left is
            cancelled. The cancellation is never swallowed or turned into an error.

        .. versionadded:: 0.1.0
        """
        _check_priority(priority)
        if self._front is not None:
            return await self._front.submit(item, priority)
        # _admit() inline, for the common case of room in the queue (the per-item path).
        cost = self._price(item, True)
        if not self._room.take_nowait():
            await self._wait_for_room()
        waited: WaitedItem[In, Out] = self._item_type(
            item, priority, cost, self._clock(), self._deadline(), self._new_signal()
        )
        self._queue(waited)
        return await self._wait(waited)

    async def _wait(self, waited: WaitedItem[In, Out], *, follower: bool = False) -> Out:
        """
        Park until *waited* ends; a caller that leaves first withdraws or abandons it.

        The caller that submitted *waited* parks on its completion; a *follower*
        (deduplicated onto it) on an event of its own.
        """
        try:
            if follower:
                await waited.follow().wait()
            else:
                await waited.park()
        except BaseException:
            self._leave(waited)
            raise
        return waited.outcome()

    async def submit_many(
        self, items: Iterable[In], *, return_exceptions: bool = False
    ) -> list[Out | BaseException]:
        """
        Submit several items and wait for all their results, in input order.

        Each item is one submit for batching and statistics; they may land in different
        batches.

        Args:
            items: The items.
            return_exceptions: With True, an item that failed has its exception in its
                place in the list. With False (the default), the first failure is raised
                and the other items are withdrawn (or, already dispatched, their results
                dropped); they count as ``cancelled`` in :meth:`statistics`, ended or
                not, since the caller never sees their outcomes.

        Returns:
            One result per item, in the order of *items*.

        Raises:
            ScopeClosedError, QueueFullError, NoActiveScopeError: As for :meth:`submit`.
            Exception: The first exception of an item, with ``return_exceptions=False``.

        Cancellation:
            Every item not yet ended is withdrawn or abandoned as in :meth:`submit`.
            Every item counts as ``cancelled``, even one that had ended (its outcome is
            never handed out), except one refused before it was queued (``rejected``).

        .. versionadded:: 0.1.0
        """
        return await gather(self, items, return_exceptions=return_exceptions)

    def map(
        self,
        items: Iterable[In] | AsyncIterable[In],
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        window: int | None = None,
        progress: bool = False,
    ) -> MapIterator[In, Out]:
        """
        Stream results for the items of a (sync or async) iterable, with bounded memory.

        A feeder task in the scope pulls items from *items* and submits them while you
        consume results. Use it as ``async for y in scope.map(xs)``; to stop early and
        withdraw what is still queued at once, use ``async with scope.map(xs) as ys:``
        (or call ``aclose()``).

        Args:
            items: The source of items; a sync iterable is iterated on the event loop, so
                it should not block.
            ordered: Yield results in input order (True) or as they complete (False).
            return_exceptions: Yield an item's exception instead of raising it (which
                stops the iteration and withdraws the rest).
            window: The most items pulled from the source and not yet yielded; None means
                ``4 * max_batch_size * max_concurrent_batches``.
            progress: Show a live progress bar on stderr (needs rich: the ``progress``
                extra); it works under asyncio and Trio alike.

        Returns:
            An async iterator of results (also an async context manager).

        Raises:
            TypeError: *window* is not an int.
            ValueError: *window* is below 1.
            ImportError: ``progress=True`` and rich is not installed.

        .. versionadded:: 0.1.0
        """
        if window is None:
            window = 4 * self._config.max_batch_size * self._config.max_concurrent_batches
        else:
            check_int("window", window, minimum=1)
        return MapIterator(
            self,
            items,
            ordered=ordered,
            return_exceptions=return_exceptions,
            window=window,
            progress=progress,
        )

    # -- introspection and control -------------------------------------------------------

    def statistics(self) -> BatchStatistics:
        """
        Return a frozen snapshot of the scope's counters.

        .. versionadded:: 0.1.0
        """
        return self._recorder.snapshot()

    def configure(
        self,
        *,
        max_batch_size: int | None = None,
        max_wait: float | timedelta | Literal["auto"] | None = None,
        target_latency: float | timedelta | None = None,
        max_concurrent_batches: int | None = None,
    ) -> None:
        """
        Change options of a scope, open or not; they apply from the next batch.

        Args:
            max_batch_size: New hard cap on items per batch.
            max_wait: New wait for companions (or ``"auto"``).
            target_latency: New latency target for ``max_wait="auto"``.
            max_concurrent_batches: New number of batches that may run at once.

        Raises:
            TypeError, ValueError: An option is invalid (nothing is changed).

        .. versionadded:: 0.1.0
        """
        changes: dict[str, Any] = {}
        if max_batch_size is not None:
            changes["max_batch_size"] = max_batch_size
        if max_wait is not None:
            changes["max_wait"] = max_wait
            if max_wait != "auto":
                changes["target_latency"] = None
        if target_latency is not None:
            changes["target_latency"] = target_latency
        if max_concurrent_batches is not None:
            changes["max_concurrent_batches"] = max_concurrent_batches
        self._config = attrs.evolve(self._config, **changes)
        if self._state is _OPEN or self._state is _CLOSING:
            self._executor.set_capacity(self._config.max_concurrent_batches)
            self._scheduler.wake()
