"""
BatchScope: the public object, its lifetime, and the caller's side of every item.

``async with BatchScope(fn) as scope`` opens a task group holding the scheduler task and,
later, one task per running batch. A caller's ``submit`` is admitted (room in the queue),
queued on the memory channel, and parks on its item's completion; if the caller leaves
first, its item is withdrawn (before dispatch) or abandoned (after). Leaving the block
normally drains; leaving it with an exception fails everything still waiting with
``ScopeClosedError`` and cancels the rest.

This module holds the documented entry points; how the engine is built from the options,
and how the scope opens (the parts wired, the task group) and closes, is ``_wiring``.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    Callable,
    Hashable,
    Iterable,
    MutableMapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any, Generic, Literal, TypeVar, cast, final, overload

import attrs
from anyio import AsyncContextManagerMixin

from ._cache import AsyncCache
from ._config import Admission, CostMode, OnFull, Oversize, Policy, ScopeConfig, check_int
from ._device import Device
from ._durations import check_priority
from ._engine import Engine
from ._executor import BatchFunction, Collator
from ._hooks import Hooks
from ._items import WaitedItem
from ._lifecycle import ScopeState
from ._map import MapIterator, gather
from ._resilience import CircuitBreaker, RateLimit, Retry
from ._statistics import BatchStatistics
from ._streaming import OutputStream, StreamFunction, collect
from ._wiring import check_function, close_engine, new_engine, opened

__all__ = ["BatchScope"]

_NOT_FOR_STREAMS = (
    "{}() does not take a streaming batch function (an async generator): "
    "use stream() or submit() per item"
)

In = TypeVar("In")
Out = TypeVar("Out")

_OPEN = ScopeState.OPEN


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
        max_batch_size: Hard cap on items per batch, or ``"auto"``: the largest batch
            whose predicted run time (the scope's fitted model of batch run time) plus
            the wait for companions meets ``target_latency``, recomputed as the model
            learns, at least 1 and at most ``batch_size_ceiling``.
        max_wait: Seconds (or a ``timedelta``) the oldest pending item waits at most for
            companions before a partial batch goes. A full batch goes at once. ``"auto"``
            waits as long as a full batch still finishes within ``target_latency``, by
            the scope's fitted model of batch run time.
        target_latency: With ``max_wait="auto"`` or ``max_batch_size="auto"``, the
            end-to-end latency to aim for (with both, a batch gets half of it).
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
        device: A :class:`Device` shared with other scopes (two models on one GPU): its
            slots go to the scopes' due batches by weighted deficit round robin on cost
            (``max_concurrent_batches`` still bounds this scope's own batches).
        weight: With ``device``, this scope's share of the device relative to the
            others' (0.01 to 100): while all are backlogged, shares of the device's work
            follow the weights.
        partition: ``item -> hashable`` partition key (say ``lambda r: r.model``): only
            items of one partition share a batch, and fn reads the key as
            ``current_batch().partition``. Each partition has its own ``max_wait`` timer
            and cost budget; partitions share the executor slots, the most overdue first.
            An error in it fails that item with ``ValueError`` (an unhashable key:
            ``TypeError``). Statistics per partition: ``statistics().partitions``.
            (Added in 0.2.0.)
        admission: ``"queue"``: every submit there is room for is queued.
            ``"deadline"``: a submit whose caller has a deadline (``anyio.fail_after``
            around it) is refused at once with :class:`DeadlineUnmeetableError` (its
            ``retry_after`` says when to try again) when the backlog ahead of it and the
            fitted model of batch run time say it cannot finish in time, instead of
            queueing work that would be thrown away. The predicted finish must leave
            a fifth of the caller's time to spare (and how late timers fire), so the
            callers it admits under sustained overload still finish in time. An idle
            scope (nothing queued or running) admits every caller: the run times that
            could refuse it are corrected only by a new batch.
        batch_size_ceiling: With ``max_batch_size="auto"``, the largest batch it may
            choose.
        oom_errors: Exception classes meaning "out of memory" (``MemoryError``,
            ``torch.cuda.OutOfMemoryError``): a batch whose call raises one is split in
            halves and each half retried (an item alone that still raises fails with
            it), and the batch size cap drops to half, then grows back by a quarter
            after every few batches that succeed at the cap.
        preferred_batch_sizes: Batch sizes fn runs best at (say ``(8, 16, 32)``, the
            shapes a compiled model or CUDA graph was built for), each at most
            ``max_batch_size``. A batch leaves at once when the largest is pending (it
            is then the most a batch holds); when the oldest item's ``max_wait`` is up,
            the batch is cut to the largest preferred size not above what is pending
            (all of it when fewer than the smallest), the rest waits for the next
            batch. A caller's deadline or the drain releases what is due, uncut. Give
            the same sizes to ``PadCollator(batch_sizes=...)`` to pad every batch to one
            of them. (Added in 0.2.0.)
        warmup: Sample items (or a callable returning them): before ``async with``
            returns, fn runs once on them at each preferred batch size (at
            ``max_batch_size`` without them), samples repeated to fill it; the results
            are dropped and the run times seed the scope's run-time model. Warmup calls
            count in no statistics. Any error fails the ``async with`` with
            :class:`WarmupError`; :attr:`ready` turns True once it is done.
        capture_context: Capture each caller's context (a ``contextvars.Context``, which
            holds the OpenTelemetry context too) when its item is queued, so that
            ``current_batch().contexts`` gives fn each row's context and tracing hooks
            link each batch to its callers' spans. Off by default (a copy is cheap, ~20 ns, but
            keeps each caller's context alive while its item waits); a hook whose
            ``captures_context`` is true (such as
            :class:`batchscope.metrics.OpenTelemetryTracingHooks`) turns it on.
            (Added in 0.2.0.)

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
        max_batch_size: int | Literal["auto"] = 32,
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
        device: Device | None = None,
        weight: float = 1.0,
        partition: Callable[[In], Hashable] | None = None,
        admission: Admission = "queue",
        batch_size_ceiling: int = 256,
        oom_errors: type[Exception] | tuple[type[Exception], ...] = (),
        preferred_batch_sizes: Sequence[int] | None = None,
        warmup: Sequence[In] | Callable[[], Sequence[In]] | None = None,
        capture_context: bool = False,
    ) -> None: ...

    @overload
    def __init__(
        self,
        fn: StreamFunction[In, Out],
        *,
        max_batch_size: int | Literal["auto"] = 32,
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
        device: Device | None = None,
        weight: float = 1.0,
        partition: Callable[[In], Hashable] | None = None,
        admission: Admission = "queue",
        batch_size_ceiling: int = 256,
        oom_errors: type[Exception] | tuple[type[Exception], ...] = (),
        preferred_batch_sizes: Sequence[int] | None = None,
        warmup: Sequence[In] | Callable[[], Sequence[In]] | None = None,
        capture_context: bool = False,
    ) -> None: ...

    @overload
    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        max_batch_size: int | Literal["auto"] = 32,
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
        device: Device | None = None,
        weight: float = 1.0,
        partition: Callable[[In], Hashable] | None = None,
        admission: Admission = "queue",
        batch_size_ceiling: int = 256,
        oom_errors: type[Exception] | tuple[type[Exception], ...] = (),
        preferred_batch_sizes: Sequence[int] | None = None,
        warmup: Sequence[In] | Callable[[], Sequence[In]] | None = None,
        capture_context: bool = False,
    ) -> None: ...

    def __init__(
        self,
        fn: BatchFunction[In, Out] | Callable[[Any], Any],
        *,
        max_batch_size: int | Literal["auto"] = 32,
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
        device: Device | None = None,
        weight: float = 1.0,
        partition: Callable[[In], Hashable] | None = None,
        admission: Admission = "queue",
        batch_size_ceiling: int = 256,
        oom_errors: type[Exception] | tuple[type[Exception], ...] = (),
        preferred_batch_sizes: Sequence[int] | None = None,
        warmup: Sequence[In] | Callable[[], Sequence[In]] | None = None,
        capture_context: bool = False,
    ) -> None:
        check_function(fn, collate)
        self._fn = fn
        self._collate = collate
        config = ScopeConfig(
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
            device=device,
            weight=weight,
            partition=partition,
            admission=admission,
            batch_size_ceiling=batch_size_ceiling,
            oom_errors=oom_errors,
            preferred_batch_sizes=preferred_batch_sizes,
            warmup=warmup,
            capture_context=capture_context,
        )
        #: The state the lower layers share, and the caller's side of every item.
        self._engine: Engine[In, Out] = new_engine(fn, collate, config, hooks)

    def __repr__(self) -> str:
        return self._engine.describe()

    @property
    def config(self) -> ScopeConfig:
        """The options in force (a frozen :class:`ScopeConfig`)."""
        return self._engine.config

    @property
    def pending(self) -> int:
        """
        Items queued and not yet dispatched, now: ``statistics().pending`` without the
        snapshot (a cheap gauge for exporters that scrape often).

        .. versionadded:: 0.2.0
        """
        return self._engine.recorder.pending

    @property
    def ready(self) -> bool:
        """
        Whether the scope takes items now: open, its ``warmup`` done (for health checks:
        False before ``async with`` has returned, and again once it is closing).

        .. versionadded:: 0.2.0
        """
        return self._engine.state is ScopeState.OPEN

    # -- lifetime ------------------------------------------------------------------------

    def __asynccontextmanager__(self) -> AbstractAsyncContextManager[BatchScope[In, Out]]:
        return opened(self, self._engine, self._fn, self._collate)

    def close(self) -> None:
        """
        Stop accepting items; those already queued still run.

        Submits that have not queued their item yet (including callers waiting for room
        in the queue) fail with :class:`ScopeClosedError`. Idempotent. Leaving ``async
        with`` normally calls it and then waits for the queue to drain.

        .. versionadded:: 0.1.0
        """
        close_engine(self._engine)

    # -- the caller's side ---------------------------------------------------------------

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
            The result the batch function returned for this item; with a streaming fn
            (an async generator), the list of the item's outputs (see :meth:`stream`).

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
        if type(priority) is not int:  # an int is valid: no call (the per-item path)
            check_priority(priority)
        engine = self._engine
        if engine.plain and engine.state is _OPEN:
            # engine.price(), admit(), queue() and wait() inline, for a scope with none of
            # the options they check per item but a cost function (the per-item path).
            recorder = engine.recorder
            if engine.priced:
                cost = engine.price(item, True)
            else:
                recorder.submitted += 1
                cost = 1.0
            room = engine.room
            if room.free:  # room.take_nowait(), inline
                room.free -= 1
            else:
                await engine.wait_for_room(cost)
            waited: WaitedItem[In, Out] = engine.item_type(
                item, priority, cost, engine.clock(), engine.deadline(), engine.new_signal()
            )
            recorder.pending += 1
            engine.send.send_nowait(waited)
            try:
                await waited.park()
            except BaseException:
                engine.leave(waited)
                raise
            if waited.error is None:  # waited.outcome(), inline for a result
                return waited.result  # type: ignore[return-value]
            return waited.outcome()
        if engine.streaming:
            return cast(Out, await collect(engine, item, priority))
        if engine.front is not None:
            return await engine.front.submit(item, priority)
        # engine.admit() inline, for the common case of room in the queue (the per-item
        # path).
        cost = engine.price(item, True)
        if not engine.room.take_nowait():
            await engine.wait_for_room(cost)
        waited = engine.item_type(
            item, priority, cost, engine.clock(), engine.deadline(), engine.new_signal()
        )
        engine.queue(waited)
        return await engine.wait(waited)

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
            TypeError: fn is a streaming batch function (use :meth:`stream` or
                :meth:`submit` per item).
            Exception: The first exception of an item, with ``return_exceptions=False``.

        Cancellation:
            Every item not yet ended is withdrawn or abandoned as in :meth:`submit`.
            Every item counts as ``cancelled``, even one that had ended (its outcome is
            never handed out), except one refused before it was queued (``rejected``).

        .. versionadded:: 0.1.0
        """
        if self._engine.streaming:
            raise TypeError(_NOT_FOR_STREAMS.format("submit_many"))
        return await gather(self._engine, items, return_exceptions=return_exceptions)

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
                ``4 * max_batch_size * max_concurrent_batches`` (with
                ``max_batch_size="auto"``, its ceiling).
            progress: Show a live progress bar on stderr (needs rich: the ``progress``
                extra); it works under asyncio and Trio alike.

        Returns:
            An async iterator of results (also an async context manager).

        Raises:
            TypeError: *window* is not an int, or fn is a streaming batch function.
            ValueError: *window* is below 1.
            ImportError: ``progress=True`` and rich is not installed.

        .. versionadded:: 0.1.0
        """
        if self._engine.streaming:
            raise TypeError(_NOT_FOR_STREAMS.format("map"))
        if window is None:
            config = self._engine.config
            window = 4 * config.batch_size_bound * config.max_concurrent_batches
        else:
            check_int("window", window, minimum=1)
        return MapIterator(
            self._engine,
            items,
            ordered=ordered,
            return_exceptions=return_exceptions,
            window=window,
            progress=progress,
        )

    def stream(self, item: In, *, priority: float = 0) -> OutputStream[Out]:
        """
        Submit one item to a streaming batch function and iterate its outputs as they come.

        fn must be an async generator function: each step yields one entry per row, a
        value, :data:`END` (the row ended) or an ``Exception`` (the row fails alone).
        ``async for out in scope.stream(x)`` gets this item's values in order, then
        stops when its row ends (or raises its error). See the "Streaming" page.

        The item is submitted when iteration starts; leaving the loop (``break``), the
        ``async with scope.stream(x) as outs:`` block, or being cancelled ends the row at
        once: fn sees ``current_batch().alive`` False for it, and once every row of a
        batch is gone its generator is closed.

        Args:
            item: The item to pass to the batch function.
            priority: As for :meth:`submit`.

        Returns:
            An async iterator of the item's outputs (also an async context manager).

        Raises:
            TypeError: fn is not an async generator function, or *priority* is not a
                number (``ValueError``: not finite).

        .. versionadded:: 0.2.0
        """
        check_priority(priority)
        if not self._engine.streaming:
            raise TypeError(
                f"stream() needs a streaming batch function (an async generator function); "
                f"{self._engine.fn_name} is not one: use submit()"
            )
        return OutputStream(self._engine, item, priority)

    # -- introspection and control -------------------------------------------------------

    def statistics(self) -> BatchStatistics:
        """
        Return a frozen snapshot of the scope's counters.

        .. versionadded:: 0.1.0
        """
        engine = self._engine
        recorder = engine.recorder
        if recorder.opened_at is None or recorder.closed_at is not None:
            return recorder.snapshot()
        return recorder.snapshot(engine.clock())

    def configure(
        self,
        *,
        max_batch_size: int | Literal["auto"] | None = None,
        max_wait: float | timedelta | Literal["auto"] | None = None,
        target_latency: float | timedelta | None = None,
        max_concurrent_batches: int | None = None,
    ) -> None:
        """
        Change options of a scope, open or not; they apply from the next batch.

        Args:
            max_batch_size: New hard cap on items per batch (or ``"auto"``).
            max_wait: New wait for companions (or ``"auto"``).
            target_latency: New latency target for ``max_wait="auto"`` and
                ``max_batch_size="auto"``; dropped when neither stays ``"auto"``.
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
        engine = self._engine
        if target_latency is not None:
            changes["target_latency"] = target_latency
        elif "auto" not in (
            changes.get("max_wait", engine.config.max_wait),
            changes.get("max_batch_size", engine.config.max_batch_size),
        ):
            changes["target_latency"] = None
        if max_concurrent_batches is not None:
            changes["max_concurrent_batches"] = max_concurrent_batches
        engine.config = attrs.evolve(engine.config, **changes)
        engine.sizer.configured(engine.config)
        if engine.state is ScopeState.OPEN or engine.state is ScopeState.CLOSING:
            engine.executor.set_capacity(engine.config.max_concurrent_batches)
            engine.scheduler.wake()
