"""
Length bucketing: ``policy="length"`` groups items of similar cost into each batch.

Padded models pay for ``len(batch) * max(cost)``, so a batch should hold items of nearly
the same length. Items go into fine geometric buckets (each ``2 ** (1/8)``, about 9%,
wider than the one below); a batch is taken from one *anchor* bucket and, when that is
not enough, from its nearest neighbours, never more than a factor of two away.

Which batch goes next, when an executor slot is free:

1. the oldest item is *overdue* — it has waited ``max_wait`` and ``AGING_FACTOR`` times
   the recent typical queue wait: the tightest window of buckets around it (this is the
   aging: long items never starve behind a stream of short ones, yet under a steady
   backlog, where every item waits about as long, packing is not given up);
2. enough items are pending for a full batch (by size or cost): the tightest window of
   adjacent buckets that holds a full batch (the smallest cost ratio, so the least
   padding);
3. the oldest item has waited ``max_wait`` (a partial batch) or a caller's deadline
   demands it: the tightest window around that item.

Windows never reach further than a factor of two from their anchor.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Any

from ._items import POOLED, Item
from ._pending import Limits, PoolBase, Release

__all__ = ["AGING_FACTOR", "BUCKETS_PER_DOUBLING", "LengthPool", "bucket_of"]

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


def bucket_of(cost: float) -> int:
    """The bucket index of *cost* (0 for costs below 1)."""
    return int(math.log2(cost + 1.0) * BUCKETS_PER_DOUBLING)


class LengthPool(PoolBase):
    """Pending items in cost buckets; each batch from one bucket and its neighbours."""

    def __init__(self) -> None:
        super().__init__()
        self._buckets: dict[int, deque[Item[Any, Any]]] = {}
        self._counts: dict[int, int] = {}
        #: Recent mean queue wait of batched items (an exponential moving average).
        self._typical_wait = 0.0

    def add(self, item: Item[Any, Any]) -> None:
        self._track(item)
        index = bucket_of(item.cost)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = deque()
            self._counts[index] = 0
        bucket.append(item)
        self._counts[index] += 1

    def _on_remove(self, item: Item[Any, Any], withdrawn: bool) -> None:
        index = bucket_of(item.cost)
        count = self._counts[index] - 1
        if count == 0:
            # Only dead entries are left in this bucket: drop it (a batch being formed
            # from it keeps its own reference to the deque).
            del self._counts[index]
            del self._buckets[index]
            return
        self._counts[index] = count
        bucket = self._buckets[index]
        if withdrawn and len(bucket) > 2 * count + 16:
            self._buckets[index] = deque(i for i in bucket if i.state == POOLED)

    def _on_clear(self) -> None:
        self._buckets.clear()
        self._counts.clear()

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
        low, high = self._window(anchor, limits.max_batch_size)
        if limits.preferred:
            counts = self._counts
            held = sum(counts.get(index, 0) for index in range(low, high + 1))
            limits = self._cut(reason, now, limits, held)
        batch, by_cost = self._fill(
            self._candidates(anchor, low, high), now, limits, self._releasing(reason, limits)
        )
        if not batch:
            return None
        waits = sum(now - item.arrival for item in batch) / len(batch)
        self._typical_wait += 0.05 * (waits - self._typical_wait)
        if reason == "size" and by_cost:
            reason = "cost"
        return batch, reason

    def _urgent_bucket(self, default: int) -> int:
        """The bucket of the live item with the soonest deadline."""
        if self.earliest_deadline() == math.inf:
            return default
        return bucket_of(self._deadlines[0][2].cost)

    def _window(self, anchor: int | None, needed: int) -> tuple[int, int]:
        """
        The narrowest run of buckets holding *needed* live items (or all it can).

        With an *anchor*, the run must contain it and stay within SPAN of it. Two
        pointers over the non-empty buckets: O(buckets), once per batch.
        """
        indices = sorted(self._counts)
        if anchor is not None:
            indices = [i for i in indices if abs(i - anchor) <= SPAN]
        counts = self._counts
        best: tuple[int, int] | None = None
        best_count = 0
        total = 0
        first = 0
        for high in indices:
            total += counts[high]
            while total - counts[indices[first]] >= needed and (
                anchor is None or indices[first] < anchor
            ):
                total -= counts[indices[first]]
                first += 1
            low = indices[first]
            if anchor is not None and not low <= anchor <= high:
                continue
            if (
                best is None
                or min(total, needed) > best_count
                or (min(total, needed) == best_count and high - low < best[1] - best[0])
            ):
                best, best_count = (low, high), min(total, needed)
        if best is None:  # the anchor's bucket alone
            assert anchor is not None
            return anchor, anchor
        return best

    def _candidates(self, anchor: int | None, low: int, high: int) -> Iterator[Item[Any, Any]]:
        """Items of buckets low..high, the anchor's first, then nearest first; oldest first."""
        buckets = self._buckets
        center = anchor if anchor is not None else high
        order = sorted(range(low, high + 1), key=lambda index: (abs(index - center), index))
        for index in order:
            bucket = buckets.get(index)
            # Entries leave a bucket once _fill has taken (or skipped) them; the one that
            # did not fit stays, as the generator is never resumed after it.
            while bucket:
                yield bucket[0]
                bucket.popleft()
