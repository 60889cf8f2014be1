"""When batches go: size, timer, drain, pull-based growth, idleness (virtual time)."""

from __future__ import annotations

import random
import statistics

import anyio
import pytest

import batchscope as bs
from batchscope._runtime import RunTimeModel
from batchscope.testing import FakeBatchFunction

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def test_full_batch_goes_at_once() -> None:
    """max_batch_size pending items are dispatched immediately, without waiting max_wait."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_batch_size=4, max_wait=10.0) as scope:
        start = anyio.current_time()
        assert await scope.submit_many(range(4)) == [0, 1, 2, 3]
        assert anyio.current_time() == start
    assert fake.batches == [[0, 1, 2, 3]]
    assert scope.statistics().release_reasons["size"] == 1


async def test_lone_item_waits_max_wait_once() -> None:
    """A lone item completes after max_wait + fn time, measured from its arrival, not twice."""
    fake = FakeBatchFunction[int, int](delay=0.002)
    async with bs.BatchScope(fake, max_wait=0.010) as scope:
        await anyio.sleep(1.0)  # an idle scope first: nothing may be "already running"
        start = anyio.current_time()
        assert await scope.submit(7) == 7
        assert anyio.current_time() - start == pytest.approx(0.012)
        assert fake.call_times == [pytest.approx(start + 0.010)]
    assert scope.statistics().release_reasons["timer"] == 1


async def test_max_wait_counts_from_oldest_arrival() -> None:
    """A partial batch goes when its oldest item has waited max_wait, taking later items along."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_wait=0.010) as scope, anyio.create_task_group() as tg:
        start = anyio.current_time()
        tg.start_soon(scope.submit, 1)
        await anyio.sleep(0.004)
        tg.start_soon(scope.submit, 2)
    assert fake.batches == [[1, 2]]
    assert fake.call_times == [pytest.approx(start + 0.010)]


async def test_zero_max_wait_dispatches_without_waiting() -> None:
    """max_wait=0 sends each arrival at once (time does not advance)."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_wait=0) as scope:
        start = anyio.current_time()
        assert await scope.submit(1) == 1
        assert anyio.current_time() == start


async def test_items_accumulate_while_the_slot_is_busy() -> None:
    """Pull-based: while the only slot is busy, arrivals accumulate into the next, larger batch."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, max_batch_size=100, max_wait=0.001) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit, 0)
            await anyio.sleep(0.5)  # batch [0] is running now
            for i in range(1, 11):
                tg.start_soon(scope.submit, i)
        stats = scope.statistics()
    assert [sorted(batch) for batch in fake.batches] == [[0], list(range(1, 11))]
    # The second batch left the moment the slot freed, at t=1.001, not a max_wait later.
    assert fake.call_times[1] - fake.call_times[0] == pytest.approx(1.0)
    assert stats.batch_size_histogram == ((1, 1), (10, 1))


async def test_arrivals_while_every_slot_is_busy_do_not_wake_the_scheduler() -> None:
    """Items arriving during a batch join the pool quietly: no scheduler pass per item."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with (
        bs.BatchScope(fake, max_batch_size=100, max_wait=0.001) as scope,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(scope.submit, 0)
        await anyio.sleep(0.5)  # batch [0] is running now
        before = scope.statistics().scheduler_wakeups
        for i in range(1, 51):
            tg.start_soon(scope.submit, i)
            await anyio.sleep(0.001)
        during = scope.statistics().scheduler_wakeups - before
    assert during == 0
    assert [len(batch) for batch in fake.batches] == [1, 50]


async def test_an_arrival_that_fills_the_batch_ends_the_wait_at_once() -> None:
    """While a partial batch waits for its timer, the item that makes it full sends it."""
    fake = FakeBatchFunction[int, int]()
    async with (
        bs.BatchScope(fake, max_batch_size=4, max_wait=1.0) as scope,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(scope.submit, 0)
        await anyio.sleep(0.1)
        for i in range(1, 4):
            tg.start_soon(scope.submit, i)
            await anyio.sleep(0.01)
    assert fake.call_times == [pytest.approx(0.12)]
    assert scope.statistics().release_reasons["size"] == 1


async def test_a_later_arrival_with_a_deadline_shortens_the_wait() -> None:
    """An item whose caller has a deadline, joining a waiting partial batch, moves its timer."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_wait=1.0) as scope, anyio.create_task_group() as tg:
        tg.start_soon(scope.submit, 1)  # no deadline: would wait a second
        await anyio.sleep(0.1)
        with anyio.fail_after(0.050):
            assert await scope.submit(2) == 2
    # 50 ms left at 0.1: released 3 ms (1.5 default batch times) and 10 ms (a fifth of
    # the caller's time, DEADLINE_SHARE) before its deadline.
    assert fake.call_times == [pytest.approx(0.137, abs=1e-5)]
    assert scope.statistics().release_reasons["deadline"] == 1


async def test_concurrent_batches_share_the_load() -> None:
    """With max_concurrent_batches=2, two batches run at once."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, max_batch_size=2, max_wait=0, max_concurrent_batches=2) as scope:
        start = anyio.current_time()
        assert await scope.submit_many(range(4)) == [0, 1, 2, 3]
        assert anyio.current_time() - start == pytest.approx(1.0)
    assert sorted(map(sorted, fake.batches)) == [[0, 1], [2, 3]]


async def test_idle_scope_wakes_nobody() -> None:
    """An idle scope's scheduler sleeps without a timer: an idle hour wakes it zero times."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_wait=0.005) as scope:
        await scope.submit(1)
        await anyio.sleep(0.1)
        before = scope.statistics().scheduler_wakeups
        await anyio.sleep(3600)
        assert scope.statistics().scheduler_wakeups == before


async def test_drain_on_exit_sends_pending_items_at_once() -> None:
    """Leaving the block sends pending items without waiting out max_wait (reason 'drain')."""
    fake = FakeBatchFunction[int, int]()
    results: list[int] = []

    async def caller(scope: bs.BatchScope[int, int], x: int) -> None:
        results.append(await scope.submit(x))

    async with anyio.create_task_group() as outer:
        async with bs.BatchScope(fake, max_wait=60.0) as scope:
            outer.start_soon(caller, scope, 1)
            outer.start_soon(caller, scope, 2)
            await anyio.wait_all_tasks_blocked()
            start = anyio.current_time()
        assert anyio.current_time() == start
    assert sorted(results) == [1, 2]
    assert scope.statistics().release_reasons["drain"] == 1


async def test_configure_applies_from_the_next_batch() -> None:
    """configure() changes max_batch_size and max_wait of an open scope; a waiting timer re-arms."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_batch_size=2, max_wait=60.0) as scope:
        assert await scope.submit_many(range(4)) == [0, 1, 2, 3]
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit, 9)
            await anyio.sleep(0.1)
            scope.configure(max_wait=0.5, max_batch_size=3)
            start = anyio.current_time() - 0.1
        # The item arrived at start; it goes at start + the new max_wait.
        assert anyio.current_time() - start == pytest.approx(0.5)
        assert await scope.submit_many(range(3)) == [0, 1, 2]
    assert fake.batches == [[0, 1], [2, 3], [9], [0, 1, 2]]
    assert scope.config.max_batch_size == 3


async def test_partial_batch_leaves_early_for_a_callers_deadline() -> None:
    """A caller's deadline releases a partial batch before max_wait, in time to finish."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_wait=1.0) as scope, anyio.create_task_group() as tg:
        tg.start_soon(scope.submit, 1)  # no deadline: would wait a second
        with anyio.fail_after(0.050):
            assert await scope.submit(2) == 2
    # Released 1.5 estimated batch times (2 ms each before any is timed) and a fifth of
    # the caller's 50 ms (DEADLINE_SHARE) early.
    assert fake.call_times == [pytest.approx(0.037)]
    assert sorted(fake.batches[0]) == [1, 2]
    assert scope.statistics().release_reasons["deadline"] == 1


async def test_item_that_cannot_finish_in_time_never_reaches_fn() -> None:
    """With batches known to take 100 ms, a caller with 50 ms to live is never dispatched."""
    fake = FakeBatchFunction[int, int](delay=0.100)
    async with bs.BatchScope(fake, max_wait=0.010) as scope:
        # Two batches timed: 100 ms is confirmed (one alone could be a cold start).
        assert await scope.submit(0) == 0
        assert await scope.submit(0) == 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit, 1)
            await anyio.sleep(0.001)  # item 1 is pending: the batch goes without item 2
            with anyio.move_on_after(0.050) as impatient:
                await scope.submit(2)
        assert impatient.cancelled_caught
        stats = scope.statistics()
    assert fake.items == [0, 0, 1]
    assert (stats.completed, stats.cancelled) == (3, 1)


async def test_auto_max_wait_meets_the_latency_target() -> None:
    """max_wait='auto' waits as long as a full batch still meets target_latency."""
    fake = FakeBatchFunction[int, int](delay=0.010)
    async with bs.BatchScope(fake, max_wait="auto", target_latency=0.050) as scope:
        await scope.submit(0)  # the first batch: 2 ms guessed, so it waited 48 ms
        assert fake.call_times[0] == pytest.approx(0.048)
        start = anyio.current_time()
        await scope.submit(1)  # now timed at 10 ms: wait 40 ms, finish at 50 ms
        assert anyio.current_time() - start == pytest.approx(0.050)
    assert fake.call_times[1] - start == pytest.approx(0.040)


async def test_caller_whose_deadline_moved_still_gets_its_result() -> None:
    """An item set aside for a passed deadline runs anyway if its caller turns out to still wait."""
    fake = FakeBatchFunction[int, int](delay=0.010)
    async with (
        bs.BatchScope(fake, max_batch_size=1, max_wait=0.010) as scope,
        anyio.create_task_group() as outer,
    ):
        outer.start_soon(scope.submit, 0)  # the only slot is busy for 10 ms
        await anyio.sleep(0.001)  # item 0 is running
        with anyio.CancelScope(deadline=anyio.current_time() + 0.005) as caller_scope:
            async with anyio.create_task_group() as tg:

                async def extend() -> None:
                    await anyio.sleep(0.004)
                    caller_scope.deadline = float("inf")

                tg.start_soon(extend)
                assert await scope.submit(5) == 5
    assert fake.items == [0, 5]
    assert fake.call_times[1] == pytest.approx(0.010)  # the slot freed: set aside, revived
    assert scope.statistics().completed == 2


@pytest.mark.parametrize("noise", [0.0, 0.001])
def test_run_time_model_is_the_least_squares_fit_of_the_last_window(noise: float) -> None:
    """The running sums give the textbook fit over the last WINDOW batches, however many."""
    rng = random.Random(7)
    model = RunTimeModel()
    samples: list[tuple[float, float]] = []
    for _ in range(10 * RunTimeModel.WINDOW + 5):
        load = float(rng.randint(1, 512)) + rng.random()
        seconds = 0.002 + 0.00005 * load + rng.uniform(-noise, noise)
        model.observe(load, seconds)
        samples.append((load, seconds))
    window = samples[-RunTimeModel.WINDOW :]
    fit = statistics.linear_regression([x for x, _ in window], [y for _, y in window])
    for load in (1.0, 32.0, 512.0):
        expected = fit.intercept + fit.slope * load
        assert model.predict(load) == pytest.approx(expected, rel=1e-9)


def test_run_time_model_of_equal_loads_predicts_their_mean() -> None:
    model = RunTimeModel()
    assert model.predict(32) == RunTimeModel.DEFAULT
    for seconds in (0.010, 0.012, 0.014):
        model.observe(32.0, seconds)
    assert model.predict(32) == pytest.approx(0.012)
    assert model.predict(64) == pytest.approx(0.012)  # no slope from equal loads


async def test_a_hurried_caller_is_in_the_batch_its_deadline_releases() -> None:
    """The batch a caller's deadline releases contains that caller's item, and serves it."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_wait=1.0) as scope, anyio.create_task_group() as tg:
        tg.start_soon(scope.submit, 1)  # no deadline: would wait a second
        await anyio.sleep(0.1)
        with anyio.fail_after(0.001):  # nearer than the untimed 2 ms guess: still served
            assert await scope.submit(2) == 2
    assert fake.batches == [[1, 2]]
    assert fake.call_times == [pytest.approx(0.1)]
    assert scope.statistics().release_reasons["deadline"] == 1


async def test_after_one_slow_batch_the_estimate_decays() -> None:
    """One 600 ms batch leaves no 300 ms caller out, and the next fast batch replaces it."""
    durations = iter([0.6, 0.001, 0.001])

    async def fn(items: list[int]) -> list[int]:
        await anyio.sleep(next(durations))
        return items

    async with bs.BatchScope(fn, max_wait=0.010) as scope:
        assert await scope.submit(0) == 0  # the cold start: 600 ms
        assert scope._engine.scheduler.model.confirmed(1.0) == 0.0  # nothing confirms it
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit, 1)
            await anyio.sleep(0.001)
            with anyio.fail_after(0.3):
                assert await scope.submit(2) == 2
        model = scope._engine.scheduler.model
        assert model.confirmed(2.0) == pytest.approx(0.001)
        assert model.predict(2.0) > 0.1  # the fit still remembers the cold start
        with anyio.fail_after(0.3):
            assert await scope.submit(3) == 3
        stats = scope.statistics()
    assert (stats.completed, stats.cancelled, stats.batches) == (4, 0, 3)


def test_confirmed_run_time_needs_two_batches_and_trusts_the_faster() -> None:
    """confirmed() is 0 until two batches are timed, then the least of the fit and the last two."""
    model = RunTimeModel()
    assert model.confirmed(1.0) == 0.0
    model.observe(1.0, 0.600)
    assert model.confirmed(1.0) == 0.0
    model.observe(1.0, 0.010)
    assert model.confirmed(1.0) == pytest.approx(0.010)
    model.observe(1.0, 0.020)
    assert model.confirmed(1.0) == pytest.approx(0.010)
    model.observe(1.0, 0.030)
    assert model.confirmed(1.0) == pytest.approx(0.020)


@pytest.mark.virtual_time
async def test_callers_left_out_for_the_estimate_take_no_room_in_the_batch() -> None:
    """Items set aside for the confirmed run time leave their places to the items behind."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    # The length policy forms no batch ahead: this batch is formed when the slot frees.
    async with bs.BatchScope(
        fake, max_batch_size=4, max_wait=10, policy="length", cost=lambda _: 1
    ) as scope:
        await scope.submit_many(range(4))
        await scope.submit_many(range(4))  # two full batches: a 1 s run time, confirmed
        outcomes: list[str] = []

        async def hurried(value: int) -> None:
            with anyio.move_on_after(1.5):  # its deadline: before the batch could end
                await scope.submit(value)
                outcomes.append("served")
                return
            outcomes.append("gave up")

        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit_many, [100, 101, 102, 103])  # the slot is busy 1 s
            await anyio.sleep(0.01)
            tg.start_soon(hurried, 10)
            tg.start_soon(hurried, 11)
            await anyio.sleep(0.01)
            tg.start_soon(scope.submit_many, [20, 21, 22, 23])
    assert fake.batches[3] == [20, 21, 22, 23]  # a full batch, not [20, 21]
    assert outcomes == ["gave up", "gave up"]
