"""
The engine: the state one scope's layers share, and the admission protocol.

Like Trio's ``Runner`` and AnyIO's ``_MemoryObjectStreamState``, one private object with
public member names holds what the scheduler, the executor, the cache front and ``map``
work on: the options, the clock and deadline look-up of the running loop, the recorder,
hooks, breaker and rate buckets, the room in the queue, the channel's send end, the
running parts, the scope's state and its failure. :class:`BatchScope` owns the lifetime
(through ``_wiring``, which builds the parts, opens the task group, closes and aborts)
and delegates the rest here; no module below it imports it.

The admission protocol is the caller's side of every item, whatever the entry point
(``submit``, ``submit_many``, ``map``, the cache front): :meth:`Engine.price` (count the
call, check the breaker, price the item), :meth:`Engine.admit` (take room in the queue,
or wait for it, or reject), :meth:`Engine.queue`, :meth:`Engine.wait` (park until the
item ends) and :meth:`Engine.leave` (a caller gone: withdraw or abandon its item).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import anyio
import attrs

from ._adaptive import BatchSizer
from ._admission import drain_time, judge
from ._config import ScopeConfig
from ._durations import checked_cost
from ._exceptions import CircuitOpenError, ItemTooLargeError, ScopeClosedError
from ._hooks import HookRunner, RateLimitedLog, RejectReason
from ._items import (
    ABANDONED,
    DONE,
    EXPIRED,
    FOLLOWING,
    POOLED,
    QUEUED,
    RUNNING,
    WITHDRAWN,
    CallbackItem,
    Item,
    WaitedItem,
)
from ._lifecycle import (
    ScopeState,
    closed_error,
    kept_failure,
    not_open_error,
    reject,
    wait_or_refuse,
)
from ._resilience import BreakerState, TokenBucket
from ._room import Room
from ._statistics import Recorder

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectSendStream

    from ._cache import CacheFront
    from ._device import DeviceClient
    from ._executor import Executor
    from ._map import MapIterator
    from ._scheduler import Scheduler

__all__ = ["Engine", "ScopeState"]

In = TypeVar("In")
Out = TypeVar("Out")


def _no_maps() -> set[Any]:
    return set()


def _unopened_clock() -> float:
    return anyio.current_time()


@attrs.define(eq=False)
class Engine(Generic[In, Out]):
    """
    One scope's shared state and the caller's side of every item.

    Built (by ``_wiring``) when its :class:`BatchScope` is constructed; the parts that
    belong to an event loop (clock, channel, room, scheduler, executor, task group) are
    set when it opens.
    """

    #: The options in force (replaced whole by ``configure()``).
    config: ScopeConfig
    #: The batch function's name, for messages.
    fn_name: str
    #: Hooks to call, or None (then nothing is built for them).
    hooks: HookRunner | None
    #: Rate-limited logging of repeated warnings.
    log: RateLimitedLog
    #: The circuit breaker's state, or None.
    breaker: BreakerState | None = None
    #: The cache and in-flight deduplication in front of the queue, or None.
    front: CacheFront[In, Out] | None = None
    #: Token buckets of ``rate_limit`` (set when the scope opens), or None.
    batch_bucket: TokenBucket | None = None
    cost_bucket: TokenBucket | None = None
    #: The live counters.
    recorder: Recorder = attrs.Factory(Recorder)
    state: ScopeState = ScopeState.NEW
    #: What broke the scope (a crash, or the body's exception), or None.
    failure: BaseException | None = None
    #: This scope's handle on its shared device (``device=``; set when it opens), or None.
    device: DeviceClient | None = None
    #: Whether fn is an async generator: items stream their outputs (``_streaming``).
    streaming: bool = False
    #: The cap on items per batch (``max_batch_size="auto"``, ``oom_errors``).
    sizer: BatchSizer = attrs.field(init=False)
    #: Open ``map`` iterators (stopped when the scope closes).
    maps: set[MapIterator[In, Out]] = attrs.field(init=False, factory=_no_maps)
    #: Whether queued items carry a copy of their caller's context (``capture_context``,
    #: or a hook that asks for it).
    capture: bool = False
    #: Whether ``submit`` takes its inline path: the scope has none of what :meth:`price`
    #: and :meth:`queue` check per item beyond a cost function (``admission="deadline"``,
    #: a breaker, ``partition=``, captured contexts), no cache front, and fn does not
    #: stream (set when the scope opens; none of these can be reconfigured).
    plain: bool = False
    #: A plain scope whose items are priced by a ``cost`` function (its submit path calls
    #: :meth:`price`; a plain scope without one costs 1 per item, unchecked).
    priced: bool = False
    #: Until when dispatch is held: an upstream said "slow down" (fn raised an exception
    #: with a ``retry_after``); the scheduler dispatches nothing before it.
    paused_until: float = -math.inf
    # -- set when the scope opens: they belong to its event loop ---------------------------
    #: The loop's clock.
    clock: Callable[[], float] = _unopened_clock
    #: The calling task's effective deadline.
    deadline: Callable[[], float] = anyio.current_effective_deadline
    #: The kind of item ``submit`` makes, and how its completion is made.
    item_type: type[WaitedItem[Any, Any]] = attrs.field(init=False)
    new_signal: Callable[[], object] = attrs.field(init=False)
    #: ``max_queue_size`` places.
    room: Room = attrs.field(init=False)
    #: The channel's send end (the scheduler holds the receive end).
    send: MemoryObjectSendStream[Item[In, Out]] = attrs.field(init=False)
    scheduler: Scheduler[In, Out] = attrs.field(init=False)
    executor: Executor[In, Out] = attrs.field(init=False)
    task_group: TaskGroup = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.sizer = BatchSizer(self.recorder)
        self.sizer.configured(self.config)

    def describe(self) -> str:
        """How messages name the scope: ``<BatchScope fn state>``."""
        return f"<BatchScope {self.fn_name} {self.state.value}>"

    # -- failure ---------------------------------------------------------------------------

    def note_crash(self, exc: BaseException) -> None:
        """Remember the first failure that is not a cancellation."""
        self.failure = kept_failure(self.failure, exc)

    def closed_error(self) -> ScopeClosedError:
        """The error for callers of a closed (or failed) scope."""
        return closed_error(self.describe(), self.failure)

    def fail_waiting(self) -> None:
        """End every queued or pooled item with ScopeClosedError."""
        failed = self.scheduler.fail_waiting(self.closed_error())
        self.recorder.failed += failed
        self.recorder.pending -= failed

    def closed_now(self) -> Exception:
        """The error for a submit that finds the scope not open (or never opened)."""
        return not_open_error(self.state, self.describe(), self.failure, "BatchScope(fn)")

    def cost_of(self, value: In, cost_fn: Callable[[In], float]) -> float:
        """The item's cost by *cost_fn*, checked; raises for this item."""
        config = self.config
        cost = checked_cost(value, cost_fn)
        limit = config.max_batch_cost
        if limit is not None and cost > limit and config.oversize == "reject":
            raise ItemTooLargeError(
                f"this item costs {cost:g}, more than max_batch_cost={limit:g} (oversize='reject')"
            )
        return cost

    @staticmethod
    def partition_of(value: In, partition_fn: Callable[[In], Hashable]) -> Hashable:
        """The item's partition key by *partition_fn*, checked; raises for this item."""
        try:
            key: object = partition_fn(value)
        except Exception as exc:
            raise ValueError(
                f"the 'partition' function raised {type(exc).__name__} for this item: {exc}"
            ) from exc
        try:
            hash(key)
        except TypeError:
            raise TypeError(
                f"the 'partition' function must return a hashable key, got {type(key).__name__}"
            ) from None
        return key

    def price(self, value: In, count: bool) -> float:
        """
        Count a submit (if *count*) and price its item; raises if it cannot be queued.

        Without *count* the caller has counted the submit already (before an async cache
        look-up): a scope that closed meanwhile then counts it as rejected.
        """
        if self.state is not ScopeState.OPEN:
            if not count:
                self.reject("closed")
            raise self.closed_now()
        if count:
            self.recorder.submitted += 1
        breaker = self.breaker
        if breaker is not None and breaker.is_open():
            self.reject("circuit_open")
            raise CircuitOpenError(
                f"the circuit breaker of {self.describe()} is open: recent batches failed",
                breaker.reopens_in(),
            )
        cost_fn = self.config.cost
        if cost_fn is None:
            cost = 1.0
        else:
            try:
                cost = self.cost_of(value, cost_fn)
            except ItemTooLargeError:
                self.reject("too_large")
                raise
            except Exception:
                self.reject("bad_cost")
                raise
        if self.config.admission == "deadline":
            judge(self, cost)  # raises DeadlineUnmeetableError
        return cost

    async def admit(self, value: In, *, count: bool = True) -> float:
        """Count a submit, price its item, take room for it in the queue; return the cost."""
        cost = self.price(value, count)
        if not self.room.take_nowait():
            await self.wait_for_room(cost)
        return cost

    async def wait_for_room(self, cost: float = 1.0) -> None:
        """The queue is full: reject, or wait for room (``on_full``)."""
        await wait_or_refuse(self, lambda: drain_time(self, cost), "pending")

    def reject(self, reason: RejectReason) -> None:
        """Count a refused submit and tell the hooks why."""
        reject(self.recorder, self.hooks, reason)

    def queue(self, item: Item[In, Out]) -> None:
        """
        Send an admitted item to the scheduler, with its partition key (``partition=``).

        A partition function that raises, or returns an unhashable key, refuses this
        item alone: its room is given back and the error raised to its caller.
        """
        partition_fn = self.config.partition
        if partition_fn is not None:
            try:
                item.partition = self.partition_of(item.value, partition_fn)
            except Exception:
                self.room.release()
                self.reject("bad_partition")
                raise
        if self.capture:
            item.context = contextvars.copy_context()
        self.recorder.pending += 1
        self.send.send_nowait(item)

    async def wait(self, waited: WaitedItem[In, Out], *, follower: bool = False) -> Out:
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
            self.leave(waited)
            raise
        return waited.outcome()

    def leave(self, item: Item[In, Out]) -> None:
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
        recorder = self.recorder
        if self.hooks is not None and state in (QUEUED, POOLED, EXPIRED, RUNNING):
            self.hooks.call("item_cancelled", state == RUNNING)
        if state in (QUEUED, POOLED, EXPIRED):
            recorder.pending -= 1
            recorder.cancelled += 1
            item.waiters -= 1
            if item.waiters:
                return
            if state == POOLED:
                self.scheduler.pool.discard(item)
            item.state = WITHDRAWN
            self.room.release()
            if self.front is not None:
                self.front.forget(item)
        elif state == RUNNING:
            recorder.running -= 1
            recorder.cancelled += 1
            item.waiters -= 1
            if item.waiters:
                return
            item.state = ABANDONED  # still its key's leader: an identical submit rejoins it
            batch = item.batch
            batch.live -= 1
            self.executor.cancel_if_abandoned(batch)
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
