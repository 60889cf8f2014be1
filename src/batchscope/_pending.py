"""
Pending items: the per-item record, its completion, and the FIFO pool of the scheduler.

Every submitted item is one :class:`Item`. It is created by the caller's task, travels
through the scope's memory channel to the scheduler, which keeps it in a pool until a
batch takes it, and ends exactly once: with a result, with an exception, or cancelled
(its caller left). The ``state`` field is the item's whole life::

    QUEUED ──► POOLED ──► RUNNING ──► DONE          (result or exception)
       │        │  ▲         └──────► ABANDONED     (caller left after dispatch)
       │        ▼  │
       │      EXPIRED ──────────────► WITHDRAWN     (caller left before dispatch)
       └────────────────────────────► WITHDRAWN

Whoever moves an item out of QUEUED/POOLED/EXPIRED/RUNNING ends it; every later attempt
sees the new state and does nothing, which is what makes completion exactly-once.

An item whose caller's deadline has already passed when a batch is formed is never handed
to fn: the pool sets it aside as EXPIRED, for its caller's cancellation (already due) to
withdraw. Should the caller still be there a scheduler tick later (its deadline was moved),
the item goes back to the pool with no deadline: nobody hangs.

A pool decides *which* items go together and *when* a batch is due. :class:`FifoPool`
is the plain first-in-first-out policy; cost- and length-aware policies implement the
same small :class:`Pool` protocol.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio

if TYPE_CHECKING:
    from ._config import ScopeConfig

__all__ = [
    "ABANDONED",
    "DONE",
    "EXPIRED",
    "POOLED",
    "QUEUED",
    "RUNNING",
    "WITHDRAWN",
    "CallbackItem",
    "FifoPool",
    "Item",
    "Pool",
    "Release",
    "WaitedItem",
]

In = TypeVar("In")
Out = TypeVar("Out")

QUEUED = 0
POOLED = 1
RUNNING = 2
DONE = 3
WITHDRAWN = 4
ABANDONED = 5
EXPIRED = 6

#: Why a batch left the pool: ``size``, ``cost``, ``timer``, ``deadline`` or ``drain``.
Release = str


class Item(ABC, Generic[In, Out]):
    """
    One submitted item and, once it has ended, its outcome.

    Subclasses decide how the waiter is told (:meth:`_notify`).
    """

    __slots__ = (
        "arrival",
        "batch",
        "deadline",
        "error",
        "error_tb",
        "priority",
        "result",
        "state",
        "value",
    )

    def __init__(self, value: In, priority: float, arrival: float, deadline: float) -> None:
        self.value = value
        self.priority = priority
        #: ``anyio.current_time()`` at submit.
        self.arrival = arrival
        #: The caller's effective deadline at submit (``inf`` when none).
        self.deadline = deadline
        self.state = QUEUED
        self.result: Out | None = None
        self.error: BaseException | None = None
        self.error_tb: TracebackType | None = None
        #: The running batch holding this item (set at dispatch), for cancellation.
        self.batch: Any = None

    def succeed(self, result: Out) -> None:
        """End the item with *result* (the caller checked that it was still live)."""
        self.result = result
        self.state = DONE
        self._notify()

    def fail(self, error: BaseException) -> None:
        """End the item with *error* (the caller checked that it was still live)."""
        self.error = error
        self.error_tb = error.__traceback__
        self.state = DONE
        self._notify()

    def outcome(self) -> Out:
        """Return the result, or raise the error, of an ended item."""
        error = self.error
        if error is not None:
            # Several callers may share one exception object (a failed batch); reset its
            # traceback so it does not grow with every re-raise (as asyncio.Future does).
            raise error.with_traceback(self.error_tb)
        return self.result  # type: ignore[return-value]

    @abstractmethod
    def _notify(self) -> None:
        """Wake whoever waits for this item."""


class WaitedItem(Item[In, Out]):
    """An item whose caller parks on an event: what :meth:`BatchScope.submit` uses."""

    __slots__ = ("event",)

    def __init__(self, value: In, priority: float, arrival: float, deadline: float) -> None:
        super().__init__(value, priority, arrival, deadline)
        self.event = anyio.Event()

    def _notify(self) -> None:
        self.event.set()


class CallbackItem(Item[In, Out]):
    """An item that reports its end to a callback: what submit_many and map use."""

    __slots__ = ("callback", "index")

    def __init__(
        self,
        value: In,
        priority: float,
        arrival: float,
        deadline: float,
        index: int,
        callback: Callable[[CallbackItem[In, Out]], None],
    ) -> None:
        super().__init__(value, priority, arrival, deadline)
        self.index = index
        self.callback = callback

    def _notify(self) -> None:
        self.callback(self)


class Pool(Protocol):
    """What the scheduler asks of a pending pool (a batching policy)."""

    #: Live items in the pool.
    live: int
    #: Items :meth:`take` set aside (state EXPIRED) because their caller's deadline had
    #: passed; the scheduler collects them.
    expired: list[Item[Any, Any]]

    def add(self, item: Item[Any, Any]) -> None:
        """Take a newly arrived item (state QUEUED) into the pool."""

    def discard(self, item: Item[Any, Any]) -> None:
        """Forget a pooled item whose caller withdrew it (already marked WITHDRAWN)."""

    def due_at(self, config: ScopeConfig) -> float:
        """The time the next batch becomes due by timer; ``inf`` when the pool is empty."""
        ...

    def take(
        self, now: float, config: ScopeConfig, draining: bool
    ) -> tuple[list[Item[Any, Any]], Release] | None:
        """Remove and return the next batch and why it goes, or None if none is due."""
        ...

    def clear(self) -> list[Item[Any, Any]]:
        """Remove and return every live item (the scope is failing)."""
        ...


class FifoPool:
    """
    First in, first out: a batch is the oldest live items, up to ``max_batch_size``.

    Withdrawn items are dropped lazily when they reach the head (or when they outnumber
    the live ones), so a withdrawal is O(1) amortised.
    """

    __slots__ = ("_items", "expired", "live")

    def __init__(self) -> None:
        self._items: deque[Item[Any, Any]] = deque()
        self.live = 0
        self.expired: list[Item[Any, Any]] = []

    def add(self, item: Item[Any, Any]) -> None:
        item.state = POOLED
        self._items.append(item)
        self.live += 1

    def discard(self, item: Item[Any, Any]) -> None:
        self.live -= 1
        items = self._items
        if len(items) > 2 * self.live + 64:
            # Many withdrawn items (a cancellation storm while a batch runs): compact, so
            # memory follows live items. Amortised O(1) per withdrawal.
            self._items = deque(item for item in items if item.state == POOLED)

    def _head(self) -> Item[Any, Any] | None:
        items = self._items
        while items:
            head = items[0]
            if head.state == POOLED:
                return head
            items.popleft()
        return None

    def due_at(self, config: ScopeConfig) -> float:
        head = self._head()
        return float("inf") if head is None else head.arrival + config.max_wait

    def take(
        self, now: float, config: ScopeConfig, draining: bool
    ) -> tuple[list[Item[Any, Any]], Release] | None:
        head = self._head()
        if head is None:
            return None
        if self.live >= config.max_batch_size:
            reason = "size"
        elif draining:
            reason = "drain"
        elif now >= head.arrival + config.max_wait:
            reason = "timer"
        else:
            return None
        batch: list[Item[Any, Any]] = []
        items = self._items
        limit = config.max_batch_size
        while items and len(batch) < limit:
            item = items.popleft()
            if item.state != POOLED:
                continue
            self.live -= 1
            if item.deadline <= now:
                # Its caller has already given up (its cancellation is due): never hand
                # such an item to fn.
                item.state = EXPIRED
                self.expired.append(item)
                continue
            batch.append(item)
        if not batch:
            return None
        return batch, reason

    def clear(self) -> list[Item[Any, Any]]:
        live = [item for item in self._items if item.state == POOLED]
        self._items.clear()
        self.live = 0
        return live
