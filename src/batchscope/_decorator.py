"""
The ``@batch`` decorator: a batch function you call one item at a time.

``batch(max_batch_size=..., ...)`` turns ``fn(items) -> results`` into a :class:`BatchedFunction`.
``async with embed.serving():`` opens a :class:`~batchscope.BatchScope` over *fn* with
those options, and while it is open ``await embed(x)`` is ``scope.submit(x)`` — the same
engine, not a second one. The open scope is an attribute of the batched function, not a
context variable, so every task sees it, including tasks started elsewhere.

On a method (a function whose first parameter is ``self``) the decorator gives a
:class:`BatchedMethod`, a descriptor: ``model.embed`` is a :class:`BatchedFunction` of its
own for each instance, so every instance has its own scope and batches never mix
instances. Per-instance state is kept in a table keyed by ``id()`` and cleaned up by
``weakref.finalize``, and it refers to the instance only weakly (strongly while serving),
so decorating a method never keeps instances alive, and instances need not be hashable.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    MutableMapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Any, Generic, Literal, TypeVar, cast, final, overload

from ._cache import AsyncCache, namespaced
from ._config import Admission, CostMode, OnFull, Oversize, Policy
from ._device import Device
from ._exceptions import NoActiveScopeError
from ._executor import Collator
from ._hooks import Hooks
from ._resilience import CircuitBreaker, RateLimit, Retry
from ._scope import BatchScope
from ._statistics import BatchStatistics

__all__ = ["BatchedFunction", "BatchedMethod", "batch"]

In = TypeVar("In")
Out = TypeVar("Out")
T = TypeVar("T")

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _copy_metadata(wrapper: object, fn: Callable[..., Any]) -> None:
    """What ``functools.update_wrapper`` does, for a wrapper that is not a function."""
    for name in functools.WRAPPER_ASSIGNMENTS:
        try:
            value = getattr(fn, name)
        except AttributeError:
            continue
        setattr(wrapper, name, value)
    vars(wrapper).update(getattr(fn, "__dict__", {}))
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]


def _is_method(fn: Callable[..., Any]) -> bool:
    """Whether *fn* takes two required positional parameters: ``(self, items)``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: call as fn(items)
        return False
    required = [
        p
        for p in signature.parameters.values()
        if p.kind in _POSITIONAL and p.default is inspect.Parameter.empty
    ]
    return len(required) >= 2


@final
class BatchedFunction(Generic[In, Out]):
    """
    A batch function called one item at a time, through a scope opened by :meth:`serving`.

    Made by :func:`batch`; on a method, ``instance.method`` is one of these per instance.
    It carries the wrapped function's ``__name__``, ``__qualname__``, ``__doc__`` and
    ``__wrapped__``::

        @bs.batch(max_batch_size=32)
        async def embed(texts: list[str]) -> list[Vector]: ...

        async with embed.serving():
            v = await embed("hello")

    .. versionadded:: 0.1.0
    """

    __name__: str
    __qualname__: str
    __wrapped__: Callable[..., Any]

    def __init__(
        self,
        fn: Callable[..., Any],
        options: dict[str, Any],
        *,
        instance: weakref.ref[Any] | None = None,
    ) -> None:
        _copy_metadata(self, fn)
        self._fn = fn
        self._options = options
        self._instance = instance
        self._serving = False
        self._scope: BatchScope[In, Out] | None = None
        self._last_statistics: BatchStatistics | None = None

    def __repr__(self) -> str:
        state = "serving" if self._serving else "not serving"
        return f"<BatchedFunction {self._display_name()} {state}>"

    def _display_name(self) -> str:
        if self._instance is None:
            return str(getattr(self._fn, "__name__", None) or repr(self._fn))
        return str(getattr(self._fn, "__qualname__", None) or repr(self._fn))

    def _how_to_serve(self) -> str:
        name = getattr(self._fn, "__name__", "fn")
        if self._instance is None:
            return f"'async with {name}.serving(): ...'"
        return f"'async with instance.{name}.serving(): ...' on the instance you call"

    def _target(self) -> Callable[[list[In]], Any]:
        """The function the scope calls: *fn*, or *fn* bound to the instance."""
        if self._instance is None:
            return self._fn
        instance = self._instance()
        if instance is None:
            raise ReferenceError(f"the instance of {self._display_name()} no longer exists")
        # A partial of an async def is still seen as async, so it runs as a task.
        return functools.partial(self._fn, instance)

    # -- the scope ----------------------------------------------------------------------

    def serving(self) -> AbstractAsyncContextManager[BatchScope[In, Out]]:
        """
        Open the scope that calls go through, for the duration of an ``async with`` block.

        A new :class:`~batchscope.BatchScope` is opened with the decorator's options each
        time; it is visible to every task while open. Leaving the block drains it like
        leaving ``async with BatchScope(...)`` does; an exception or cancellation in the
        block fails the calls still waiting with :class:`~batchscope.ScopeClosedError`.

        Returns:
            An async context manager that yields the open :class:`~batchscope.BatchScope`.

        Raises:
            RuntimeError: This function (on this instance) is already serving.

        Cancellation:
            As for ``async with BatchScope(...)``: a cancellation while opening leaves
            nothing running; inside the block it fails the waiting calls and stops
            everything before the block exits. Either way the function stops serving and
            can be served again.

        .. versionadded:: 0.1.0
        """
        return self._serve()

    @asynccontextmanager
    async def _serve(self) -> AsyncGenerator[BatchScope[In, Out], None]:
        if self._serving:
            raise RuntimeError(
                f"{self._display_name()} is already serving: it has one scope at a time; "
                f"call it inside the open {self._how_to_serve()} block"
            )
        target = self._target()  # holds the instance (if any) alive while serving
        scope = BatchScope[In, Out](target, **self._options)
        self._serving = True
        try:
            async with scope:
                self._scope = scope
                yield scope
        finally:
            self._scope = None
            self._serving = False
            # Keep numbers, not the scope: the scope holds fn and, for a method, the
            # instance, which must not outlive its users.
            self._last_statistics = scope.statistics()

    @property
    def scope(self) -> BatchScope[In, Out]:
        """
        The open scope (for ``map``, ``configure``, ``statistics``).

        Raises:
            NoActiveScopeError: The function is not serving.

        .. versionadded:: 0.1.0
        """
        scope = self._scope
        if scope is None:
            raise self._not_serving()
        return scope

    def _not_serving(self) -> NoActiveScopeError:
        return NoActiveScopeError(
            f"{self._display_name()} is not serving: open its scope first with "
            f"{self._how_to_serve()} and call it inside the block"
        )

    def statistics(self) -> BatchStatistics:
        """
        Return the statistics of the open scope, or of the last one once it has exited.

        Before the first :meth:`serving`, every counter is zero.

        .. versionadded:: 0.1.0
        """
        scope = self._scope
        if scope is not None:
            return scope.statistics()
        if self._last_statistics is not None:
            return self._last_statistics
        return BatchScope[In, Out](self._fn, **self._options).statistics()

    # -- calls --------------------------------------------------------------------------

    async def __call__(self, item: In, *, priority: float = 0) -> Out:
        """
        Submit one item to the open scope and wait for its result.

        Args:
            item: The item to pass to the batch function.
            priority: Passed on to :meth:`BatchScope.submit <batchscope.BatchScope.submit>`.

        Returns:
            The batch function's result for this item.

        Raises:
            NoActiveScopeError: The function is not serving.
            ScopeClosedError: The scope is closing (the ``serving()`` block is being
                left), or it failed.
            Exception: As for :meth:`BatchScope.submit <batchscope.BatchScope.submit>`:
                what fn raised or returned for this item, unchanged.

        Cancellation:
            As for :meth:`BatchScope.submit <batchscope.BatchScope.submit>`: before
            dispatch the item is withdrawn and never reaches fn; after dispatch the batch
            runs on for the others and this result is dropped.

        .. versionadded:: 0.1.0
        """
        scope = self._scope
        if scope is None:
            raise self._not_serving()
        return await scope.submit(item, priority=priority)

    @overload
    async def many(
        self, items: Iterable[In], *, return_exceptions: Literal[False] = False
    ) -> list[Out]: ...

    @overload
    async def many(
        self, items: Iterable[In], *, return_exceptions: bool
    ) -> list[Out | BaseException]: ...

    async def many(
        self, items: Iterable[In], *, return_exceptions: bool = False
    ) -> list[Out] | list[Out | BaseException]:
        """
        Submit several items to the open scope and wait for their results, in input order.

        Args:
            items: The items; each is one submit (they may land in different batches).
            return_exceptions: With True, a failed item has its exception in its place;
                with False, the first failure is raised and the other items withdrawn.

        Returns:
            One result per item, in the order of *items*.

        Raises:
            NoActiveScopeError: The function is not serving.
            Exception: As for :meth:`BatchScope.submit_many
                <batchscope.BatchScope.submit_many>`.

        Cancellation:
            Every item not yet ended is withdrawn (not yet dispatched) or its result
            dropped (dispatched), as for :meth:`__call__`.

        .. versionadded:: 0.1.0
        """
        scope = self._scope
        if scope is None:
            raise self._not_serving()
        return await scope.submit_many(items, return_exceptions=return_exceptions)


@final
class BatchedMethod(Generic[T, In, Out]):
    """
    A batched method: a descriptor giving each instance its own :class:`BatchedFunction`.

    ::

        class Model:
            @bs.batch(max_batch_size=32)
            async def embed(self, texts: list[str]) -> list[Vector]: ...

        model = Model()
        async with model.embed.serving():
            v = await model.embed("hello")

    Two instances have independent scopes: serving one does not serve the other, and a
    batch holds items of one instance only. The per-instance state refers to the instance
    weakly and goes away with it; the instance must support weak references (any class
    without ``__slots__``, or with ``"__weakref__"`` in them).

    .. versionadded:: 0.1.0
    """

    __name__: str
    __qualname__: str
    __wrapped__: Callable[..., Any]

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        _copy_metadata(self, fn)
        self._fn = fn
        self._options = options
        #: Per live instance (by id): a weak reference to it and its batched function.
        self._bound: dict[int, tuple[weakref.ref[Any], BatchedFunction[In, Out]]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<BatchedMethod {getattr(self._fn, '__qualname__', self._fn)!r}>"

    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None
    ) -> BatchedMethod[T, In, Out]: ...

    @overload
    def __get__(self, instance: T, owner: type[Any] | None = None) -> BatchedFunction[In, Out]: ...

    def __get__(
        self, instance: T | None, owner: type[Any] | None = None
    ) -> BatchedMethod[T, In, Out] | BatchedFunction[In, Out]:
        if instance is None:
            return self
        key = id(instance)
        entry = self._bound.get(key)
        if entry is not None and entry[0]() is instance:
            return entry[1]
        with self._lock:
            entry = self._bound.get(key)
            if entry is None or entry[0]() is not instance:
                try:
                    ref = weakref.ref(instance)
                except TypeError:
                    raise TypeError(
                        f"{type(instance).__name__} instances must support weak references "
                        f"to use the batched method {self._fn.__name__!r}: add '__weakref__' "
                        f"to __slots__"
                    ) from None
                options = self._options
                if options.get("cache") is not None:
                    # One cache for the method, but entries of their own per instance:
                    # instances compute differently, so never answer one with another's.
                    options = {**options, "cache": namespaced(options["cache"], object())}
                entry = (ref, BatchedFunction[In, Out](self._fn, options, instance=ref))
                self._bound[key] = entry
                # Runs while the instance is being freed, before its id can be reused.
                weakref.finalize(instance, self._bound.pop, key, None).atexit = False
            return entry[1]


_AsyncFn = Callable[[list[In]], Awaitable[Sequence[Out | Exception]]]
_SyncFn = Callable[[list[In]], Sequence[Out | Exception]]
_AsyncMethod = Callable[[T, list[In]], Awaitable[Sequence[Out | Exception]]]
_SyncMethod = Callable[[T, list[In]], Sequence[Out | Exception]]


class _BatchDecorator:
    """What ``batch(...)`` returns: applied to a function, it batches it."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options

    @overload
    def __call__(self, fn: _AsyncFn[In, Out]) -> BatchedFunction[In, Out]: ...

    @overload
    def __call__(self, fn: _SyncFn[In, Out]) -> BatchedFunction[In, Out]: ...

    @overload
    def __call__(self, fn: _AsyncMethod[T, In, Out]) -> BatchedMethod[T, In, Out]: ...

    @overload
    def __call__(self, fn: _SyncMethod[T, In, Out]) -> BatchedMethod[T, In, Out]: ...

    @overload  # a collated fn takes and returns whatever its collator makes
    def __call__(self, fn: Callable[[Any], Any]) -> BatchedFunction[Any, Any]: ...

    @overload
    def __call__(self, fn: Callable[[T, Any], Any]) -> BatchedMethod[T, Any, Any]: ...

    def __call__(
        self, fn: Callable[..., Any]
    ) -> BatchedFunction[Any, Any] | BatchedMethod[Any, Any, Any]:
        if not callable(fn):
            raise TypeError(f"@batch(...) must decorate a callable, not {type(fn).__name__}")
        # Validate the options now, at decoration, with messages naming the option.
        BatchScope[Any, Any](cast(Any, fn), **self._options)
        if _is_method(fn):
            return BatchedMethod[Any, Any, Any](fn, self._options)
        return BatchedFunction[Any, Any](fn, self._options)


def batch(
    *,
    max_batch_size: int | Literal["auto"] = 32,
    max_wait: float | timedelta | Literal["auto"] = 0.005,
    target_latency: float | timedelta | None = None,
    max_queue_size: int = 10_000,
    on_full: OnFull = "wait",
    max_concurrent_batches: int = 1,
    cost: Callable[[Any], float] | None = None,
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
    key: Callable[[Any], Hashable] | None = None,
    hooks: Hooks | Sequence[Hooks] | None = None,
    collate: Collator[Any, Any] | None = None,
    device: Device | None = None,
    weight: float = 1.0,
    partition: Callable[[Any], Hashable] | None = None,
    admission: Admission = "queue",
    batch_size_ceiling: int = 256,
    oom_errors: type[Exception] | tuple[type[Exception], ...] = (),
    preferred_batch_sizes: Sequence[int] | None = None,
    warmup: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    capture_context: bool = False,
) -> _BatchDecorator:
    """
    Turn a batch function into one you call with one item at a time.

    ``fn(items) -> results`` (sync or ``async def``, or a method ``(self, items)``)
    becomes a :class:`BatchedFunction` (a :class:`BatchedMethod` for a method)::

        @bs.batch(max_batch_size=32, max_wait=0.005)
        async def embed(texts: list[str]) -> list[Vector]: ...

        async with embed.serving():          # opens the BatchScope calls go through
            v = await embed("hello")
            vs = await embed.many(["a", "b"])

    Calling it with no open ``serving()`` raises :class:`~batchscope.NoActiveScopeError`.

    Args:
        max_batch_size, max_wait, ...: The keyword options of
            :class:`~batchscope.BatchScope`, with the same names, defaults and meaning,
            used for every scope :meth:`~BatchedFunction.serving` opens.

    Returns:
        A decorator.

    Raises:
        TypeError, ValueError: When the decorator is applied: an option is invalid or
            unknown (the message names it), or the decorated object is not callable.

    .. versionadded:: 0.1.0
    """
    return _BatchDecorator(
        {
            "max_batch_size": max_batch_size,
            "max_wait": max_wait,
            "target_latency": target_latency,
            "max_queue_size": max_queue_size,
            "on_full": on_full,
            "max_concurrent_batches": max_concurrent_batches,
            "cost": cost,
            "max_batch_cost": max_batch_cost,
            "cost_mode": cost_mode,
            "oversize": oversize,
            "policy": policy,
            "aging": aging,
            "batch_timeout": batch_timeout,
            "isolate_failures": isolate_failures,
            "retry": retry,
            "circuit_breaker": circuit_breaker,
            "rate_limit": rate_limit,
            "cache": cache,
            "key": key,
            "hooks": hooks,
            "collate": collate,
            "device": device,
            "weight": weight,
            "partition": partition,
            "admission": admission,
            "batch_size_ceiling": batch_size_ceiling,
            "oom_errors": oom_errors,
            "preferred_batch_sizes": preferred_batch_sizes,
            "warmup": warmup,
            "capture_context": capture_context,
        }
    )
