"""
How a caller parks until its item ends, and the running loop's clock: per event loop.

``submit`` parks its caller on a per-item completion. ``anyio.Event`` would do, but it is
the largest single cost of the per-item path (an event object wrapping the loop's own
event, a future per wait, a look-up of the running backend on every call), so a scope
asks once, when it opens, which event loop runs it and picks the lightest completion that
gives the same guarantee (woken exactly once, cancellable, a checkpoint):

* asyncio and every asyncio-compatible loop (uvloop): a future of the running loop,
  made by ``loop.create_future()``; the loop comes from ``anyio.lowlevel.current_token()``,
  so nothing here imports asyncio. The loop's ``time`` is the clock; the caller's
  deadline is AnyIO's, read with the loop bound once (``_asyncio``, imported only then).
* Trio: the caller's task parks with ``trio.lowlevel.wait_task_rescheduled`` and is
  rescheduled when its item ends; the caller's deadline is Trio's, read directly
  (``_trio``, imported only when Trio runs the scope).
* Anything else: one ``anyio.Event`` per item.

The scheduler and the executor never see the difference: they end items through
``Item.notify``, and every clock and deadline they read is AnyIO's.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import anyio
import anyio.lowlevel
import attrs

from ._items import WaitedItem

__all__ = ["EventItem", "FutureItem", "LoopCalls", "loop_calls"]

In = TypeVar("In")
Out = TypeVar("Out")


class FutureItem(WaitedItem[In, Out]):
    """An item whose ``signal`` is a future of the running asyncio-compatible loop."""

    __slots__ = ()

    def park(self) -> Awaitable[object]:
        # Cancelling the parked task cancels this future (it is this caller's alone).
        return self.signal  # type: ignore[no-any-return]

    def _wake(self) -> None:
        future = self.signal
        if not future.done():  # done: cancelled, its caller gone
            future.set_result(None)

    def notify(self) -> None:  # _wake() inline, then the followers (the per-item path)
        future = self.signal
        if not future.done():
            future.set_result(None)
        if self.followers is not None:
            self._wake_followers()


class EventItem(WaitedItem[In, Out]):
    """An item whose ``signal`` is an ``anyio.Event`` (any other backend)."""

    __slots__ = ()

    def park(self) -> Awaitable[object]:
        return self.signal.wait()  # type: ignore[no-any-return]

    def _wake(self) -> None:
        self.signal.set()


@attrs.frozen
class LoopCalls:
    """What a scope asks of its event loop on the per-item path, found once at open."""

    #: The loop's clock (``anyio.current_time()``, without finding the backend each time).
    clock: Callable[[], float]
    #: The calling task's effective deadline (``anyio.current_effective_deadline()``).
    deadline: Callable[[], float]
    #: The kind of item ``submit`` makes: how its caller parks.
    item_type: type[WaitedItem[Any, Any]]
    #: Makes a new item's ``signal``.
    new_signal: Callable[[], object]


def _no_signal() -> None:
    return None


def anyio_get_async_backend() -> Callable[[], Any] | None:
    """
    AnyIO's private ``get_async_backend``, or None if this AnyIO has moved it.

    One of the two places batchscope reaches into AnyIO's internals (the other is
    ``_asyncio._anyio_task_states``, the cancel-scope walk under asyncio, held by
    ``tests/test_deadline_reader.py``): the backend's own ``current_time`` and
    ``current_effective_deadline``, bound once per scope, skip the backend look-up that the
    public functions repeat on every call. Without it the public functions are used (same
    values, slower). ``tests/test_completion.py`` asserts it is found, so an AnyIO that
    moves it fails CI instead of silently taking the slow path.
    """
    try:
        from anyio._core._eventloop import get_async_backend
    except ImportError:  # pragma: no cover - a future AnyIO that moved it
        return None
    return get_async_backend


def loop_calls() -> LoopCalls:
    """The running event loop's :class:`LoopCalls` (call it inside the loop)."""
    get_async_backend = anyio_get_async_backend()
    if get_async_backend is None:  # pragma: no cover - a future AnyIO that moved it
        backend_time = anyio.current_time
        backend_deadline = anyio.current_effective_deadline
    else:
        backend = get_async_backend()
        backend_time = backend.current_time
        backend_deadline = backend.current_effective_deadline
    native = anyio.lowlevel.current_token().native_token
    create_future = getattr(native, "create_future", None)
    loop_time = getattr(native, "time", None)
    if callable(create_future) and callable(loop_time):
        from . import _asyncio

        clock = cast("Callable[[], float]", loop_time)
        deadline = _asyncio.deadline_for(native) or backend_deadline
        return LoopCalls(clock, deadline, FutureItem, create_future)
    if "trio" in sys.modules:
        from . import _trio

        if _trio.is_trio_token(native):
            return LoopCalls(
                _trio.current_time, _trio.deadline_reader(), _trio.TaskItem, _no_signal
            )
    return LoopCalls(backend_time, backend_deadline, EventItem, anyio.Event)
