"""
Every batcher the suite measures, behind one small interface.

An implementation is opened with ``open(fn, max_batch_size=..., max_wait=..., policy=...)``,
an async context manager that yields ``submit(item) -> result``. ``fn`` is always an async
batch function (list in, list out). Each :class:`Impl` says which backends and policies it
supports and, when it cannot run here, why (a peer not installed, a backend it fails on).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from functools import cache
from typing import Any

from ._core import Record, Settings, skipped
from .references import BatchFn, Submit, open_event, open_floor, open_lean_floor, open_unbatched

__all__ = ["IMPLS", "Impl", "length_policy_available"]

Opener = Callable[..., AbstractAsyncContextManager[Submit]]


@dataclass(frozen=True)
class Impl:
    """One implementation: how to open it and where it runs."""

    name: str
    opener: Opener
    backends: frozenset[str]
    #: Policies it can run: ``fifo`` always, ``length`` for length-aware ones.
    policies: frozenset[str] = frozenset({"fifo"})
    #: A module that must be importable (a peer), or None.
    needs: str | None = None
    #: Why it cannot run under the backends it lacks.
    unsupported_note: str = ""

    def unavailable(self, backend: str, policy: str = "fifo") -> str | None:
        """None if it can be measured on *backend* with *policy*, else why not."""
        if self.needs is not None and importlib.util.find_spec(self.needs) is None:
            return f"{self.needs} is not installed"
        if backend not in self.backends:
            return self.unsupported_note or f"does not run under {backend}"
        if policy not in self.policies:
            return f"has no {policy!r} policy"
        return None

    def open(
        self, fn: BatchFn, *, max_batch_size: int, max_wait: float, policy: str = "fifo"
    ) -> AbstractAsyncContextManager[Submit]:
        """Open the implementation around *fn*; yields ``submit``."""
        return self.opener(fn, max_batch_size=max_batch_size, max_wait=max_wait, policy=policy)


@cache
def length_policy_available() -> bool:
    """Whether ``BatchScope(fn, policy="length", cost=len)`` can be constructed."""
    from batchscope import BatchScope

    try:
        BatchScope(_identity, policy="length", cost=len)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False
    return True


async def _identity(items: list[Any]) -> list[Any]:
    return items


def _ignore_policy(opener: Callable[..., AbstractAsyncContextManager[Submit]]) -> Opener:
    def open_(
        fn: BatchFn, *, max_batch_size: int, max_wait: float, policy: str = "fifo"
    ) -> AbstractAsyncContextManager[Submit]:
        return opener(fn, max_batch_size=max_batch_size, max_wait=max_wait)

    return open_


@asynccontextmanager
async def open_batchscope(
    fn: BatchFn, *, max_batch_size: int, max_wait: float, policy: str = "fifo"
) -> AsyncIterator[Submit]:
    """batchscope's BatchScope; ``policy="length"`` adds ``cost=len``."""
    from batchscope import BatchScope

    options: dict[str, Any] = {}
    if policy == "length":
        options = {"policy": "length", "cost": len}
    async with BatchScope(fn, max_batch_size=max_batch_size, max_wait=max_wait, **options) as scope:
        yield scope.submit


@asynccontextmanager
async def open_batched(
    fn: BatchFn, *, max_batch_size: int, max_wait: float, policy: str = "fifo"
) -> AsyncIterator[Submit]:
    """
    ``batched.aio.AsyncBatchProcessor`` (mixedbread-ai).

    Configured as PEERS.md says is fair: ``timeout_ms`` = max_wait; for ``length``,
    ``PriorityStrategy.LENGTH`` with ``small_batch_threshold=0`` (otherwise a single
    submit is never sorted). Its worker task is never stopped by the library; we cancel
    it on exit so that it does not outlive the loop.
    """
    from batched.aio import AsyncBatchProcessor
    from batched.types import PriorityStrategy

    options: dict[str, Any] = {}
    if policy == "length":
        options = {"priority_strategy": PriorityStrategy.LENGTH, "small_batch_threshold": 0}
    processor: Any = AsyncBatchProcessor(
        fn, batch_size=max_batch_size, timeout_ms=max_wait * 1000, **options
    )
    try:
        yield processor.__call__
    finally:
        task = processor._task
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        processor._loop = None


@asynccontextmanager
async def open_aiodataloader(
    fn: BatchFn, *, max_batch_size: int, max_wait: float, policy: str = "fifo"
) -> AsyncIterator[Submit]:
    """``aiodataloader.DataLoader`` without its cache: a batch per loop tick, no timer."""
    from aiodataloader import DataLoader

    loader: Any = DataLoader(
        fn, max_batch_size=max_batch_size, cache=False, loop=asyncio.get_running_loop()
    )

    async def submit(value: Any) -> Any:
        return await loader.load(value)

    yield submit


@asynccontextmanager
async def open_ray(
    fn: BatchFn, *, max_batch_size: int, max_wait: float, policy: str = "fifo"
) -> AsyncIterator[Submit]:
    """
    Ray Serve's ``serve.batch`` used as a plain decorator (no cluster needed).

    Ray 2.5x's batch queue looks up the enclosing deployment's ``max_ongoing_requests``
    when it starts, only to log a warning; outside a deployment that look-up raises. It
    is skipped here (the batching itself is untouched) and put back afterwards.
    """
    from ray import serve
    from ray.serve import batching

    queue: Any = getattr(batching, "_BatchQueue", None)
    check = "_warn_if_max_batch_size_exceeds_max_ongoing_requests"
    original = getattr(queue, check, None) if queue is not None else None
    if original is not None:
        setattr(queue, check, lambda self: None)
    try:
        batched_fn: Any = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=max_wait)(
            fn
        )
        yield batched_fn
    finally:
        if original is not None:
            setattr(queue, check, original)


_ASYNCIO = frozenset({"asyncio", "uvloop"})
_ALL = frozenset({"asyncio", "uvloop", "trio"})

#: Every implementation, in report order (references first).
IMPLS: dict[str, Impl] = {
    impl.name: impl
    for impl in (
        Impl(
            "floor",
            _ignore_policy(open_floor),
            _ASYNCIO,
            unsupported_note="raw asyncio futures: asyncio only",
        ),
        Impl(
            "lean-floor",
            _ignore_policy(open_lean_floor),
            _ASYNCIO,
            unsupported_note="raw asyncio futures: asyncio only",
        ),
        Impl("anyio-event", _ignore_policy(open_event), _ALL),
        Impl("unbatched", _ignore_policy(open_unbatched), _ALL),
        Impl(
            "batchscope",
            open_batchscope,
            _ALL,
            policies=frozenset({"fifo", "length"} if length_policy_available() else {"fifo"}),
        ),
        Impl(
            "batched",
            open_batched,
            _ASYNCIO,
            policies=frozenset({"fifo", "length"}),
            needs="batched",
            unsupported_note="fails under Trio (asyncio-only worker task and futures)",
        ),
        Impl(
            "aiodataloader",
            open_aiodataloader,
            _ASYNCIO,
            needs="aiodataloader",
            unsupported_note="asyncio only (binds to the asyncio loop)",
        ),
        Impl(
            "ray",
            open_ray,
            _ASYNCIO,
            needs="ray",
            unsupported_note="asyncio only (awaiting Ray objects fails under Trio)",
        ),
    )
}


def measurable(
    settings: Settings,
    scenario: str,
    backend: str,
    names: Iterable[str],
    records: list[Record],
) -> list[Impl]:
    """The implementations of *names* wanted and runnable on *backend*; a skip for each other."""
    impls: list[Impl] = []
    for name in names:
        if not settings.wants(name):
            continue
        impl = IMPLS[name]
        why = impl.unavailable(backend)
        if why:
            records.append(skipped(scenario, name, backend, why))
        else:
            impls.append(impl)
    return impls
