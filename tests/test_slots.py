"""Device first: persistent slot workers, the batch formed ahead, and the hand-over order."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import batchscope as bs

pytestmark = pytest.mark.anyio


class Crash(BaseException):
    """A BaseException that is not a cancellation (as KeyboardInterrupt would be)."""


class Recorder:
    """An async batch function that logs each call, the task it ran in, and concurrency."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.log: list[tuple[str, Any]] = []
        self.batches: list[list[int]] = []
        self.tasks: list[int] = []
        self.running = 0
        self.most = 0

    async def __call__(self, items: list[int]) -> list[int]:
        self.log.append(("call", list(items)))
        self.batches.append(list(items))
        self.tasks.append(anyio.get_current_task().id)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await anyio.sleep(self.delay)
        finally:
            self.running -= 1
        return items


async def caller(scope: bs.BatchScope[int, int], fn: Recorder, value: int) -> None:
    """Submit *value*, then log that its caller resumed."""
    assert await scope.submit(value) == value
    fn.log.append(("resumed", value))


async def _next_batch_before_callers(delay: float) -> None:
    fn = Recorder(delay)
    async with bs.BatchScope(fn, max_batch_size=2, max_wait=10.0) as scope:
        async with anyio.create_task_group() as tg:
            for value in range(4):
                tg.start_soon(caller, scope, fn, value)
        stats = scope.statistics()
    # Trio starts tasks in any order: which two values make the first batch varies.
    first, second = fn.batches
    assert sorted(first + second) == [0, 1, 2, 3]
    events = [event for event, _ in fn.log]
    # call, call, then the four callers: the first batch's callers resume after fn has
    # the second batch.
    assert events == ["call", "call", "resumed", "resumed", "resumed", "resumed"]
    assert stats.completed == 4
    assert stats.batches == 2
    assert stats.release_reasons["size"] == 2


@pytest.mark.virtual_time
async def test_next_batch_reaches_fn_before_callers_resume() -> None:
    """When a batch ends with a full one formed, fn gets it before the ended batch's callers run."""
    await _next_batch_before_callers(0.1)


@pytest.mark.realclock
async def test_next_batch_reaches_fn_before_callers_resume_real_clock(cpu_hog: Any) -> None:
    """The same hand-over order on a real loop under a CPU hog."""
    await _next_batch_before_callers(0.05)


async def _one_task_for_every_batch(delay: float) -> None:
    fn = Recorder(delay)
    async with bs.BatchScope(fn, max_batch_size=2, max_wait=delay) as scope:
        for value in range(5):
            assert await scope.submit(value) == value  # one partial batch after another
        assert await scope.submit_many(range(10, 16)) == list(range(10, 16))
        stats = scope.statistics()
    assert len(fn.batches) == 8
    assert len(set(fn.tasks)) == 1
    assert stats.batches == 8
    assert stats.in_flight == 0


@pytest.mark.virtual_time
async def test_no_task_spawned_per_batch() -> None:
    """Every batch of a one-slot scope runs in the same task: no task per batch."""
    await _one_task_for_every_batch(0.01)


@pytest.mark.realclock
async def test_no_task_spawned_per_batch_real_clock(cpu_hog: Any) -> None:
    """The same slot task runs every batch on a real loop under a CPU hog."""
    await _one_task_for_every_batch(0.005)


async def _formed_batch_withdrawn(delay: float, *, exact: bool) -> None:
    fn = Recorder(delay)
    async with bs.BatchScope(fn, max_batch_size=2, max_wait=10.0) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit, 0)
            tg.start_soon(scope.submit, 1)
            await anyio.sleep(delay / 10)  # [0, 1] is running
            with anyio.move_on_after(delay / 2):
                async with anyio.create_task_group() as leaving:
                    leaving.start_soon(scope.submit, 2)
                    leaving.start_soon(scope.submit, 3)
                    await anyio.sleep(delay / 10)
                    # [2, 3] fills a batch: formed now, for the slot when it frees. (A
                    # real loop may not have run the scheduler yet: outcomes only there.)
                    formed = scope.statistics()
                    if exact:
                        assert (formed.pending, formed.running) == (0, 4)
        stats = scope.statistics()
    assert [sorted(batch) for batch in fn.batches] == [[0, 1]]
    assert stats.cancelled == 2
    assert stats.completed == 2
    assert stats.batches == 1
    assert stats.running == stats.pending == 0


@pytest.mark.virtual_time
async def test_formed_batch_whose_callers_left_never_reaches_fn() -> None:
    """A batch formed ahead whose callers all leave before a slot frees is never run."""
    await _formed_batch_withdrawn(1.0, exact=True)


@pytest.mark.realclock
async def test_formed_batch_whose_callers_left_never_reaches_fn_real_clock(cpu_hog: Any) -> None:
    """The same withdrawal on a real loop under a CPU hog."""
    await _formed_batch_withdrawn(1.0, exact=False)


@pytest.mark.virtual_time
async def test_formed_batch_runs_without_the_callers_who_left() -> None:
    """An item of a batch formed ahead whose caller left does not reach fn; the rest run."""
    fn = Recorder(1.0)
    async with bs.BatchScope(fn, max_batch_size=2, max_wait=10.0) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit, 0)
            tg.start_soon(scope.submit, 1)
            await anyio.sleep(0.1)
            tg.start_soon(scope.submit, 2)
            await anyio.sleep(0.1)
            with anyio.move_on_after(0.5):
                await scope.submit(3)
        stats = scope.statistics()
    assert sorted(fn.batches[0]) == [0, 1]
    assert fn.batches[1:] == [[2]]
    assert stats.completed == 3
    assert stats.cancelled == 1
    assert stats.batch_size_histogram == ((2, 2),)


async def _grow_and_shrink(delay: float) -> None:
    fn = Recorder(delay)
    most_before = 0
    async with bs.BatchScope(fn, max_batch_size=1, max_wait=0) as scope:
        async with anyio.create_task_group() as tg:
            for value in range(8):
                tg.start_soon(scope.submit, value)
            await anyio.sleep(delay / 2)
            assert fn.most == 1
            scope.configure(max_concurrent_batches=3)
            await anyio.sleep(delay / 4)
            assert fn.running == 3  # two slots added, each took a batch at once
            grown = scope.statistics()
            assert grown.in_flight == 3
            scope.configure(max_concurrent_batches=1)
            await anyio.sleep(delay * 1.5)  # the running three end; one slot carries on
            assert fn.running == 1
            most_before = fn.most
            fn.most = fn.running
        stats = scope.statistics()
    assert most_before == 3
    assert fn.most == 1
    assert sorted(value for batch in fn.batches for value in batch) == list(range(8))
    assert len(set(fn.tasks)) == 3  # three slot tasks in all, whatever the batches
    assert stats.completed == 8
    assert stats.batches == 8
    assert stats.in_flight == 0


@pytest.mark.virtual_time
async def test_configure_adds_and_removes_slots() -> None:
    """configure(max_concurrent_batches=...) on a running scope adds slots, then removes them."""
    await _grow_and_shrink(1.0)


@pytest.mark.realclock
async def test_configure_adds_and_removes_slots_real_clock(cpu_hog: Any) -> None:
    """Slots added and removed on a real loop under a CPU hog."""
    await _grow_and_shrink(0.2)


@pytest.mark.virtual_time
async def test_crash_fails_the_formed_batch() -> None:
    """A BaseException from fn fails the callers of the batch formed ahead with ScopeClosedError."""
    calls: list[list[int]] = []

    async def fn(items: list[int]) -> list[int]:
        calls.append(items)
        await anyio.sleep(1.0)
        raise Crash("fn crashed")

    outcomes: dict[int, BaseException] = {}

    async def one(scope: bs.BatchScope[int, int], value: int) -> None:
        try:
            await scope.submit(value)
        except bs.ScopeClosedError as exc:
            outcomes[value] = exc

    scope = bs.BatchScope(fn, max_batch_size=2, max_wait=10.0)
    async with anyio.create_task_group() as tg:
        with pytest.raises(Crash, match="fn crashed"):
            async with scope:
                for value in range(4):  # callers outside the scope's block
                    tg.start_soon(one, scope, value)
                await anyio.sleep_forever()
    assert len(calls) == 1
    assert sorted(outcomes) == [0, 1, 2, 3]
    stats = scope.statistics()
    assert stats.failed == 4
    assert stats.running == stats.pending == 0


@pytest.mark.virtual_time
async def test_length_policy_forms_no_batch_ahead() -> None:
    """Under policy='length' a full pool waits for the free slot: the batch is chosen then."""
    fn = Recorder(1.0)
    scope = bs.BatchScope(fn, max_batch_size=2, max_wait=10.0, policy="length", cost=lambda v: v)
    async with scope, anyio.create_task_group() as tg:
        tg.start_soon(scope.submit, 1)
        tg.start_soon(scope.submit, 1)
        await anyio.sleep(0.1)  # [1, 1] is running
        for value in (2, 9, 2):
            tg.start_soon(scope.submit, value)
        await anyio.sleep(0.1)
        waiting = scope.statistics()
        assert (waiting.pending, waiting.running) == (3, 2)
    # Formed when the slot freed, from all three: the two of length 2 share a batch.
    assert [sorted(batch) for batch in fn.batches] == [[1, 1], [2, 2], [9]]
    stats = scope.statistics()
    assert stats.completed == 5
    assert stats.batches == 3


@pytest.mark.virtual_time
async def test_paused_scope_forms_no_batch_ahead() -> None:
    """While an upstream's retry_after holds dispatch, nothing is formed ahead."""

    class SlowDown(Exception):
        retry_after = 5.0

    calls: list[list[int]] = []

    async def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise SlowDown
        return items

    async def first(scope: bs.BatchScope[int, int]) -> None:
        with pytest.raises(SlowDown):
            await scope.submit_many([0, 1])

    scope = bs.BatchScope(fn, max_batch_size=2, max_wait=10.0)
    async with scope, anyio.create_task_group() as tg:
        tg.start_soon(first, scope)
        await anyio.sleep(0.1)  # the first batch failed: dispatch held for 5 s
        tg.start_soon(scope.submit_many, [2, 3])
        await anyio.sleep(1.0)
        held = scope.statistics()
        assert (held.pending, held.running) == (2, 0)
    assert calls == [[0, 1], [2, 3]]


async def _deadline_judged_at_start(delay: float) -> tuple[Recorder, dict[int, str]]:
    fn = Recorder(delay)
    outcome: dict[int, str] = {}

    async def patient(value: int, patience: float) -> None:
        try:
            with anyio.fail_after(patience):
                await scope.submit(value)
        except TimeoutError:
            outcome[value] = "timed out"
        else:
            outcome[value] = "served"

    async with bs.BatchScope(fn, max_batch_size=2, max_wait=0) as scope:
        for value in (100, 101):  # two timed batches: the run time is confirmed
            assert await scope.submit(value) == value
        async with anyio.create_task_group() as tg:
            tg.start_soon(patient, 0, 10 * delay)  # runs now, alone
            await anyio.sleep(delay / 100)
            # The slot is busy for about `delay`: a full batch is formed ahead, to start
            # when it frees. Caller 1 cannot be served by a batch starting then.
            tg.start_soon(patient, 1, 1.5 * delay)
            await anyio.sleep(delay / 100)
            tg.start_soon(patient, 2, 10 * delay)
            tg.start_soon(patient, 3, 10 * delay)
    return fn, outcome


@pytest.mark.virtual_time
async def test_a_batch_formed_ahead_judges_deadlines_from_its_start() -> None:
    """
    A caller whose deadline falls before a batch formed ahead could end (it starts when
    the running batch ends) is not put in it: fn never computes an item its caller will
    have left (before: formed with it, the batch ran for a caller already gone).
    """
    fn, outcome = await _deadline_judged_at_start(1.0)
    assert outcome == {0: "served", 1: "timed out", 2: "served", 3: "served"}
    assert all(1 not in batch for batch in fn.batches), fn.batches
    assert sorted(fn.batches[3]) == [2, 3]


@pytest.mark.realclock
async def test_a_batch_formed_ahead_judges_deadlines_from_its_start_real_clock(
    cpu_hog: Any,
) -> None:
    """The same on a real loop under a CPU hog: outcomes only."""
    fn, outcome = await _deadline_judged_at_start(0.5)
    assert outcome[0] == outcome[2] == outcome[3] == "served"
    assert outcome[1] == "timed out"
    assert all(1 not in batch for batch in fn.batches), fn.batches
