"""
Statistics: the live counters a scope keeps, and the frozen snapshot users read.

The counters are plain integers bumped on the hot path (no locks: everything runs on the
event loop). ``statistics()`` copies them into a frozen :class:`BatchStatistics`, the
AnyIO/Trio ``statistics()`` convention. Percentiles are over the most recent
``SAMPLES`` items.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Collection, Hashable, Mapping
from types import MappingProxyType
from typing import final, get_args

import attrs

from ._hooks import ReleaseReason

__all__ = [
    "OTHER_PARTITIONS",
    "SAMPLES",
    "TOP_PARTITIONS",
    "BatchStatistics",
    "PartitionCounts",
    "PartitionStatistics",
    "Percentiles",
    "Recorder",
]

#: How many recent items the latency and queue-wait percentiles are computed over.
SAMPLES = 10_000

RELEASE_REASONS: tuple[ReleaseReason, ...] = get_args(ReleaseReason)

#: ``statistics().partitions`` shows this many partitions, the busiest (by items) ...
TOP_PARTITIONS = 16
#: ... and sums every other one under this key.
OTHER_PARTITIONS = "(other)"
#: The counters follow at most this many partitions; past it, the least busy half are
#: summed into :data:`OTHER_PARTITIONS` for good (one that comes back counts afresh).
TRACKED_PARTITIONS = 4 * TOP_PARTITIONS


@final
@attrs.frozen
class PartitionStatistics:
    """
    One partition's share of a scope's batches (``BatchStatistics.partitions``).

    .. versionadded:: 0.2.0
    """

    #: Batches dispatched from this partition.
    batches: int
    #: Items in them.
    items: int

    @property
    def mean_batch_size(self) -> float:
        """Mean items per batch (0.0 before the first batch)."""
        return self.items / self.batches if self.batches else 0.0


class PartitionCounts:
    """Batches and items per partition key, with bounded memory (see TRACKED_PARTITIONS)."""

    __slots__ = ("_counts", "_other")

    def __init__(self) -> None:
        self._counts: dict[Hashable, list[int]] = {}
        self._other = [0, 0]

    def record(self, key: Hashable, size: int) -> None:
        """Count one dispatched batch of *size* items from partition *key*."""
        counts = self._counts
        entry = counts.get(key)
        if entry is None:
            if len(counts) >= TRACKED_PARTITIONS:
                self._fold(TRACKED_PARTITIONS // 2)
                counts = self._counts
            entry = counts[key] = [0, 0]
        entry[0] += 1
        entry[1] += size

    def _fold(self, keep: int) -> None:
        """Sum all but the *keep* busiest partitions into the other bucket."""
        ranked = sorted(self._counts.items(), key=lambda pair: pair[1][1], reverse=True)
        other = self._other
        for _, (batches, items) in ranked[keep:]:
            other[0] += batches
            other[1] += items
        self._counts = dict(ranked[:keep])

    def snapshot(self) -> Mapping[Hashable, PartitionStatistics]:
        """The busiest :data:`TOP_PARTITIONS` and the rest summed, read-only."""
        ranked = sorted(self._counts.items(), key=lambda pair: pair[1][1], reverse=True)
        shown: dict[Hashable, PartitionStatistics] = {
            key: PartitionStatistics(batches, items)
            for key, (batches, items) in ranked[:TOP_PARTITIONS]
        }
        batches, items = self._other
        for _, (more_batches, more_items) in ranked[TOP_PARTITIONS:]:
            batches += more_batches
            items += more_items
        if batches:
            shown[OTHER_PARTITIONS] = PartitionStatistics(batches, items)
        return MappingProxyType(shown)


@final
@attrs.frozen
class Percentiles:
    """
    Percentiles of a duration in milliseconds (``nan`` before there is any sample).
    """

    #: Median.
    p50: float
    #: 90th percentile.
    p90: float
    #: 99th percentile.
    p99: float

    @classmethod
    def of(cls, samples: Collection[float]) -> Percentiles:
        """Nearest-rank percentiles of *samples* (seconds), in milliseconds."""
        if not samples:
            return cls(math.nan, math.nan, math.nan)
        ordered = sorted(samples)
        n = len(ordered)

        def rank(q: float) -> float:
            return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000.0

        return cls(rank(0.50), rank(0.90), rank(0.99))


@final
@attrs.frozen(kw_only=True)
class BatchStatistics:
    """
    A snapshot of a scope's counters, returned by :meth:`BatchScope.statistics`.

    At every moment, ``submitted == completed + failed + cancelled + rejected + admitting
    + pending + running``; after the scope has exited, ``admitting``, ``pending`` and
    ``running`` are 0. Each counter says what the caller saw: an item whose result arrived
    as its caller was cancelled counts as ``cancelled``, whatever fn returned for it.
    """

    #: ``submit()`` calls (and items of ``submit_many``/``map``) made while the scope was open.
    submitted: int
    #: Items whose caller got a result.
    completed: int
    #: Items whose caller got an exception (from fn, a mismatch, or the scope failing).
    failed: int
    #: Items whose caller was cancelled or timed out (or left them) instead of seeing them end.
    cancelled: int
    #: Items refused before they were queued (queue full, scope closing).
    rejected: int
    #: Calls not yet queued (waiting for room, or for an async cache look-up).
    admitting: int
    #: Items queued and not yet dispatched.
    pending: int
    #: Items in batches that are running now (or formed for the next free slot), whose
    #: callers still wait.
    running: int
    #: Items waiting in the queue right now (the same count as ``pending``).
    queue_size: int
    #: Batches running now.
    in_flight: int
    #: Batches dispatched so far.
    batches: int
    #: Mean number of items per dispatched batch (0.0 before the first batch).
    mean_batch_size: float
    #: ``(size, count)`` pairs, by size: how many batches had each size.
    batch_size_histogram: tuple[tuple[int, int], ...]
    #: Batches released per reason: ``size``, ``cost``, ``timer``, ``deadline``, ``drain``,
    #: ``early``.
    release_reasons: Mapping[ReleaseReason, int] = attrs.field(hash=False)
    #: Time from submit to dispatch, over recent items.
    queue_wait_ms: Percentiles
    #: Time from submit to the end of the item's batch, over recent items.
    latency_ms: Percentiles
    #: Mean run time of a finished batch in milliseconds (0.0 before the first).
    mean_batch_ms: float
    #: Real cost over padded cost of all batches (1.0 when no ``cost`` is set).
    padding_efficiency: float
    #: Submits answered from the cache.
    cache_hits: int
    #: Cache look-ups that missed.
    cache_misses: int
    #: Submits that shared the computation of an identical pending item.
    deduplicated: int
    #: Extra calls of fn made by retries.
    retries: int
    #: Extra calls of fn made to isolate failing items (``isolate_failures``).
    isolation_calls: int
    #: Times the scheduler task woke up (an arrival, a timer, a freed slot); an idle
    #: scope adds none.
    scheduler_wakeups: int
    #: With ``partition=``: batches and items per partition key, for the busiest
    #: ``16`` partitions (by items), every other one summed under the key ``"(other)"``;
    #: empty without ``partition``. Read-only. (Added in 0.2.0.)
    partitions: Mapping[Hashable, PartitionStatistics] = attrs.field(hash=False)
    #: Streamed rows (an async-generator fn): time from submit to the row's first output.
    first_output_ms: Percentiles
    #: Streamed rows: time between consecutive outputs of one row.
    output_gap_ms: Percentiles
    #: The most items a batch may hold now: ``max_batch_size``, or what
    #: ``max_batch_size="auto"`` and the out-of-memory back-off make of it.
    batch_size_cap: int = 0
    #: Batches (or halves of them) split in two because fn raised one of ``oom_errors``.
    oom_splits: int = 0
    #: Seconds (on the loop's clock) during which at least one batch was running, since
    #: the scope opened. (Added in 0.2.0.)
    busy_seconds: float = 0.0
    #: ``busy_seconds`` over the seconds the scope has been open (until it exited): the
    #: share of time the batch function had work; 0.0 before it opens. Near 1.0 means
    #: saturated: more load only lengthens the queue. (Added in 0.2.0.)
    busy_fraction: float = 0.0


@attrs.define(eq=False)
class Recorder:
    """The live counters of one scope; mutated in place on the event loop."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0
    admitting: int = 0
    pending: int = 0
    running: int = 0
    in_flight: int = 0
    batches: int = 0
    batched_items: int = 0
    finished_batches: int = 0
    batch_seconds: float = 0.0
    real_cost: float = 0.0
    padded_cost: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    deduplicated: int = 0
    retries: int = 0
    isolation_calls: int = 0
    scheduler_wakeups: int = 0
    batch_size_cap: int = 0
    oom_splits: int = 0
    sizes: Counter[int] = attrs.Factory(Counter[int])
    reasons: dict[ReleaseReason, int] = attrs.Factory(lambda: dict.fromkeys(RELEASE_REASONS, 0))
    queue_waits: deque[float] = attrs.Factory(lambda: deque(maxlen=SAMPLES))
    latencies: deque[float] = attrs.Factory(lambda: deque(maxlen=SAMPLES))
    partitions: PartitionCounts = attrs.Factory(PartitionCounts)
    first_outputs: deque[float] = attrs.Factory(lambda: deque(maxlen=SAMPLES))
    output_gaps: deque[float] = attrs.Factory(lambda: deque(maxlen=SAMPLES))
    #: Busy time of the batches that ended while no other ran (see ``busy_since``).
    busy_seconds: float = 0.0
    #: When ``in_flight`` last went from 0 to 1.
    busy_since: float = 0.0
    #: When the scope opened and exited (None before).
    opened_at: float | None = None
    closed_at: float | None = None

    def busy(self, now: float) -> tuple[float, float]:
        """Busy seconds and busy fraction at *now* (the scope's exit once it exited)."""
        opened = self.opened_at
        if opened is None:
            return 0.0, 0.0
        if self.closed_at is not None:
            now = self.closed_at
        busy = self.busy_seconds
        if self.in_flight:
            busy += now - self.busy_since
        elapsed = now - opened
        return busy, (min(1.0, busy / elapsed) if elapsed > 0 else 0.0)

    def snapshot(self, now: float = 0.0) -> BatchStatistics:
        """Freeze the counters into a :class:`BatchStatistics` (*now*: the loop's time)."""
        busy_seconds, busy_fraction = self.busy(now)
        return BatchStatistics(
            submitted=self.submitted,
            completed=self.completed,
            failed=self.failed,
            cancelled=self.cancelled,
            rejected=self.rejected,
            admitting=self.admitting,
            pending=self.pending,
            running=self.running,
            queue_size=self.pending,
            in_flight=self.in_flight,
            batches=self.batches,
            mean_batch_size=self.batched_items / self.batches if self.batches else 0.0,
            batch_size_histogram=tuple(sorted(self.sizes.items())),
            release_reasons=MappingProxyType(dict(self.reasons)),
            queue_wait_ms=Percentiles.of(self.queue_waits),
            latency_ms=Percentiles.of(self.latencies),
            mean_batch_ms=(
                self.batch_seconds * 1000.0 / self.finished_batches
                if self.finished_batches
                else 0.0
            ),
            padding_efficiency=(self.real_cost / self.padded_cost if self.padded_cost else 1.0),
            cache_hits=self.cache_hits,
            cache_misses=self.cache_misses,
            deduplicated=self.deduplicated,
            retries=self.retries,
            isolation_calls=self.isolation_calls,
            scheduler_wakeups=self.scheduler_wakeups,
            partitions=self.partitions.snapshot(),
            first_output_ms=Percentiles.of(self.first_outputs),
            output_gap_ms=Percentiles.of(self.output_gaps),
            batch_size_cap=self.batch_size_cap,
            oom_splits=self.oom_splits,
            busy_seconds=busy_seconds,
            busy_fraction=busy_fraction,
        )
