"""
The item record: one submitted item, its states, and how its waiter is told.

Every submitted item is one :class:`Item`. It is created by the caller's task, travels
through the scope's memory channel to the scheduler, which keeps it in a pool until a
batch takes it, and ends exactly once: with a result, with an exception, or cancelled
(its caller left). The ``state`` field is the item's whole life::

    QUEUED ──► POOLED ──► RUNNING ──► DONE          (result or exception)
       │        │  ▲         └──────► ABANDONED     (caller left after dispatch)
       │        ▼  │
       │      EXPIRED ──────────────► WITHDRAWN     (caller left before dispatch)
       └────────────────────────────► WITHDRAWN

An ABANDONED item goes back to RUNNING when an identical submit (``key=``) joins it while
the call of fn that covers it still runs: its result will still arrive. A ``submit_many``
or ``map`` item deduplicated onto another is FOLLOWING: never queued, it ends when its
leader does, with the leader's outcome (or WITHDRAWN if its caller leaves first).

Whoever moves an item out of QUEUED/POOLED/EXPIRED/RUNNING ends it; every later attempt
sees the new state and does nothing, which is what makes completion exactly-once.
"""

from __future__ import annotations

import contextvars
import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = [
    "ABANDONED",
    "DONE",
    "EXPIRED",
    "FOLLOWING",
    "NO_KEY",
    "POOLED",
    "QUEUED",
    "RUNNING",
    "WITHDRAWN",
    "CallbackItem",
    "Item",
    "StreamItem",
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
FOLLOWING = 7


class _NoKey:
    """The type of :data:`NO_KEY`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_KEY"


#: ``Item.key`` of an item with no cache / deduplication key (``None`` is a real key).
NO_KEY: Any = _NoKey()


class Item(ABC, Generic[In, Out]):
    """
    One submitted item and, once it has ended, its outcome.

    Subclasses decide how the waiter is told (:meth:`notify`), through ``signal``: a
    completion of the running event loop for a parked caller (see ``_completion``), a
    callback for ``submit_many`` and ``map``.
    """

    __slots__ = (
        "arrival",
        "batch",
        "context",
        "cost",
        "deadline",
        "error",
        "error_tb",
        "followers",
        "key",
        "partition",
        "priority",
        "result",
        "signal",
        "state",
        "value",
        "waiters",
    )

    def __init__(
        self,
        value: In,
        priority: float,
        cost: float,
        arrival: float,
        deadline: float,
        signal: Any,
    ) -> None:
        self.value: In = value
        self.priority: float = priority
        #: ``cost(value)`` when the scope has a cost function, else 1.
        self.cost: float = cost
        #: ``anyio.current_time()`` at submit.
        self.arrival: float = arrival
        #: The caller's effective deadline at submit (``inf`` when none).
        self.deadline: float = deadline
        #: How the waiter is told that the item ended (the subclass's business).
        self.signal: Any = signal
        self.state: int = QUEUED
        self.result: Out | None = None
        self.error: BaseException | None = None
        self.error_tb: TracebackType | None = None
        #: The running batch holding this item (set at dispatch), for cancellation.
        self.batch: Any = None
        #: The cache / deduplication key (NO_KEY when the scope has neither).
        self.key: Any = NO_KEY
        #: Callers waiting for this item: 1, plus those deduplicated onto it.
        self.waiters: int = 1
        #: Callers deduplicated onto this item (None until one joins): the event a
        #: ``submit`` caller parks on, or the FOLLOWING item of ``submit_many``/``map``.
        self.followers: list[anyio.Event | CallbackItem[In, Out]] | None = None
        #: The item's partition key (``partition(value)``; None when the scope has none).
        self.partition: Hashable = None
        #: The caller's context, copied when the item was queued (``capture_context``),
        #: or None.
        self.context: contextvars.Context | None = None

    def succeed(self, result: Out) -> None:
        """End the item with *result* (the caller checked that it was still live)."""
        self.result = result
        self.state = DONE
        self.notify()

    def fail(self, error: BaseException) -> None:
        """End the item with *error* (the caller checked that it was still live)."""
        self.error = error
        self.error_tb = error.__traceback__
        self.state = DONE
        self.notify()

    def outcome(self) -> Out:
        """Return the result, or raise the error, of an ended item."""
        error = self.error
        if error is not None:
            # Several callers may share one exception object (a failed batch); reset its
            # traceback so it does not grow with every re-raise (as asyncio.Future does).
            raise error.with_traceback(self.error_tb)
        return self.result  # type: ignore[return-value]

    @abstractmethod
    def notify(self) -> None:
        """Wake whoever waits for this item (its followers too)."""

    def follow(self) -> anyio.Event:
        """A deduplicated ``submit`` caller joins: the event it parks on."""
        event = anyio.Event()
        if self.followers is None:
            self.followers = [event]
        else:
            self.followers.append(event)
        return event

    def lead(self, follower: CallbackItem[In, Out]) -> None:
        """A ``submit_many``/``map`` item joins this one: it ends with this item's outcome."""
        follower.state = FOLLOWING
        follower.leader = self
        if self.followers is None:
            self.followers = [follower]
        else:
            self.followers.append(follower)

    def _wake_followers(self) -> None:
        for follower in self.followers or ():
            if isinstance(follower, anyio.Event):
                follower.set()
            elif follower.state == FOLLOWING:  # not withdrawn by its caller
                follower.result = self.result
                follower.error = self.error
                follower.error_tb = self.error_tb
                follower.state = DONE
                follower.notify()


class WaitedItem(Item[In, Out]):
    """
    An item whose caller parks until it ends: what :meth:`BatchScope.submit` uses.

    The caller that submitted it parks on ``signal`` (:meth:`park`); how depends on the
    event loop, so each backend has its subclass (``_completion``). Callers deduplicated
    onto an item (``key=``, of any kind) each park on an ``anyio.Event`` of their own
    in ``followers`` (:meth:`Item.follow`): one follower leaving never disturbs the others.
    """

    __slots__ = ()

    @abstractmethod
    def park(self) -> Awaitable[object]:
        """
        What the submitting caller awaits until the item ends.

        Awaiting it is a checkpoint: a cancelled caller gets its cancellation there.
        """

    @abstractmethod
    def _wake(self) -> None:
        """Wake the submitting caller, if it is still parked (a no-op if it left)."""

    def notify(self) -> None:
        self._wake()
        if self.followers is not None:
            self._wake_followers()


class CallbackItem(Item[In, Out]):
    """An item that reports its end to a callback (its ``signal``): submit_many and map."""

    __slots__ = ("index", "leader")

    def __init__(
        self,
        value: In,
        priority: float,
        cost: float,
        arrival: float,
        deadline: float,
        index: int,
        callback: Callable[[CallbackItem[In, Out]], None],
    ) -> None:
        super().__init__(value, priority, cost, arrival, deadline, callback)
        self.index: int = index
        #: The item this one follows (state FOLLOWING), else None.
        self.leader: Item[In, Out] | None = None

    def notify(self) -> None:
        self.signal(self)
        if self.followers is not None:
            self._wake_followers()


class StreamItem(Item[In, Out]):
    """
    An item whose outputs stream to its caller: what :meth:`BatchScope.stream` uses.

    Its ``signal`` is the send end of an unbounded memory-object
    stream: each output of its row is sent as it comes, so one slow reader never holds
    up the batch's other rows; ending the item closes the send end, and the reader sees
    the end of the stream, then the item's outcome (``None``, or the row's error).
    """

    __slots__ = ("last", "outputs")

    def __init__(
        self, value: In, priority: float, cost: float, arrival: float, deadline: float
    ) -> None:
        send, receive = anyio.create_memory_object_stream[Any](math.inf)
        super().__init__(value, priority, cost, arrival, deadline, send)
        #: The reader's end.
        self.outputs: MemoryObjectReceiveStream[Any] = receive
        #: Clock time of the row's latest output (None before its first).
        self.last: float | None = None

    def put(self, output: Any) -> None:
        """Hand one output to the reader (the caller checked that the item is RUNNING)."""
        cast("MemoryObjectSendStream[Any]", self.signal).send_nowait(output)

    def notify(self) -> None:
        cast("MemoryObjectSendStream[Any]", self.signal).close()

    def close(self) -> None:
        """Its reader is gone: close both ends (nothing is sent to a row not RUNNING)."""
        cast("MemoryObjectSendStream[Any]", self.signal).close()
        self.outputs.close()
