"""
BlockingBatchScope: the BatchScope for sync code, called from threads.

``with BlockingBatchScope(fn) as scope`` starts an event loop in a portal thread
(``anyio.from_thread.start_blocking_portal``, asyncio by default, Trio on request) and
opens a real :class:`~batchscope.BatchScope` inside it (``portal.wrap_async_context_manager``).
Each blocking ``submit`` runs ``scope.submit`` as a task of that loop and waits for it, so
calls from many threads meet in one scope and batch together — the same engine, not a
second implementation. Exceptions cross back to the calling thread unchanged.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections.abc import Callable, Hashable, Iterable, MutableMapping, Sequence
from contextlib import ExitStack
from datetime import timedelta
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, cast, final, overload

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._cache import AsyncCache
from ._config import Admission, CostMode, OnFull, Oversize, Policy, to_seconds
from ._device import Device
from ._exceptions import NoActiveScopeError, ScopeClosedError
from ._executor import BatchFunction, Collator
from ._hooks import Hooks
from ._lifecycle import ScopeState
from ._resilience import CircuitBreaker, RateLimit, Retry
from ._scope import BatchScope
from ._statistics import BatchStatistics

__all__ = ["BlockingBatchScope"]

In = TypeVar("In")
Out = TypeVar("Out")


@final
class BlockingBatchScope(Generic[In, Out]):
    """
    A :class:`~batchscope.BatchScope` for sync code: blocking, thread-safe submits.

    For Flask and Django views, thread pools and scripts. The scope runs in an event loop
    of its own in a portal thread; any number of threads may call :meth:`submit` at once,
    and their items batch together::

        with bs.BlockingBatchScope(model, max_batch_size=32) as scope:
            y = scope.submit(x)                  # from any thread
            ys = scope.submit_many([x1, x2])

    Leaving the block drains, like leaving ``async with BatchScope(...)``: queued items
    still run. If the block raises, the items still waiting fail with
    :class:`~batchscope.ScopeClosedError` and the exception propagates.

    Do not call :meth:`submit` from the batch function itself (nor from anything else
    running in the portal's event loop or its worker threads): it would wait for a batch
    that cannot start until it returns.

    Args:
        fn: The batch function, as for :class:`~batchscope.BatchScope`.
        backend: The AnyIO backend of the portal's event loop: ``"asyncio"`` or
            ``"trio"``.
        backend_options: Options for that backend, as for :func:`anyio.run` (for example
            ``{"use_uvloop": True}``).
        max_batch_size, max_wait, ...: The keyword options of
            :class:`~batchscope.BatchScope`, with the same names, defaults and meaning.

    Raises:
        TypeError, ValueError: *fn* is not callable or an option is invalid (the message
            names it).

    .. versionadded:: 0.1.0
    """

    @overload
    def __init__(
        self,
        fn: BatchFunction[In, Out],
        *,
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
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
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
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
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
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
        if backend not in ("asyncio", "trio"):
            raise ValueError(f"'backend' must be 'asyncio' or 'trio', got {backend!r}")
        # Validates fn and the options here, in the caller's thread; a BatchScope makes
        # its event-loop objects only when it opens, inside the portal. (This signature's
        # overloads already tied fn to collate; BatchScope's own need not pick one again.)
        self._scope = BatchScope[In, Out](
            cast(Any, fn),
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
            hooks=hooks,
            collate=cast(Any, collate),
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
        self._backend = backend
        self._backend_options = backend_options
        self._state = ScopeState.NEW
        self._lock = threading.Lock()
        self._stack = ExitStack()
        self._portal: BlockingPortal | None = None
        self._loop_thread: int | None = None

    def __repr__(self) -> str:
        return f"<BlockingBatchScope {self._scope!r} on {self._backend} {self._state.value}>"

    @property
    def ready(self) -> bool:
        """
        Whether the scope takes items now: open and warmed up (for health checks).

        .. versionadded:: 0.2.0
        """
        return self._scope.ready

    @property
    def scope(self) -> BatchScope[In, Out]:
        """
        The async :class:`~batchscope.BatchScope` running in the portal thread.

        Use its coroutines only from that event loop (for example through
        ``anyio.from_thread`` in the portal's own tasks); from other threads use the
        blocking methods here.

        .. versionadded:: 0.1.0
        """
        return self._scope

    # -- lifetime ------------------------------------------------------------------------

    def __enter__(self) -> BlockingBatchScope[In, Out]:
        with self._lock:
            if self._state is not ScopeState.NEW:
                raise RuntimeError("a BlockingBatchScope can be opened only once; create a new one")
            self._state = ScopeState.OPEN
        try:
            with ExitStack() as stack:
                portal = stack.enter_context(
                    start_blocking_portal(self._backend, self._backend_options)
                )
                self._loop_thread = portal.call(threading.get_ident)
                stack.enter_context(portal.wrap_async_context_manager(self._scope))
                self._portal = portal
                self._stack = stack.pop_all()
        except BaseException:
            self._state = ScopeState.CLOSED  # the portal (if it started) is stopped again
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._stack.__exit__(exc_type, exc, tb)
        finally:
            with self._lock:
                self._state = ScopeState.CLOSED
                self._portal = None

    def close(self) -> None:
        """
        Stop accepting items; those already queued still run. Idempotent.

        Submits that have not queued their item yet fail with
        :class:`~batchscope.ScopeClosedError`. Leaving the ``with`` block calls it.

        .. versionadded:: 0.1.0
        """
        portal = self._portal
        if portal is None or threading.get_ident() == self._loop_thread:
            self._scope.close()  # closed already, or we are on its own loop
            return
        try:
            self._call(portal, self._scope.close)
        except ScopeClosedError:
            pass  # closed meanwhile: nothing left to close

    # -- calls ---------------------------------------------------------------------------

    def _open_portal(self) -> BlockingPortal:
        portal = self._portal
        if portal is None:
            if self._state is ScopeState.NEW:
                raise NoActiveScopeError(
                    f"{self!r} is not open: use 'with BlockingBatchScope(fn) as scope:' "
                    f"and submit inside the block"
                )
            raise ScopeClosedError(f"{self!r} is closed: it takes no more items")
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                f"{self!r}: blocking submit() called from the portal's own event loop "
                f"thread would deadlock; in async code there, await scope.scope.submit() "
                f"instead"
            )
        return portal

    def _call(self, portal: BlockingPortal, fn: Callable[[], Any]) -> Any:
        """Run *fn* (sync or async) in the portal's loop and wait for its outcome."""
        try:
            future = portal.start_task_soon(fn)
        except RuntimeError:  # the portal stopped between our check and the call
            raise ScopeClosedError(f"{self!r} is closed: it takes no more items") from None
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            # The portal cancelled the task: the scope stopped while we waited.
            raise ScopeClosedError(f"{self!r} stopped while the call waited") from None
        except BaseException:
            if not future.done():
                # This thread was interrupted (KeyboardInterrupt): withdraw the call.
                future.cancel()
            raise

    def submit(
        self, item: In, *, priority: float = 0, timeout: float | timedelta | None = None
    ) -> Out:
        """
        Submit one item from any thread and block until its result.

        Thread-safe: items from concurrent callers batch together.

        Threads cannot use cancel scopes, so *timeout* is the blocking world's substitute
        for wrapping the call in ``anyio.fail_after``: it runs ``scope.submit`` under
        ``fail_after(timeout)`` in the portal. An item not yet dispatched when the time
        is up is withdrawn and never reaches fn; one already dispatched has its result
        dropped.

        Args:
            item: The item to pass to the batch function.
            priority: Passed on to :meth:`BatchScope.submit
                <batchscope.BatchScope.submit>`.
            timeout: Seconds (or a ``timedelta``) to wait at most; None waits as long as
                it takes.

        Returns:
            The result the batch function returned for this item.

        Raises:
            TimeoutError: *timeout* passed first (the builtin).
            NoActiveScopeError: The ``with`` block has not been entered.
            ScopeClosedError: The scope is closed or closing, or failed.
            RuntimeError: Called from the portal's own event loop thread.
            TypeError, ValueError: *timeout* is invalid.
            Exception: What fn raised for this item's batch, or returned at its
                position, unchanged (same type).

        Cancellation:
            A thread has no cancel scope; *timeout* takes its place, with the same
            effect as a cancelled :meth:`BatchScope.submit <batchscope.BatchScope.submit>`:
            before dispatch the item is withdrawn, after dispatch its result is dropped
            and the batch runs on for the others. A ``KeyboardInterrupt`` in the calling
            thread while it waits does the same, and then propagates.

        .. versionadded:: 0.1.0
        """
        deadline = None if timeout is None else to_seconds("timeout", timeout)
        portal = self._open_portal()
        scope = self._scope

        async def call() -> Out:
            with anyio.fail_after(deadline):
                return await scope.submit(item, priority=priority)

        result: Out = self._call(portal, call)
        return result

    @overload
    def submit_many(
        self,
        items: Iterable[In],
        *,
        return_exceptions: Literal[False] = False,
        timeout: float | timedelta | None = None,
    ) -> list[Out]: ...

    @overload
    def submit_many(
        self,
        items: Iterable[In],
        *,
        return_exceptions: bool,
        timeout: float | timedelta | None = None,
    ) -> list[Out | BaseException]: ...

    def submit_many(
        self,
        items: Iterable[In],
        *,
        return_exceptions: bool = False,
        timeout: float | timedelta | None = None,
    ) -> list[Out] | list[Out | BaseException]:
        """
        Submit several items from any thread and block until all their results, in order.

        Args:
            items: The items, iterated in the calling thread first; each is one submit.
            return_exceptions: With True, a failed item has its exception in its place;
                with False, the first failure is raised and the other items withdrawn.
            timeout: Seconds (or a ``timedelta``) to wait at most for all of them, as for
                :meth:`submit`; on expiry every item not yet ended is withdrawn.

        Returns:
            One result per item, in the order of *items*.

        Raises:
            TimeoutError: *timeout* passed first.
            Exception: As for :meth:`submit`.

        Cancellation:
            As for :meth:`submit`, for every item not yet ended.

        .. versionadded:: 0.1.0
        """
        deadline = None if timeout is None else to_seconds("timeout", timeout)
        values = list(items)
        portal = self._open_portal()
        scope = self._scope

        async def call() -> list[Out | BaseException]:
            with anyio.fail_after(deadline):
                return await scope.submit_many(values, return_exceptions=return_exceptions)

        results: list[Out | BaseException] = self._call(portal, call)
        return results

    # -- introspection and control -------------------------------------------------------

    def statistics(self) -> BatchStatistics:
        """
        Return a frozen snapshot of the scope's counters (taken in the portal while open).

        .. versionadded:: 0.1.0
        """
        portal = self._portal
        if portal is not None and threading.get_ident() != self._loop_thread:
            try:
                snapshot: BatchStatistics = self._call(portal, self._scope.statistics)
            except ScopeClosedError:
                pass  # the portal stopped meanwhile; the counters are final now
            else:
                return snapshot
        return self._scope.statistics()

    def configure(
        self,
        *,
        max_batch_size: int | Literal["auto"] | None = None,
        max_wait: float | timedelta | Literal["auto"] | None = None,
        target_latency: float | timedelta | None = None,
        max_concurrent_batches: int | None = None,
    ) -> None:
        """
        Change options of the scope; they apply from the next batch.

        The same options as :meth:`BatchScope.configure <batchscope.BatchScope.configure>`.

        Args:
            max_batch_size: New hard cap on items per batch (or ``"auto"``).
            max_wait: New wait for companions (or ``"auto"``).
            target_latency: New latency target for ``max_wait="auto"`` and
                ``max_batch_size="auto"``.
            max_concurrent_batches: New number of batches that may run at once.

        Raises:
            TypeError, ValueError: An option is invalid (nothing is changed).

        .. versionadded:: 0.1.0
        """
        change = functools.partial(
            self._scope.configure,
            max_batch_size=max_batch_size,
            max_wait=max_wait,
            target_latency=target_latency,
            max_concurrent_batches=max_concurrent_batches,
        )
        portal = self._portal
        if portal is None or threading.get_ident() == self._loop_thread:
            change()
        else:
            try:
                self._call(portal, change)
            except ScopeClosedError:
                change()  # the portal stopped meanwhile: the scope is closed
