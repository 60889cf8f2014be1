"""
Pending pools: the FIFO and priority policies, and what every pool shares.

An item whose caller cannot be served in time even if dispatched now (its deadline has
passed, or is nearer than the run time that recent batches confirm) is never handed to fn:
the pool sets it aside as EXPIRED, for its caller's cancellation to withdraw. Should the
caller still be there once its deadline has passed and a scheduler tick later (its
deadline was moved), the item goes back to the pool with no deadline: nobody hangs; and
should the estimate drop first (a faster batch ran), it goes back with its deadline.

Two exceptions keep deadline callers served on a real loop, whose timers fire late: the
item whose deadline released a partial batch is in it (unless that deadline has passed),
and items left out only for the estimate still run when nothing else would (a free slot
never sits idle while a live caller is due: the caller gets its chance, the estimate a
new sample).

A pool decides *which* items go together and *when* a batch is due. Every pool shares
:class:`PoolBase` (arrival order for ``max_wait`` and aging, a deadline heap for early
release, the cost budget); :class:`FifoPool` and :class:`PriorityPool` live here, the
length-bucketing pool in ``_bucketing``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

import attrs

from ._hooks import ReleaseReason
from ._items import EXPIRED, POOLED, Item

__all__ = [
    "DEADLINE_SHARE",
    "Budget",
    "FifoPool",
    "Limits",
    "Pool",
    "PoolBase",
    "PriorityPool",
    "Release",
    "deadline_spare",
]

#: Why a batch left the pool: ``size``, ``cost``, ``timer``, ``deadline``, ``drain`` or
#: ``early``.
Release = ReleaseReason

#: The share of a caller's time (from its item's arrival to its deadline) that a partial
#: batch keeps in hand when it leaves for that deadline, on top of ``Limits.lead``: what
#: absorbs a real loop's worst timer delays (tens of milliseconds on a loaded machine,
#: beyond what the scheduler has measured) for any caller that allows more than a few
#: times that. A caller giving 1 s has its batch sent at least 200 ms + lead before it
#: (0.1 was measured too little: a lone 500 ms caller under the test suite's CPU hog, whose
#: first batch starts a worker thread, missed now and then).
DEADLINE_SHARE = 0.2


def deadline_spare(deadline: float, arrival: float) -> float:
    """What a caller's deadline keeps in hand: :data:`DEADLINE_SHARE` of its time."""
    return DEADLINE_SHARE * max(0.0, deadline - arrival)


@attrs.frozen
class Limits:
    """What the scheduler tells a pool about the next batch (fresh each time it looks)."""

    #: Hard cap on items per batch.
    max_batch_size: int
    #: How long the oldest item may wait for companions (``max_wait``, or the automatic one).
    wait: float
    #: Budget per batch in cost units, or None.
    max_batch_cost: float | None
    #: ``cost_mode == "padded"``: a batch costs ``len(batch) * max(cost)``, else the sum.
    padded: bool
    #: Estimated run time of a batch now (for deadlines).
    runtime: float
    #: How long before a caller's deadline a partial batch leaves: the estimated run time
    #: plus a margin for its variance and for the lateness of the scheduler's timer.
    lead: float = 0.0
    #: The run time recent batches confirm (0 while none does): an item whose deadline is
    #: nearer than this is left out of a batch (see :meth:`PoolBase._fill`).
    confirmed: float = 0.0
    #: ``preferred_batch_sizes``, sorted (empty: none): a timer release is cut to the
    #: largest of them not above what is pending (see :meth:`PoolBase._cut`).
    preferred: tuple[int, ...] = ()
    #: A shared device pulled the next batch forward (lookahead): what is pending goes
    #: now, before its timer or deadline release, with the reason ``early``.
    early: bool = False


class Budget:
    """
    A batch being formed under ``max_batch_size`` and ``max_batch_cost``; O(1) per item.

    The first item always fits (an item over budget on its own runs alone: never a
    livelock); after it, an item fits when the batch's cost with it stays in budget.
    """

    __slots__ = ("_cost_limit", "_padded", "_size_limit", "count", "max_cost", "sum_cost")

    def __init__(self, limits: Limits) -> None:
        self._size_limit = limits.max_batch_size
        self._cost_limit = limits.max_batch_cost
        self._padded = limits.padded
        self.count = 0
        self.max_cost = 0.0
        self.sum_cost = 0.0

    @property
    def full_by_size(self) -> bool:
        return self.count >= self._size_limit

    def fits(self, cost: float) -> bool:
        """Whether an item of *cost* can join (the size limit is checked by the caller)."""
        limit = self._cost_limit
        if limit is None or self.count == 0:
            return True
        if self.max_cost > limit:  # an oversize item runs alone
            return False
        if self._padded:
            return (self.count + 1) * max(self.max_cost, cost) <= limit
        return self.sum_cost + cost <= limit

    def add(self, cost: float) -> None:
        self.count += 1
        self.sum_cost += cost
        if cost > self.max_cost:
            self.max_cost = cost


class Pool(Protocol):
    """What the scheduler asks of a pending pool (a batching policy)."""

    #: Live items in the pool.
    live: int
    #: Their total cost.
    pending_cost: float
    #: Items :meth:`take` set aside (state EXPIRED) because their caller could not be
    #: served in time; the scheduler collects them.
    expired: list[Item[Any, Any]]

    def add(self, item: Item[Any, Any]) -> None:
        """Take a newly arrived item (state QUEUED) into the pool."""

    def discard(self, item: Item[Any, Any]) -> None:
        """Forget a pooled item whose caller withdrew it (already marked WITHDRAWN)."""

    def due_at(self, limits: Limits) -> float:
        """When a batch becomes due by timer or deadline; ``inf`` when the pool is empty."""
        ...

    def earliest_deadline(self) -> float:
        """The soonest caller deadline among live items (``inf`` when none)."""
        ...

    def take(
        self, now: float, limits: Limits, draining: bool
    ) -> tuple[list[Item[Any, Any]], Release] | None:
        """Remove and return the next batch and why it goes, or None if none is due."""
        ...

    def clear(self) -> list[Item[Any, Any]]:
        """Remove and return every live item (the scope is failing)."""
        ...


class PoolBase:
    """
    What every policy shares: live count, pending cost, arrival order, deadlines.

    Items leave the arrival deque and the deadline heap lazily (their state tells), so
    withdrawals are O(1); both are compacted when dead entries outnumber live ones.
    """

    def __init__(self) -> None:
        self.live: int = 0
        self.pending_cost: float = 0.0
        self.expired: list[Item[Any, Any]] = []
        self._order: deque[Item[Any, Any]] = deque()
        self._deadlines: list[tuple[float, int, Item[Any, Any]]] = []
        self._seq = itertools.count()

    # -- bookkeeping shared by subclasses ----------------------------------------------------

    def _track(self, item: Item[Any, Any]) -> None:
        item.state = POOLED
        self.live += 1
        self.pending_cost += item.cost
        self._order.append(item)
        if item.deadline != math.inf:
            heapq.heappush(self._deadlines, (item.deadline, next(self._seq), item))

    def _untrack(self, item: Item[Any, Any], withdrawn: bool) -> None:
        self.live -= 1
        self.pending_cost -= item.cost
        self._on_remove(item, withdrawn)

    def discard(self, item: Item[Any, Any]) -> None:
        self._untrack(item, withdrawn=True)
        if len(self._order) > 2 * self.live + 64:
            self._order = deque(i for i in self._order if i.state == POOLED)
            self._deadlines = [e for e in self._deadlines if e[2].state == POOLED]
            heapq.heapify(self._deadlines)
            self._on_compact()

    def _on_remove(self, item: Item[Any, Any], withdrawn: bool) -> None:
        """A policy's own bookkeeping when a live item leaves (taken or withdrawn)."""

    def _on_compact(self) -> None:
        """The arrival order was rebuilt without dead entries."""

    def oldest(self) -> Item[Any, Any] | None:
        """The live item that arrived first."""
        order = self._order
        while order:
            head = order[0]
            if head.state == POOLED:
                return head
            order.popleft()
            self._popped_head()
        return None

    def _popped_head(self) -> None:
        """A dead entry left the head of the arrival order."""

    def earliest_deadline(self) -> float:
        """The soonest caller deadline among live items (``inf`` when none)."""
        heap = self._deadlines
        while heap:
            if heap[0][2].state == POOLED:
                return heap[0][0]
            heapq.heappop(heap)
        return math.inf

    def due_at(self, limits: Limits) -> float:
        oldest = self.oldest()
        if oldest is None:
            return math.inf
        # Release early when waiting longer would make a caller miss its deadline.
        return min(oldest.arrival + limits.wait, self._deadline_due(limits))

    def _deadline_due(self, limits: Limits) -> float:
        """
        When the soonest caller deadline releases a partial batch: ``limits.lead`` and
        :data:`DEADLINE_SHARE` of that caller's time before it (``inf`` when none).
        """
        deadline = self.earliest_deadline()
        if deadline == math.inf:
            return math.inf
        arrival = self._deadlines[0][2].arrival
        return deadline - limits.lead - deadline_spare(deadline, arrival)

    def _timer_reason(self, now: float, limits: Limits, draining: bool) -> Release | None:
        """Why a partial batch is due now (drain, timer, deadline, early), or None."""
        if draining:
            return "drain"
        oldest = self.oldest()
        if oldest is None:
            return None
        if now >= oldest.arrival + limits.wait:
            return "timer"
        if now >= self._deadline_due(limits):
            return "deadline"
        if limits.early:
            return "early"
        return None

    def _cut(self, reason: Release, now: float, limits: Limits, pending: int) -> Limits:
        """
        The limits of a batch released for *reason* with *pending* items to choose from:
        with preferred sizes, a timer release is cut to the largest preferred size not
        above *pending* (all of them when fewer than the smallest), the rest stay pooled.

        Never cut: a batch released full (it is the largest preferred size), by a
        caller's deadline or by the drain (what is due goes, uncut), nor a timer release
        while a caller's deadline would come due before another batch could run (that
        caller cannot wait for the next one).
        """
        preferred = limits.preferred
        if not preferred or reason != "timer" or pending >= limits.max_batch_size:
            return limits
        if self._deadline_due(limits) <= now + limits.runtime:
            return limits
        size = pending
        for allowed in preferred:
            if allowed <= pending:
                size = allowed
        if pending < preferred[0] or size == pending:
            return limits
        return attrs.evolve(limits, max_batch_size=size)

    def _releasing(self, reason: Release | None, limits: Limits) -> Item[Any, Any] | None:
        """
        The item whose deadline released the batch on its schedule, or None: the reason
        is ``deadline`` and the item arrived before its release point (one that arrived
        after it was released on arrival, and is judged like any other).
        """
        if reason != "deadline" or self.earliest_deadline() == math.inf:
            return None
        item = self._deadlines[0][2]
        return item if item.arrival <= self._deadline_due(limits) else None

    def _fill(
        self,
        candidates: Iterable[Item[Any, Any]],
        now: float,
        limits: Limits,
        releasing: Item[Any, Any] | None = None,
    ) -> tuple[list[Item[Any, Any]], bool]:
        """
        Take live candidates in order into a batch under the budget.

        Returns the batch and whether the cost budget (not the size) stopped it. An item
        is set aside only when its caller cannot be served in time even if dispatched
        now: its deadline has passed, or is nearer than the run time recent batches
        confirm (``limits.confirmed``, 0 until two batches have been timed, so neither
        the untimed default nor one slow batch leaves anybody out). *releasing*, the
        item whose deadline released the batch, is in it unless its deadline has passed:
        it was released in time by the estimate, and a late timer must not undo that.

        Items left out only for the estimate take their room in the budget; if they are
        all there is, they make the batch: a free slot never sits idle while a live
        caller is due (it gets its chance, and the estimate a new sample).
        """
        budget = Budget(limits)
        batch: list[Item[Any, Any]] = []
        doubtful: list[Item[Any, Any]] | None = None
        give_up = now + limits.confirmed
        by_cost = False
        for item in candidates:
            if item.state != POOLED:
                continue
            if budget.full_by_size:
                break
            if not budget.fits(item.cost):
                by_cost = True
                break
            self._untrack(item, withdrawn=False)
            deadline = item.deadline
            if deadline < give_up:
                if deadline < now:
                    item.state = EXPIRED
                    self.expired.append(item)
                    continue
                if item is not releasing:
                    if doubtful is None:
                        doubtful = []
                    doubtful.append(item)
                    continue
            budget.add(item.cost)
            batch.append(item)
        if doubtful is not None:
            if not batch:
                # Only doubtful callers are due: as many as a batch holds run.
                spare = Budget(limits)
                for item in doubtful:
                    if spare.full_by_size or not spare.fits(item.cost):
                        break
                    spare.add(item.cost)
                    batch.append(item)
                doubtful = doubtful[len(batch) :]
            for item in doubtful:
                item.state = EXPIRED
            self.expired.extend(doubtful)
        return batch, by_cost

    def clear(self) -> list[Item[Any, Any]]:
        live = [item for item in self._order if item.state == POOLED]
        self._order.clear()
        self._deadlines.clear()
        self.live = 0
        self.pending_cost = 0.0
        self._on_clear()
        return live

    def _on_clear(self) -> None:
        """A policy's own clean-up when the pool is emptied."""


class FifoPool(PoolBase):
    """
    First in, first out: a batch is the oldest live items, up to the size and cost limits.

    A full batch is due at once. With a cost budget, "full" is known without rescanning:
    the pool keeps the cost of the batch that the oldest items would form, extended by
    each arrival in O(1), and recomputed only after a batch is taken or a withdrawal.
    """

    def __init__(self) -> None:
        super().__init__()
        self._prefix: Budget | None = None
        self._prefix_end = 0  # entries of _order already counted in _prefix
        self._prefix_full = False
        self._prefix_budget: tuple[int, float | None, bool] | None = None

    def add(self, item: Item[Any, Any]) -> None:
        self._track(item)

    def _on_remove(self, item: Item[Any, Any], withdrawn: bool) -> None:
        if withdrawn:
            self._prefix = None  # recount lazily

    def _on_compact(self) -> None:
        self._prefix = None

    def _on_clear(self) -> None:
        self._prefix = None

    def _popped_head(self) -> None:
        if self._prefix_end:
            self._prefix_end -= 1

    def _batch_is_full(self, limits: Limits) -> bool:
        """Whether the oldest items already fill a batch, by size or by cost."""
        if self.live >= limits.max_batch_size:
            return True
        if limits.max_batch_cost is None:
            return False
        # The scheduler hands us fresh Limits each time it looks: the prefix depends only
        # on the budget, so key it on that, or every arrival would recount a batch.
        budget = (limits.max_batch_size, limits.max_batch_cost, limits.padded)
        if self._prefix is None or self._prefix_budget != budget:
            self._prefix = Budget(limits)
            self._prefix_end = 0
            self._prefix_full = False
            self._prefix_budget = budget
        prefix = self._prefix
        order = self._order
        while not self._prefix_full and self._prefix_end < len(order):
            item = order[self._prefix_end]
            self._prefix_end += 1
            if item.state != POOLED:
                continue
            if prefix.full_by_size or not prefix.fits(item.cost):
                self._prefix_full = True
            else:
                prefix.add(item.cost)
        return self._prefix_full

    def take(
        self, now: float, limits: Limits, draining: bool
    ) -> tuple[list[Item[Any, Any]], Release] | None:
        if not self.live:
            return None
        full = self._batch_is_full(limits)
        reason = None if full else self._timer_reason(now, limits, draining)
        if not full and reason is None:
            return None
        if reason is not None:
            limits = self._cut(reason, now, limits, self.live)
        order = self._order
        if limits.max_batch_cost is None and self.earliest_deadline() == math.inf:
            # The common case, no budget and no caller deadline: the oldest live items,
            # without the per-item checks of _fill.
            self._prefix = None
            return self._take_oldest(limits.max_batch_size), reason or "size"

        def oldest_first() -> Iterable[Item[Any, Any]]:
            while order:
                yield order[0]
                order.popleft()

        batch, by_cost = self._fill(oldest_first(), now, limits, self._releasing(reason, limits))
        self._prefix = None
        if not batch:
            return None
        if reason is None:
            reason = "cost" if by_cost else "size"
        return batch, reason

    def _take_oldest(self, limit: int) -> list[Item[Any, Any]]:
        order = self._order
        popleft = order.popleft
        batch: list[Item[Any, Any]] = []
        append = batch.append
        cost = 0.0
        while order and len(batch) < limit:
            item = popleft()
            if item.state == POOLED:
                append(item)
                cost += item.cost
        self.live -= len(batch)
        self.pending_cost -= cost
        return batch


class PriorityPool(PoolBase):
    """
    Lower ``priority`` first, FIFO within a priority, with aging.

    An item's rank is ``priority * aging + arrival``: waiting ``aging`` seconds is worth
    one priority level, so under sustained high-priority load a low-priority item is
    overtaken only by items that arrived less than ``(its priority - theirs) * aging``
    after it, and always progresses. Ranks never change, so a heap orders them.
    """

    def __init__(self, aging: float) -> None:
        super().__init__()
        self._aging = aging
        self._heap: list[tuple[float, int, Item[Any, Any]]] = []

    def add(self, item: Item[Any, Any]) -> None:
        self._track(item)
        rank = item.priority * self._aging + item.arrival
        heapq.heappush(self._heap, (rank, next(self._seq), item))

    def _on_remove(self, item: Item[Any, Any], withdrawn: bool) -> None:
        if withdrawn and len(self._heap) > 2 * self.live + 64:
            self._heap = [e for e in self._heap if e[2].state == POOLED]
            heapq.heapify(self._heap)

    def _on_clear(self) -> None:
        self._heap.clear()

    def take(
        self, now: float, limits: Limits, draining: bool
    ) -> tuple[list[Item[Any, Any]], Release] | None:
        if not self.live:
            return None
        cost_limit = limits.max_batch_cost
        full = self.live >= limits.max_batch_size or (
            cost_limit is not None and self.pending_cost >= cost_limit
        )
        reason = None if full else self._timer_reason(now, limits, draining)
        if not full and reason is None:
            return None
        if reason is not None:
            limits = self._cut(reason, now, limits, self.live)
        heap = self._heap

        def best_first() -> Iterable[Item[Any, Any]]:
            while heap:
                yield heap[0][2]
                heapq.heappop(heap)

        batch, by_cost = self._fill(best_first(), now, limits, self._releasing(reason, limits))
        if not batch:
            return None
        if reason is None:
            reason = "cost" if by_cost else "size"
        return batch, reason
