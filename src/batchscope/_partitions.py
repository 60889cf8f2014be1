"""
Partitions: ``partition=`` keeps items of different keys out of each other's batches.

A :class:`PartitionedPool` holds one pool of the scope's policy (FIFO, priority, length
buckets) per partition key and is itself a :class:`~batchscope._pending.Pool`: each
partition has its own oldest-item timer (``max_wait``), deadlines and cost budget, and
a batch never mixes keys. The partitions share the executor slots: when a slot is free,
the partition that is *most overdue* goes first, the one whose batch came due the
earliest (its oldest item's ``arrival + max_wait``, or a caller's deadline release). A
partition that fills a batch before its timer ranks by that timer too, so a rare
partition whose oldest item has waited its ``max_wait`` is served before a busy one's
next fresh full batch: nobody starves, however uneven the traffic.

Memory stays bounded by the live items: a partition's pool is dropped as soon as it is
empty, so a stream of one-off keys leaves nothing behind. Which key an item belongs to
is decided once, by its caller, when it is queued (``Engine.queue``): a partition
function that raises or returns an unhashable key fails that item alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

from ._items import Item
from ._pending import Limits, Pool, Release
from ._statistics import PartitionCounts

__all__ = ["PartitionedPool"]


class PartitionedPool:
    """One pool per partition key; batches from one partition, the most overdue first."""

    def __init__(self, new_pool: Callable[[], Pool], counts: PartitionCounts) -> None:
        #: Live items over every partition.
        self.live: int = 0
        #: Their total cost.
        self.pending_cost: float = 0.0
        self.expired: list[Item[Any, Any]] = []
        self._new_pool = new_pool
        self._counts = counts
        self._pools: dict[Hashable, Pool] = {}

    @property
    def partitions(self) -> int:
        """Partitions with live items now."""
        return len(self._pools)

    def add(self, item: Item[Any, Any]) -> None:
        pools = self._pools
        key = item.partition
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = self._new_pool()
        pool.add(item)
        self.live += 1
        self.pending_cost += item.cost

    def discard(self, item: Item[Any, Any]) -> None:
        key = item.partition
        pool = self._pools[key]
        pool.discard(item)
        self.live -= 1
        self.pending_cost -= item.cost
        if not pool.live:
            del self._pools[key]

    def due_at(self, limits: Limits) -> float:
        due = math.inf
        for pool in self._pools.values():
            due = min(due, pool.due_at(limits))
        return due

    def earliest_deadline(self) -> float:
        deadline = math.inf
        for pool in self._pools.values():
            deadline = min(deadline, pool.earliest_deadline())
        return deadline

    def take(
        self, now: float, limits: Limits, draining: bool
    ) -> tuple[list[Item[Any, Any]], Release] | None:
        if not self.live:
            return None
        # Most overdue first: by when each partition's batch came (or comes) due.
        ranked = sorted(self._pools.items(), key=lambda entry: entry[1].due_at(limits))
        for key, pool in ranked:
            live, cost = pool.live, pool.pending_cost
            taken = pool.take(now, limits, draining)
            self.live += pool.live - live
            self.pending_cost += pool.pending_cost - cost
            if pool.expired:
                self.expired.extend(pool.expired)
                pool.expired.clear()
            if not pool.live:
                del self._pools[key]
            if taken is not None:
                self._counts.record(key, len(taken[0]))
                return taken
        return None

    def clear(self) -> list[Item[Any, Any]]:
        items: list[Item[Any, Any]] = []
        for pool in self._pools.values():
            items.extend(pool.clear())
        self._pools.clear()
        self.live = 0
        self.pending_cost = 0.0
        return items
