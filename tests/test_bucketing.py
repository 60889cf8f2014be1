"""The pools as pure logic: budgets, bucketing, aging, priorities (Hypothesis)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscope._bucketing import AGING_FACTOR, LengthPool, bucket_of
from batchscope._items import POOLED, RUNNING, WITHDRAWN, CallbackItem, Item
from batchscope._pending import FifoPool, Limits, Pool, PriorityPool


def make_item(
    value: int, cost: float, arrival: float, priority: float = 0
) -> CallbackItem[Any, Any]:
    return CallbackItem(value, priority, cost, arrival, math.inf, value, lambda item: None)


def limits(
    size: int, budget: float | None = None, padded: bool = True, wait: float = 1.0
) -> Limits:
    return Limits(max_batch_size=size, wait=wait, max_batch_cost=budget, padded=padded, runtime=0.0)


def batch_cost(costs: list[float], padded: bool) -> float:
    return len(costs) * max(costs) if padded else sum(costs)


POOLS: dict[str, Callable[[], Pool]] = {
    "fifo": FifoPool,
    "length": LengthPool,
    "priority": lambda: PriorityPool(aging=0.1),
}

item_specs = st.lists(
    st.tuples(st.integers(0, 600), st.floats(0, 5), st.integers(0, 3), st.booleans()),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(sorted(POOLS)),
    specs=item_specs,
    size=st.integers(1, 16),
    budget=st.one_of(st.none(), st.integers(1, 2000)),
    padded=st.booleans(),
)
def test_every_item_in_exactly_one_batch_and_budgets_hold(
    policy: str,
    specs: list[tuple[int, float, int, bool]],
    size: int,
    budget: int | None,
    padded: bool,
) -> None:
    """Draining any pool puts each live item in exactly one batch within size and budget."""
    pool = POOLS[policy]()
    items = [make_item(i, cost, arrival, prio) for i, (cost, arrival, prio, _) in enumerate(specs)]
    for item in sorted(items, key=lambda i: i.arrival):
        item.state = 0
        pool.add(item)
    withdrawn = set()
    for item, (_, _, _, withdraw) in zip(items, specs, strict=True):
        if withdraw:
            item.state = WITHDRAWN
            pool.discard(item)
            withdrawn.add(item.index)
    taken: list[int] = []
    rounds = 0
    while pool.live:
        rounds += 1
        assert rounds <= len(items), "the pool does not make progress (livelock)"
        result = pool.take(10.0, limits(size, budget, padded), draining=True)
        assert result is not None
        batch, reason = result
        assert reason == "drain" or reason in ("size", "cost")
        assert 1 <= len(batch) <= size
        if budget is not None and len(batch) > 1:
            assert batch_cost([i.cost for i in batch], padded) <= budget
        for taken_item in batch:
            taken_item.state = RUNNING
        taken += [taken_item.value for taken_item in batch]
    assert sorted(taken) == sorted(set(range(len(items))) - withdrawn)
    assert pool.take(10.0, limits(size, budget, padded), draining=True) is None


@pytest.mark.parametrize("policy", sorted(POOLS))
def test_oversize_item_runs_alone(policy: str) -> None:
    """An item over budget on its own goes as a batch of one, never stuck (no livelock)."""
    pool = POOLS[policy]()
    for i, cost in enumerate([5, 500, 5]):
        pool.add(make_item(i, cost, arrival=float(i)))
    sizes = []
    while pool.live:
        result = pool.take(10.0, limits(8, budget=100), draining=True)
        assert result is not None
        sizes.append(sorted(item.cost for item in result[0]))
        for item in result[0]:
            item.state = RUNNING
    assert [500.0] in sizes


def test_fifo_full_by_cost_is_due_at_once() -> None:
    """FIFO: once the oldest items fill the cost budget, a batch is due without a timer."""
    pool = FifoPool()
    lim = limits(32, budget=1000, padded=True)
    pool.add(make_item(0, 400, 0.0))
    pool.add(make_item(1, 400, 0.0))
    assert pool.take(0.0, lim, draining=False) is None  # 2 * 400 = 800: room for more
    pool.add(make_item(2, 400, 0.0))  # 3 * 400 = 1200 > 1000: the first two are a batch
    result = pool.take(0.0, lim, draining=False)
    assert result is not None
    assert [i.value for i in result[0]] == [0, 1] and result[1] == "cost"


def test_length_batches_hold_similar_costs() -> None:
    """policy='length': with a full batch's worth pending, the batch comes from one bucket."""
    pool = LengthPool()
    for i in range(64):
        pool.add(make_item(i, cost=10 if i % 2 else 300, arrival=i * 0.001))
    result = pool.take(0.0, limits(32, wait=1.0), draining=False)
    assert result is not None
    batch, reason = result
    assert reason == "size"
    assert len({bucket_of(item.cost) for item in batch}) == 1


def test_length_few_long_items_of_one_bucket_make_a_batch() -> None:
    """
    policy='length': a bucket whose few items weigh half a full batch of typical items goes
    alone, ahead of a full count that spans more buckets (the old rule took the count).
    """
    pool = LengthPool()
    # 32 short items spread over many buckets (10..41) and 8 long ones of one bucket:
    # the mean cost is about 100, a full batch of it 3,200, and 8 * 400 is above half.
    for i in range(32):
        pool.add(make_item(i, cost=10 + i, arrival=i * 0.001))
    for i in range(32, 40):
        pool.add(make_item(i, cost=400, arrival=i * 0.001))
    result = pool.take(0.05, limits(32, wait=1.0), draining=False)
    assert result is not None
    batch, reason = result
    assert [item.value for item in batch] == list(range(32, 40))
    assert reason == "cost"  # full by its work, not by its count
    assert pool.live == 32


def test_length_light_bucket_waits_for_a_full_count() -> None:
    """policy='length': a few items that weigh less than half a full batch make none alone."""
    pool = LengthPool()
    for i in range(40):
        pool.add(make_item(i, cost=50, arrival=i * 0.001))
    for i in range(40, 43):
        pool.add(make_item(i, cost=60, arrival=i * 0.001))
    result = pool.take(0.05, limits(32, wait=1.0), draining=False)
    assert result is not None
    batch, reason = result
    assert reason == "size"
    assert len(batch) == 32 and {item.cost for item in batch} == {50}


def test_length_overdue_long_item_takes_only_its_heavy_bucket() -> None:
    """
    policy='length': an overdue long item goes with the items of its own bucket when they
    weigh enough, not with a full count reaching down to half its cost.
    """
    pool = LengthPool()
    pool.add(make_item(0, cost=400, arrival=0.0))  # the oldest: overdue at t=2
    for i in range(1, 8):
        pool.add(make_item(i, cost=400 + i, arrival=0.5))
    for i in range(8, 32):
        pool.add(make_item(i, cost=200 + 8 * i, arrival=0.5))  # 264..448, wider buckets
    for i in range(32, 92):
        pool.add(make_item(i, cost=10, arrival=0.5))
    result = pool.take(2.0, limits(32, wait=1.0), draining=False)
    assert result is not None
    batch, reason = result
    assert reason == "timer"
    costs = sorted(item.cost for item in batch)
    assert batch[0].value == 0
    assert bucket_of(costs[0]) == bucket_of(costs[-1]) == bucket_of(400)
    assert len(batch) < 32


@settings(max_examples=100, deadline=None)
@given(costs=st.lists(st.integers(1, 512), min_size=2, max_size=200), size=st.integers(2, 32))
def test_length_overdue_oldest_item_is_in_the_next_batch(costs: list[int], size: int) -> None:
    """
    Aging: once the oldest item is overdue — it has waited max_wait and AGING_FACTOR
    times the recent typical queue wait — the next batch includes it. (Under a backlog
    where every item waits about as long, it is not overdue, and packing goes on.)
    """
    pool = LengthPool()
    items: list[Item[Any, Any]] = [
        make_item(i, cost, arrival=i * 0.001) for i, cost in enumerate(costs)
    ]
    for item in items:
        pool.add(item)
    now = 0.0
    overdue_takes = 0
    while pool.live:
        now += 0.5
        oldest = pool.oldest()
        assert oldest is not None
        waited = now - oldest.arrival
        overdue = waited >= 0.25 and waited >= AGING_FACTOR * pool._typical_wait
        result = pool.take(now, limits(size, wait=0.25), draining=False)
        assert result is not None
        if overdue:
            overdue_takes += 1
            assert oldest in result[0]
            assert result[1] == "timer"
        for item in result[0]:
            item.state = RUNNING
    assert overdue_takes >= 1  # the first take: no typical wait yet


def test_priority_lower_first_fifo_within_aging_across() -> None:
    """policy='priority': lower priority value first, FIFO within one, aging lets old ones up."""
    pool = PriorityPool(aging=0.1)
    pool.add(make_item(0, 1, arrival=0.00, priority=1))  # rank 0.10
    pool.add(make_item(1, 1, arrival=0.01, priority=0))  # rank 0.01
    pool.add(make_item(2, 1, arrival=0.02, priority=0))  # rank 0.02
    pool.add(make_item(3, 1, arrival=0.20, priority=0))  # rank 0.20: after the aged item 0
    order = []
    while pool.live:
        result = pool.take(1.0, limits(1), draining=True)
        assert result is not None
        order += [i.value for i in result[0]]
        for item in result[0]:
            item.state = RUNNING
    assert order == [1, 2, 0, 3]


def test_withdrawn_items_are_compacted() -> None:
    """Many withdrawals do not keep dead entries around (memory follows live items)."""
    pool = LengthPool()
    items = [make_item(i, 7, arrival=float(i)) for i in range(1000)]
    for item in items:
        pool.add(item)
    for item in items[:-10]:
        item.state = WITHDRAWN
        pool.discard(item)
    assert pool.live == 10
    assert len(pool._order) < 200
    assert sum(len(b) for b in pool._buckets.values()) < 200
    assert all(i.state == POOLED for i in items[-10:])


def test_fifo_cost_check_is_constant_per_arrival(monkeypatch: pytest.MonkeyPatch) -> None:
    """FIFO with a cost budget never recounts the forming batch per arrival (O(1) each)."""
    from batchscope import _pending

    checks = 0
    fits = _pending.Budget.fits

    def counting_fits(self: _pending.Budget, cost: float) -> bool:
        nonlocal checks
        checks += 1
        return fits(self, cost)

    monkeypatch.setattr(_pending.Budget, "fits", counting_fits)
    pool = FifoPool()
    for i in range(200):
        pool.add(make_item(i, cost=1, arrival=0.0))
        # A fresh Limits each time, as the scheduler builds one per look.
        assert pool.take(0.0, limits(1000, budget=10_000, wait=1.0), draining=False) is None
    assert checks <= 2 * 200  # recounting per arrival would be about 200 * 201 / 2


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 600)),
            st.tuples(st.just("withdraw"), st.integers(0, 1000)),
            st.tuples(st.just("take"), st.integers(1, 12)),
        ),
        max_size=120,
    )
)
def test_length_pool_books_stay_true_through_arrivals_withdrawals_and_takes(
    ops: list[tuple[str, int]],
) -> None:
    """
    Interleaved arrivals, withdrawals and batches (the no-deadline, no-budget path that
    takes a bucket at a time): each bucket's count is its live items, the sorted bucket
    index matches, and every item that was not withdrawn is taken exactly once. A twin
    pool whose callers all have a distant deadline (so batches go through ``_fill``, item
    by item) forms the very same batches.
    """
    pool = LengthPool()
    twin = LengthPool()
    twins: dict[int, Item[Any, Any]] = {}
    live: list[Item[Any, Any]] = []
    withdrawn: set[int] = set()
    taken: list[int] = []
    added = 0
    clock = 0.0

    def check() -> None:
        buckets = pool._buckets
        counts = pool._counts
        assert pool._indices == sorted(counts)
        assert set(buckets) == set(counts)
        for index, bucket in buckets.items():
            alive = [item for item in bucket if item.state == POOLED]
            assert len(alive) == counts[index] > 0
            assert all(bucket_of(item.cost) == index for item in alive)
        assert pool.live == len(live) == sum(counts.values())

    def take(size: int, draining: bool) -> None:
        result = pool.take(clock, limits(size, wait=5.0), draining=draining)
        twin_result = twin.take(clock, limits(size, wait=5.0), draining=draining)
        if result is None:
            assert twin_result is None
            assert not draining, "a draining pool with live items gave no batch"
            return
        assert twin_result is not None
        assert [i.value for i in twin_result[0]] == [i.value for i in result[0]]
        assert twin_result[1] == result[1]
        for item in twin_result[0]:
            item.state = RUNNING
        batch, _ = result
        assert 1 <= len(batch) <= size
        for item in batch:
            assert item.state == POOLED
            item.state = RUNNING
            live.remove(item)
        taken.extend(item.value for item in batch)

    for op, arg in ops:
        clock += 1.0
        if op == "add":
            arrived = make_item(added, float(arg), clock)
            twins[added] = make_item(added, float(arg), clock)
            twins[added].deadline = 1e9  # far off: judged, never close
            added += 1
            pool.add(arrived)
            twin.add(twins[arrived.value])
            live.append(arrived)
        elif op == "withdraw" and live:
            leaving = live.pop(arg % len(live))
            leaving.state = WITHDRAWN
            pool.discard(leaving)
            twins[leaving.value].state = WITHDRAWN
            twin.discard(twins[leaving.value])
            withdrawn.add(leaving.value)
        elif op == "take":
            take(arg, draining=False)
        check()
    while pool.live:
        take(8, draining=True)
        check()
    assert sorted(taken) == sorted(set(range(added)) - withdrawn)
