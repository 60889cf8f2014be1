"""
Length bucketing: ``policy="length"`` groups items of similar cost into each batch.

Padded models pay for ``len(batch) * max(cost)``, so a batch should hold items of nearly
the same length. Items go into fine geometric buckets (each ``2 ** (1/8)``, about 9%,
wider than the one below); a batch is taken from one *anchor* bucket and, when that is
not enough, from its nearest neighbours, never more than a factor of two away.

Which batch goes next, when an executor slot is free:

1. the oldest item is *overdue* — it has waited ``max_wait`` and ``AGING_FACTOR`` times
   the recent typical queue wait: the tightest window of buckets around it that fills a
   batch (this is the aging: long items never starve behind a stream of short ones, yet
   under a steady backlog, where every item waits about as long, packing is not given
   up);
2. enough items are pending for a full batch (by size or cost): the tightest window of
   adjacent buckets that fills a batch (the smallest cost ratio, so the least padding);
3. the oldest item has waited ``max_wait`` (a partial batch) or a caller's deadline
   demands it: the tightest window around that item that fills a batch.

A window *fills* a batch when it holds ``max_batch_size`` items, or when its items,
counted at the least cost of its highest bucket, weigh ``FULL_LOAD_SHARE`` of a full
batch (of ``max_batch_size`` items of the mean arriving cost, or of ``max_batch_cost``):
a few long items of one bucket go together, with little padding, instead of a full
count reaching down for items half as long. (Not with preferred batch sizes, whose
shapes fn wants, nor with ``cost_mode="sum"``, where nothing is padded.) A window that
fills none takes as many items as it can. Windows never reach further than a factor of
two from their anchor.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterator
from typing import Any

from ._items import POOLED, Item
from ._pending import Limits, PoolBase, Release

__all__ = [
    "AGING_FACTOR",
    "BUCKETS_PER_DOUBLING",
    "FULL_LOAD_SHARE",
    "LengthPool",
    "bucket_floor",
    "bucket_of",
]

#: Buckets per factor of two in cost: 8 makes each bucket about 9% wider than the last.
BUCKETS_PER_DOUBLING = 8
#: How many buckets to either side a batch may borrow from (a factor of two).
SPAN = BUCKETS_PER_DOUBLING
#: An item is overdue, and anchors the next batch, once it has waited ``max_wait`` and
#: this many times the recent typical queue wait. Chosen on the lognormal mix of
#: tests/test_policies.py as the factor that keeps padding efficient under load while
#: long items' p99 stays close to short ones' (the figures: docs/benchmarks.md,
#: "Aging factor of the length policy").
AGING_FACTOR = 3
#: How many recent arrivals the mean arriving cost follows (see ``LengthPool._full_load``).
COST_MEMORY = 256
#: A run of buckets whose items weigh this share of a full batch of typical items (each
#: counted at the least cost of the run's highest bucket) makes a batch, however few they
#: are (see ``LengthPool._window``). Chosen on the padding benchmark (scenario c) as the
#: share that padded least among those tried (the figures: docs/benchmarks.md, "Padding
#: and fairness").
FULL_LOAD_SHARE = 0.5


def bucket_of(cost: float) -> int:
    """The bucket index of *cost* (0 for costs below 1)."""
    return int(math.log2(cost + 1.0) * BUCKETS_PER_DOUBLING)


def bucket_floor(index: int) -> float:
    """The least cost in bucket *index* (the inverse of :func:`bucket_of`)."""
    return float(2.0 ** (index / BUCKETS_PER_DOUBLING)) - 1.0


class LengthPool(PoolBase):
    """Pending items in cost buckets; each batch from one bucket and its neighbours."""

    def __init__(self) -> None:
        super().__init__()
        self._buckets: dict[int, deque[Item[Any, Any]]] = {}
        self._counts: dict[int, int] = {}
        #: The keys of ``_counts`` (the non-empty buckets), kept sorted.
        self._indices: list[int] = []
        #: bucket_floor() of every bucket index seen (computed once per index).
        self._floors: dict[int, float] = {}
        #: Recent mean queue wait of batched items (an exponential moving average).
        self._typical_wait = 0.0
        #: Mean cost of arriving items (a running mean over about the last
        #: ``COST_MEMORY``): a batch of ``max_batch_size`` such items is a full batch's work.
        self._mean_cost = 0.0
        self._arrivals = 0

    def add(self, item: Item[Any, Any]) -> None:
        self._track(item)
        cost = item.cost
        if self._arrivals < COST_MEMORY:
            self._arrivals += 1
        self._mean_cost += (cost - self._mean_cost) / self._arrivals
        index = bucket_of(cost)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = deque()
            self._counts[index] = 0
            bisect.insort(self._indices, index)
            if index not in self._floors:
                self._floors[index] = bucket_floor(index)
        bucket.append(item)
        self._counts[index] += 1

    def _on_remove(self, item: Item[Any, Any], withdrawn: bool) -> None:
        index = bucket_of(item.cost)
        count = self._counts[index] - 1
        if count == 0:
            # Only dead entries are left in this bucket: drop it (a batch being formed
            # from it keeps its own reference to the deque).
            self._drop(index)
            return
        self._counts[index] = count
        bucket = self._buckets[index]
        if withdrawn and len(bucket) > 2 * count + 16:
            self._buckets[index] = deque(i for i in bucket if i.state == POOLED)

    def _on_clear(self) -> None:
        self._buckets.clear()
        self._counts.clear()
        self._indices.clear()

    def _drop(self, index: int) -> None:
        """Forget bucket *index*, whose last live item left."""
        del self._counts[index]
        del self._buckets[index]
        indices = self._indices
        del indices[bisect.bisect_left(indices, index)]

    def take(
        self, now: float, limits: Limits, draining: bool
    ) -> tuple[list[Item[Any, Any]], Release] | None:
        if not self.live:
            return None
        oldest = self.oldest()
        assert oldest is not None
        waited = now - oldest.arrival
        full = self.live >= limits.max_batch_size or (
            limits.max_batch_cost is not None and self.pending_cost >= limits.max_batch_cost
        )
        reason: Release | None
        if draining:
            reason, anchor = "drain", bucket_of(oldest.cost)
        elif waited >= limits.wait and waited >= AGING_FACTOR * self._typical_wait:
            reason, anchor = "timer", bucket_of(oldest.cost)
        elif full:
            reason, anchor = "size", None
        else:
            reason = self._timer_reason(now, limits, draining)
            if reason is None:
                return None
            anchor = bucket_of(oldest.cost)
            if reason == "deadline":
                anchor = self._urgent_bucket(anchor)
        low, high = self._window(anchor, limits.max_batch_size, self._full_load(limits))
        if limits.preferred:
            counts = self._counts
            held = sum(counts.get(index, 0) for index in range(low, high + 1))
            limits = self._cut(reason, now, limits, held)
        if limits.max_batch_cost is None and self.earliest_deadline() == math.inf:
            # The common case, no budget and no caller deadline: the window's items in
            # order, without the per-item checks of _fill.
            batch, by_cost = self._take_window(anchor, low, high, limits.max_batch_size), False
        else:
            batch, by_cost = self._fill(
                self._candidates(anchor, low, high), now, limits, self._releasing(reason, limits)
            )
        if not batch:
            return None
        waits = sum(now - item.arrival for item in batch) / len(batch)
        self._typical_wait += 0.05 * (waits - self._typical_wait)
        if reason == "size" and (by_cost or len(batch) < limits.max_batch_size):
            reason = "cost"  # full by its cost: the budget's, or a full batch's work
        return batch, reason

    def _urgent_bucket(self, default: int) -> int:
        """The bucket of the live item with the soonest deadline."""
        if self.earliest_deadline() == math.inf:
            return default
        return bucket_of(self._deadlines[0][2].cost)

    def _full_load(self, limits: Limits) -> float:
        """
        The padded work that makes a batch however few its items (see ``_window``):
        FULL_LOAD_SHARE of ``max_batch_cost`` when set, else of ``max_batch_size`` items
        of the mean arriving cost; none with preferred batch sizes (fn wants those shapes)
        nor when batches are not padded (``cost_mode="sum"``: nothing to save).
        """
        if limits.preferred or not limits.padded:
            return math.inf
        if limits.max_batch_cost is not None:
            return FULL_LOAD_SHARE * limits.max_batch_cost
        return FULL_LOAD_SHARE * limits.max_batch_size * self._mean_cost

    def _window(self, anchor: int | None, needed: int, load: float) -> tuple[int, int]:
        """
        The narrowest run of buckets that fills a batch (or holds all it can).

        A run fills a batch when it holds *needed* live items, or when its items, counted
        at the least cost of its highest bucket, already weigh *load* (``_full_load``):
        a few long items of one bucket make a batch as heavy as a full one of typical
        items, with far less padding than a full count reaching down for shorter ones.
        With an *anchor*, the run must contain it and stay within SPAN of it. Two
        pointers over the non-empty buckets: O(buckets), once per batch.
        """
        counts = self._counts
        indices = self._indices
        if anchor is not None:
            indices = indices[
                bisect.bisect_left(indices, anchor - SPAN) : bisect.bisect_right(
                    indices, anchor + SPAN
                )
            ]
        floors = self._floors
        if load <= 0.0:
            load = math.inf  # fills by count only (as when no load is set)
        best: tuple[int, int] | None = None
        best_count = 0
        best_fills = False
        total = 0
        first = 0
        # Inline (the loop runs over every bucket once per batch): a run of n items whose
        # highest bucket has floor f fills a batch when n >= needed or n * f >= load.
        for high in indices:
            total += counts[high]
            floor = floors[high]
            while anchor is None or indices[first] < anchor:
                rest = total - counts[indices[first]]
                if rest < needed and rest * floor < load:
                    break
                total = rest
                first += 1
            low = indices[first]
            if anchor is not None and not low <= anchor <= high:
                continue
            count = total if total < needed else needed
            fills = total >= needed or total * floor >= load
            if best is None:
                better = True
            elif fills != best_fills:
                better = fills
            elif fills:  # both fill a batch: the narrower (less padding), then the larger
                width, best_width = high - low, best[1] - best[0]
                better = width < best_width or (width == best_width and count > best_count)
            else:  # neither: the larger, then the narrower
                better = count > best_count or (
                    count == best_count and high - low < best[1] - best[0]
                )
            if better:
                best, best_count, best_fills = (low, high), count, fills
        if best is None:  # the anchor's bucket alone
            assert anchor is not None
            return anchor, anchor
        return best

    def _take_window(
        self, anchor: int | None, low: int, high: int, limit: int
    ) -> list[Item[Any, Any]]:
        """
        Up to *limit* live items of buckets low..high, in :meth:`_candidates`' order,
        taken out of the pool (``_fill`` without deadlines or budget, a bucket at a time).
        """
        buckets = self._buckets
        counts = self._counts
        batch: list[Item[Any, Any]] = []
        append = batch.append
        cost = 0.0
        for index in _nearest_first(anchor, low, high):
            bucket = buckets.get(index)
            if bucket is None:
                continue
            popleft = bucket.popleft
            before = len(batch)
            while bucket and len(batch) < limit:
                item = popleft()
                if item.state == POOLED:
                    append(item)
                    cost += item.cost
            taken = len(batch) - before
            if taken:
                left = counts[index] - taken
                if left:
                    counts[index] = left
                else:  # only dead entries may be left: drop the bucket (as _on_remove)
                    self._drop(index)
            if len(batch) >= limit:
                break
        self.live -= len(batch)
        self.pending_cost -= cost
        return batch

    def _candidates(self, anchor: int | None, low: int, high: int) -> Iterator[Item[Any, Any]]:
        """Items of buckets low..high, the anchor's first, then nearest first; oldest first."""
        buckets = self._buckets
        for index in _nearest_first(anchor, low, high):
            bucket = buckets.get(index)
            # Entries leave a bucket once _fill has taken (or skipped) them; the one that
            # did not fit stays, as the generator is never resumed after it.
            while bucket:
                yield bucket[0]
                bucket.popleft()


def _nearest_first(anchor: int | None, low: int, high: int) -> list[int]:
    """Bucket indices low..high: the anchor's (else *high*) first, then nearest first."""
    center = anchor if anchor is not None else high
    return sorted(range(low, high + 1), key=lambda index: (abs(index - center), index))
