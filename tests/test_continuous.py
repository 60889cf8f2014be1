"""ContinuousScope: rows join and leave a running batch; each caller streams its own outputs."""

from __future__ import annotations

import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchscope as bs

pytestmark = pytest.mark.anyio

Output = str | bs.End | Exception


class Generator:
    """
    A step function: item ``n`` yields ``"n:1"`` ... ``"n:n"`` then END, one per step,
    each step taking *step_time*; records the items of every step.
    """

    def __init__(self, step_time: float = 1.0) -> None:
        self.step_time = step_time
        self.steps: list[list[Any]] = []
        self.times: list[float] = []
        self.new: list[list[bool]] = []

    async def __call__(self, rows: list[bs.Row[Any]]) -> list[Output]:
        self.steps.append([row.item for row in rows])
        self.times.append(anyio.current_time())
        self.new.append([row.new for row in rows])
        outputs: list[Output] = []
        for row in rows:
            if row.new:
                row.state = 0
            row.state += 1
            n = row.item if isinstance(row.item, int) else row.item[0]
            outputs.append(bs.END if row.state > n else f"{n}:{row.state}")
        await anyio.sleep(self.step_time)
        return outputs


def expected(n: int) -> list[str]:
    return [f"{n}:{i}" for i in range(1, n + 1)]


def check_invariant(stats: bs.ContinuousStatistics) -> None:
    accounted = (
        stats.completed
        + stats.failed
        + stats.cancelled
        + stats.rejected
        + stats.admitting
        + stats.pending
        + stats.active
    )
    assert stats.submitted == accounted, stats


# -- timing on a virtual clock ------------------------------------------------------------


@pytest.mark.virtual_time
async def test_short_item_submitted_during_long_one_finishes_first() -> None:
    """A short row joins the running batch at the next step boundary and ends first."""
    gen = Generator()
    ended: dict[int, float] = {}
    first: dict[int, float] = {}

    async with bs.ContinuousScope(gen, max_active=4) as scope:

        async def run(n: int, delay: float) -> None:
            await anyio.sleep(delay)
            outputs = []
            async for output in scope.stream(n):
                first.setdefault(n, anyio.current_time())
                outputs.append(output)
            ended[n] = anyio.current_time()
            assert outputs == expected(n)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 10, 0.0)
            tg.start_soon(run, 2, 2.5)
    # The short row joined the step starting at t=3 (not at 2.5: mid-step).
    assert gen.steps[3] == [10, 2]
    assert gen.times[3] == 3.0
    assert first[2] == 4.0
    assert ended[2] == 6.0
    assert ended[10] == 11.0
    stats = scope.statistics()
    assert (stats.completed, stats.steps, stats.outputs) == (2, 11, 12)
    assert stats.rows_per_step_histogram == ((1, 8), (2, 3))
    assert stats.join_wait_ms.p99 == 500.0
    assert stats.time_to_first_output_ms.p50 == 1000.0
    assert stats.time_between_outputs_ms.p99 == 1000.0
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_max_active_caps_rows_and_freed_places_fill_at_once() -> None:
    """At most max_active rows per step; a waiting item joins the step after a row ends."""
    gen = Generator()
    async with bs.ContinuousScope(gen, max_active=2) as scope, anyio.create_task_group() as tg:
        results: dict[int, list[str]] = {}

        async def run(n: int) -> None:
            results[n] = await scope.submit(n)

        for n in (1, 3, 2):
            tg.start_soon(run, n)
            await anyio.wait_all_tasks_blocked()
    assert results == {n: expected(n) for n in (1, 3, 2)}
    assert gen.steps == [[1], [1, 3], [3, 2], [3, 2], [3, 2]]
    stats = scope.statistics()
    assert stats.rows_finished == 3
    assert stats.join_wait_ms.p99 >= 1800.0  # 2 waited for 1 to end (t=2)
    assert stats.mean_rows_per_step == 9 / 5


@pytest.mark.virtual_time
async def test_step_tells_new_rows_and_keeps_their_state() -> None:
    """row.new is True on a row's first step only; row.state and row.steps persist."""
    gen = Generator()
    async with bs.ContinuousScope(gen) as scope, anyio.create_task_group() as tg:
        tg.start_soon(scope.submit, 3)
        await anyio.sleep(1.5)
        tg.start_soon(scope.submit, 1)
    assert gen.new == [[True], [False], [False, True], [False, False]]
    assert gen.steps == [[3], [3], [3, 1], [3, 1]]


@pytest.mark.virtual_time
async def test_cancelled_waiting_item_never_reaches_step() -> None:
    """A caller that leaves before its item joined withdraws it: step never sees it."""
    gen = Generator()
    async with bs.ContinuousScope(gen, max_active=1) as scope, anyio.create_task_group() as tg:
        tg.start_soon(scope.submit, 3)
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(1.5):
            await scope.submit(2)
    assert all(2 not in step for step in gen.steps)
    stats = scope.statistics()
    assert (stats.completed, stats.cancelled, stats.rows_abandoned) == (1, 1, 0)
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_caller_deadline_passed_before_joining_withdraws_it() -> None:
    """A caller whose deadline passes while it waits to join is withdrawn, never stepped."""
    gen = Generator()
    async with bs.ContinuousScope(gen, max_active=1) as scope, anyio.create_task_group() as tg:
        tg.start_soon(scope.submit, 4)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(TimeoutError), anyio.fail_after(2.0):
            await scope.submit(1)
    assert gen.steps == [[4]] * 5
    assert scope.statistics().cancelled == 1


@pytest.mark.virtual_time
async def test_caller_who_cannot_see_a_first_output_in_time_takes_no_place() -> None:
    """A caller whose deadline comes before one step could end does not join; the next does."""
    gen = Generator()
    async with bs.ContinuousScope(gen, max_active=2) as scope, anyio.create_task_group() as tg:
        tg.start_soon(scope.submit, 10)  # steps at t=0, 1, 2, ...: one second each
        await anyio.sleep(2.5)

        async def hurried() -> None:
            with anyio.move_on_after(0.8):  # gives up at 3.3: a step joined at 3 ends at 4
                await scope.submit(5)

        tg.start_soon(hurried)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(scope.submit, 2)  # behind it in the queue, no deadline
    assert all(5 not in step for step in gen.steps)
    assert gen.steps[3] == [10, 2]  # took the free place at t=3
    assert gen.times[3] == 3.0
    stats = scope.statistics()
    assert (stats.completed, stats.cancelled, stats.rows_abandoned) == (2, 1, 0)
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_caller_whose_deadline_moved_joins_once_it_has_passed() -> None:
    """A caller still there after the deadline its item was queued with joins: nobody hangs."""
    gen = Generator()
    async with bs.ContinuousScope(gen, max_active=2) as scope, anyio.create_task_group() as tg:
        tg.start_soon(scope.submit, 10)
        await anyio.sleep(2.5)
        results: list[list[str]] = []

        async def patient() -> None:
            with anyio.CancelScope(deadline=anyio.current_time() + 0.8) as cancel_scope:
                tg.start_soon(move_deadline, cancel_scope)
                results.append(await scope.submit(3))

        async def move_deadline(cancel_scope: anyio.CancelScope) -> None:
            await anyio.sleep(0.2)
            cancel_scope.deadline = math.inf  # after its item was queued with 3.3

        tg.start_soon(patient)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(scope.submit, 2)
    assert results == [expected(3)]
    # 3 was set aside at t=3 (its deadline 3.3 < 3 + one step), back once 3.3 had passed,
    # and joined at the first free place.
    assert gen.steps[3:7] == [[10, 2], [10, 2], [10, 2], [10, 3]]
    assert gen.times[6] == 6.0


@pytest.mark.virtual_time
async def test_break_frees_the_row_and_no_step_after_last_caller_left() -> None:
    """Breaking out of async for ends the row before the next step; then no step runs."""
    gen = Generator()
    async with bs.ContinuousScope(gen) as scope:
        async for output in scope.stream(100):
            if output == "100:3":
                break
        await anyio.sleep(10)
        # The step already running when the caller left (the fourth) finishes; none
        # starts after it.
        assert len(gen.steps) == 4
    stats = scope.statistics()
    assert (stats.cancelled, stats.rows_abandoned, stats.active, stats.steps) == (1, 1, 0, 4)
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_cancelled_active_caller_leaves_others_untouched() -> None:
    """An active row whose caller is cancelled leaves; the other rows go on to their end."""
    gen = Generator()
    async with bs.ContinuousScope(gen) as scope, anyio.create_task_group() as tg:
        results: list[list[str]] = []

        async def run() -> None:
            results.append(await scope.submit(4))

        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(1.5):
            await scope.submit(100)
    assert results == [expected(4)]
    assert gen.steps == [[4], [4, 100], [4], [4], [4]]
    stats = scope.statistics()
    assert (stats.completed, stats.cancelled, stats.rows_abandoned) == (1, 1, 1)


@pytest.mark.virtual_time
async def test_slow_reader_pauses_only_its_own_row() -> None:
    """A row whose output buffer is full sits out the steps; the others run on."""
    gen = Generator()
    async with bs.ContinuousScope(gen, max_buffered=2) as scope:
        stream = scope.stream(5)
        assert await stream.__anext__() == "5:1"  # joins; then nobody reads it
        assert await scope.submit(4) == expected(4)
        # Row 5 took two more steps (its buffer holds 2) and then sat out.
        assert [step.count(5) for step in gen.steps] == [1, 1, 1, 0, 0, 0, 0]
        assert [output async for output in stream] == expected(5)[1:]
    assert scope.statistics().completed == 2


# -- failures -----------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_step_exception_fails_its_rows_and_scope_serves_on() -> None:
    """step raising fails the rows of that step with its exception; later items run."""
    calls = 0

    async def step(rows: list[bs.Row[int]]) -> list[Output]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ValueError("boom")
        return ["x" if row.new else bs.END for row in rows]

    async with bs.ContinuousScope(step) as scope:
        stream = scope.stream(1)
        assert await stream.__anext__() == "x"
        with pytest.raises(ValueError, match="boom"):
            await stream.__anext__()
        assert await scope.submit(2) == ["x"]
    stats = scope.statistics()
    assert (stats.failed, stats.completed, stats.rows_failed) == (1, 1, 1)


@pytest.mark.virtual_time
async def test_exception_output_fails_that_row_alone() -> None:
    """An exception instance as a row's output fails that row; the others go on."""
    steps: list[list[int]] = []

    async def step(rows: list[bs.Row[int]]) -> list[Output]:
        steps.append([row.item for row in rows])
        await anyio.sleep(1)
        return [KeyError(row.item) if row.item == 2 else "x" if row.new else bs.END for row in rows]

    async with bs.ContinuousScope(step) as scope, anyio.create_task_group() as tg:
        results: list[list[str]] = []

        async def run() -> None:
            results.append(await scope.submit(1))

        tg.start_soon(run)
        await anyio.sleep(0.5)  # mid-step: 2 joins the second step, beside 1
        with pytest.raises(KeyError):
            await scope.submit(2)
    assert results == [["x"]]
    assert steps == [[1], [1, 2]]
    stats = scope.statistics()
    assert (stats.completed, stats.failed, stats.rows_failed, stats.rows_finished) == (1, 1, 1, 1)


@pytest.mark.virtual_time
async def test_wrong_length_fails_every_row_of_step_and_serves_on() -> None:
    """The wrong number of outputs fails every row of that step with BatchSizeMismatchError."""

    async def step(rows: list[bs.Row[int]]) -> list[Output]:
        await anyio.sleep(1)
        if len(rows) == 2:
            return [bs.END]  # one output for two rows
        return ["x" if row.new else bs.END for row in rows]

    async with bs.ContinuousScope(step) as scope, anyio.create_task_group() as tg:
        errors: list[BaseException] = []

        async def run(n: int) -> None:
            with pytest.raises(bs.BatchSizeMismatchError) as info:
                await scope.submit(n)
            errors.append(info.value)

        tg.start_soon(run, 1)
        await anyio.sleep(0.5)  # mid-step: 2 joins the second step, beside 1
        tg.start_soon(run, 2)
        await anyio.sleep(2)
        assert await scope.submit(3) == ["x"]
    assert len(errors) == 2
    assert errors[0] is errors[1]
    stats = scope.statistics()
    assert (stats.failed, stats.completed, stats.steps) == (2, 1, 4)


class Crash(BaseException):
    """A BaseException from step."""


@pytest.mark.virtual_time
async def test_base_exception_fails_every_caller_and_propagates() -> None:
    """A BaseException from step fails callers with ScopeClosedError and leaves async with."""

    async def step(rows: list[bs.Row[int]]) -> list[Output]:
        await anyio.sleep(1)
        raise Crash

    outcomes: list[BaseException] = []
    with pytest.raises(Crash):
        async with bs.ContinuousScope(step, max_active=1) as scope:

            async def run(n: int) -> None:
                try:
                    await scope.submit(n)
                except bs.ScopeClosedError as exc:
                    outcomes.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(run, 1)
                tg.start_soon(run, 2)
    assert len(outcomes) == 2
    assert all(isinstance(exc.__cause__, Crash) for exc in outcomes)
    stats = scope.statistics()
    assert (stats.failed, stats.active, stats.pending) == (2, 0, 0)


@pytest.mark.virtual_time
async def test_base_exception_keeps_its_cause() -> None:
    """A BaseException raised from another comes out of the scope with its cause."""

    async def step(rows: list[bs.Row[int]]) -> list[Output]:
        try:
            raise LookupError("the root cause")
        except LookupError as exc:
            raise Crash from exc

    with pytest.raises(Crash) as caught:
        async with bs.ContinuousScope(step) as scope:
            with pytest.raises(bs.ScopeClosedError):
                await scope.submit(1)
    assert isinstance(caught.value.__cause__, LookupError)


# -- lifetime and admission ---------------------------------------------------------------


@pytest.mark.virtual_time
async def test_exit_drains_active_rows_and_refuses_new_submits() -> None:
    """Leaving async with runs active rows to their end; submit after close fails."""
    gen = Generator()
    outputs: list[str] = []

    async def read(scope: bs.ContinuousScope[int, str]) -> None:
        outputs.extend([output async for output in scope.stream(3)])

    async with anyio.create_task_group() as tg:
        async with bs.ContinuousScope(gen) as scope:
            tg.start_soon(read, scope)
            await anyio.wait_all_tasks_blocked()
            scope.close()
            with pytest.raises(bs.ScopeClosedError, match="closed"):
                await scope.submit(1)
        assert anyio.current_time() == 4.0
    assert outputs == expected(3)
    stats = scope.statistics()
    assert (stats.submitted, stats.completed) == (1, 1)


@pytest.mark.virtual_time
async def test_full_queue_rejects_and_says_when_to_retry() -> None:
    """
    on_full='reject': a submit finding the queue full raises QueueFullError, whose
    retry_after is how long recent items waited to join (0 before any joined).
    """
    gen = Generator()
    async with (
        bs.ContinuousScope(gen, max_active=1, max_queue_size=1, on_full="reject") as scope,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(scope.submit, 2)  # joins at once; 3 steps (two outputs, then END)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(scope.submit, 1)  # queued: joins when the first row leaves, at 3 s
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(bs.QueueFullError) as first:
            await scope.submit(9)
        assert first.value.retry_after == 0.0  # nobody has joined from the queue yet
        await anyio.sleep(3.5)  # the second row joined after waiting 3 s
        tg.start_soon(scope.submit, 1)  # queued again behind it
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(bs.QueueFullError, match=r"retry after \d\.\d{3} s") as second:
            await scope.submit(9)
        # 3 s on Trio's clock; looptime's wait_all_tasks_blocked() polls, moving its clock 0.1 s.
        assert second.value.retry_after == pytest.approx(3.0, abs=0.15)
    stats = scope.statistics()
    assert (stats.rejected, stats.completed) == (2, 3)
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_full_queue_makes_submitters_wait_for_room() -> None:
    """on_full='wait': a submit finding the queue full waits (admitting) until an item joins."""
    gen = Generator()
    async with (
        bs.ContinuousScope(gen, max_active=1, max_queue_size=1) as scope,
        anyio.create_task_group() as tg,
    ):
        results: dict[int, list[str]] = {}

        async def run(n: int) -> None:
            results[n] = await scope.submit(n)

        for n in (2, 1, 3):  # 2 joins; 1 fills the queue; 3 waits for room
            tg.start_soon(run, n)
            await anyio.wait_all_tasks_blocked()
        stats = scope.statistics()
        assert (stats.active, stats.pending, stats.admitting) == (1, 1, 1)
        check_invariant(stats)
        await anyio.sleep(3.5)  # 2 ended at t=3, 1 joined: 3 took its place in the queue
        stats = scope.statistics()
        assert (stats.active, stats.pending, stats.admitting) == (1, 1, 0)
    assert results == {n: expected(n) for n in (2, 1, 3)}
    assert gen.steps == [[2]] * 3 + [[1]] * 2 + [[3]] * 4


@pytest.mark.virtual_time
async def test_closing_refuses_submitters_waiting_for_room() -> None:
    """A submit still waiting for room in the queue when the scope closes: ScopeClosedError."""
    gen = Generator()
    refused: list[BaseException] = []
    async with (
        anyio.create_task_group() as tg,
        bs.ContinuousScope(gen, max_active=1, max_queue_size=1) as scope,
    ):
        tg.start_soon(scope.submit, 2)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(scope.submit, 1)
        await anyio.wait_all_tasks_blocked()

        async def late() -> None:
            with pytest.raises(bs.ScopeClosedError, match="closed") as info:
                await scope.submit(3)
            refused.append(info.value)

        tg.start_soon(late)
        await anyio.wait_all_tasks_blocked()
        assert scope.statistics().admitting == 1
        scope.close()
        await anyio.wait_all_tasks_blocked()
        assert len(refused) == 1
    assert all(3 not in step for step in gen.steps)
    stats = scope.statistics()
    assert (stats.completed, stats.rejected, stats.admitting) == (2, 1, 0)
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_body_raising_fails_every_row_and_stops_the_steps() -> None:
    """The block raises: waiting and active rows fail with ScopeClosedError, no step after."""
    gen = Generator()
    outcomes: dict[int, BaseException] = {}

    async def run(scope: bs.ContinuousScope[int, str], n: int) -> None:
        try:
            await scope.submit(n)
        except bs.ScopeClosedError as exc:
            outcomes[n] = exc

    async with anyio.create_task_group() as tg:
        with pytest.raises(LookupError, match="the body"):
            async with bs.ContinuousScope(gen, max_active=1) as scope:
                tg.start_soon(run, scope, 10)  # active
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(run, scope, 1)  # waiting to join
                await anyio.sleep(1.5)
                raise LookupError("the body")
    steps = len(gen.steps)
    await anyio.sleep(5)
    assert len(gen.steps) == steps == 2
    assert sorted(outcomes) == [1, 10]
    assert all(isinstance(exc.__cause__, LookupError) for exc in outcomes.values())
    stats = scope.statistics()
    assert (stats.failed, stats.active, stats.pending) == (2, 0, 0)
    check_invariant(stats)


@pytest.mark.virtual_time
async def test_cost_budget_bounds_active_rows() -> None:
    """max_active_cost bounds the active rows' total cost; the next in line waits for room."""
    gen = Generator()
    async with (
        bs.ContinuousScope(gen, cost=lambda item: item[1], max_active_cost=10) as scope,
        anyio.create_task_group() as tg,
    ):
        for item in ((2, 6), (1, 5), (1, 1)):
            tg.start_soon(scope.submit, item)
            await anyio.wait_all_tasks_blocked()
    # (1, 5) waits until (2, 6) ends; (1, 1) waits behind it (nothing overtakes).
    assert gen.steps == [[(2, 6)], [(2, 6)], [(2, 6)], [(1, 5), (1, 1)], [(1, 5), (1, 1)]]


@pytest.mark.virtual_time
async def test_priority_policy_joins_lower_priority_first() -> None:
    """policy='priority': among waiting items, the lowest priority value joins first."""
    gen = Generator()
    async with (
        bs.ContinuousScope(gen, max_active=1, policy="priority") as scope,
        anyio.create_task_group() as tg,
    ):

        async def run(n: int, priority: float) -> None:
            await scope.submit(n, priority=priority)

        for n, priority in ((1, 0), (2, 5), (3, 1)):
            tg.start_soon(run, n, priority)
            await anyio.wait_all_tasks_blocked()
    assert [step[0] for step in gen.steps] == [1, 1, 3, 3, 3, 3, 2, 2, 2]


@pytest.mark.virtual_time
async def test_a_bad_priority_fails_its_caller_not_the_scope() -> None:
    """
    A priority that is not a finite number is refused at submit, as BatchScope refuses it
    (a string crashed the scope's task, failing every caller; NaN joined the heap).
    """
    gen = Generator()
    async with bs.ContinuousScope(gen, policy="priority") as scope:
        with pytest.raises(TypeError, match="'priority' must be a number"):
            await scope.submit(1, priority="high")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="'priority' must be a finite number"):
            await scope.submit(1, priority=math.nan)
        with pytest.raises(ValueError, match="'priority' must be a finite number"):
            async for _ in scope.stream(1, priority=math.inf):
                pass
        assert await scope.submit(2, priority=1) == ["2:1", "2:2"]
    assert scope.statistics().submitted == 1


async def test_options_are_validated() -> None:
    """Invalid options raise at construction, naming the option."""
    gen = Generator()
    with pytest.raises(ValueError, match="max_active"):
        bs.ContinuousScope(gen, max_active=0)
    with pytest.raises(ValueError, match="max_active_cost"):
        bs.ContinuousScope(gen, max_active_cost=5)
    with pytest.raises(ValueError, match="policy"):
        bs.ContinuousScope(gen, policy="lifo")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="step"):
        bs.ContinuousScope(42)  # type: ignore[arg-type]


async def test_submit_outside_scope_says_how_to_open_it() -> None:
    """Submitting to a scope never opened raises NoActiveScopeError."""
    scope: bs.ContinuousScope[int, str] = bs.ContinuousScope(Generator())
    with pytest.raises(bs.NoActiveScopeError, match="async with"):
        await scope.submit(1)


# -- the real clock -----------------------------------------------------------------------


@pytest.mark.realclock
async def test_many_streams_under_load_get_their_own_outputs(cpu_hog: Any) -> None:
    """Real clock, CPU hog: 40 concurrent rows each get exactly their outputs, in order."""
    gen = Generator(step_time=0.001)
    results: dict[int, list[str]] = {}
    async with bs.ContinuousScope(gen, max_active=8) as scope, anyio.create_task_group() as tg:

        async def run(index: int, n: int) -> None:
            results[index] = [output async for output in scope.stream(n)]

        for index in range(40):
            tg.start_soon(run, index, 1 + index % 7)
    assert results == {index: expected(1 + index % 7) for index in range(40)}
    assert all(len(step) <= 8 for step in gen.steps)
    stats = scope.statistics()
    assert (stats.completed, stats.outputs, stats.active, stats.pending) == (
        40,
        sum(1 + index % 7 for index in range(40)),
        0,
        0,
    )
    check_invariant(stats)
    assert cpu_hog.spins > 0


class SteppingGenerator(Generator):
    """A :class:`Generator` whose ``stepping`` event is set as each step starts."""

    def __init__(self, step_time: float) -> None:
        super().__init__(step_time)
        self.stepping = anyio.Event()

    async def __call__(self, rows: list[bs.Row[Any]]) -> list[Output]:
        self.stepping.set()
        self.stepping = anyio.Event()
        return await super().__call__(rows)


@pytest.mark.realclock
async def test_caller_who_cannot_see_a_first_output_in_time_takes_no_place_real_clock(
    cpu_hog: Any,
) -> None:
    """
    Real clock, CPU hog: a caller with less time than one step (0.2 s) never reaches the
    step function; one queued behind it, with no deadline, is served.
    """
    gen = SteppingGenerator(step_time=0.2)
    outcomes: dict[str, object] = {}
    async with bs.ContinuousScope(gen, max_active=2) as scope, anyio.create_task_group() as tg:
        tg.start_soon(scope.submit, 12)  # steps for about 2.4 s
        for _ in range(4):  # two steps timed (their time is confirmed), a third begun
            await gen.stepping.wait()

        async def hurried() -> None:
            # Mid-step, 0.15 s to go: the next round comes before it gives up, but a
            # step joined then would end after.
            with anyio.move_on_after(0.15) as cancel_scope:
                await scope.submit(5)
            outcomes["hurried"] = "gave up" if cancel_scope.cancelled_caught else "served"

        async def behind() -> None:
            outcomes["behind"] = await scope.submit(2)

        await anyio.sleep(0.1)
        tg.start_soon(hurried)
        await anyio.sleep(0.01)
        tg.start_soon(behind)
    assert outcomes == {"hurried": "gave up", "behind": expected(2)}
    assert all(5 not in step for step in gen.steps)
    check_invariant(scope.statistics())
    assert cpu_hog.spins > 0


@pytest.mark.realclock
async def test_caller_whose_deadline_moved_joins_once_it_has_passed_real_clock(
    cpu_hog: Any,
) -> None:
    """
    Real clock, CPU hog: a caller queued with less time than one step (0.2 s), whose
    deadline is then lifted, is still served once the old deadline has passed: nobody
    hangs on an item set aside for a deadline that moved.
    """
    gen = SteppingGenerator(step_time=0.2)
    results: list[list[str]] = []
    with anyio.fail_after(10):  # a caller left set aside would hang here
        async with (
            bs.ContinuousScope(gen, max_active=2) as scope,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(scope.submit, 12)  # steps for about 2.4 s
            for _ in range(3):  # two steps timed (their time is confirmed), a third begun
                await gen.stepping.wait()

            async def patient() -> None:
                with anyio.CancelScope(deadline=anyio.current_time() + 0.15) as cancel_scope:
                    tg.start_soon(lift, cancel_scope)
                    results.append(await scope.submit(3))

            async def lift(cancel_scope: anyio.CancelScope) -> None:
                await anyio.sleep(0.05)
                cancel_scope.deadline = math.inf  # after its item was queued

            tg.start_soon(patient)
    assert results == [expected(3)]
    check_invariant(scope.statistics())
    assert cpu_hog.spins > 0


# -- invariants under random schedules ----------------------------------------------------

# One caller: (arrival delay, patience or None, outputs wanted, breaks after k outputs).
callers = st.lists(
    st.tuples(
        st.floats(0, 5),
        st.one_of(st.none(), st.floats(0, 8)),
        st.integers(0, 6),
        st.one_of(st.none(), st.integers(1, 4)),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.virtual_time
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(schedule=callers, max_active=st.integers(1, 5), max_buffered=st.integers(1, 3))
async def test_random_join_leave_cancel_schedules(
    schedule: list[tuple[float, float | None, int, int | None]],
    max_active: int,
    max_buffered: int,
) -> None:
    """Every row's outputs are complete and in order, none to a wrong caller, no step after
    the last caller left."""
    alive_steps: list[bool] = []

    async def step(rows: list[bs.Row[tuple[int, int]]]) -> list[Output]:
        assert 0 < len(rows) <= max_active
        alive_steps.append(any(row.alive for row in rows))
        outputs: list[Output] = []
        for row in rows:
            index, n = row.item
            outputs.append(bs.END if row.steps >= n else (index, row.steps))  # type: ignore[arg-type]
        await anyio.sleep(0.5)
        return outputs

    got: dict[int, list[Any]] = {}
    whole: set[int] = set()
    async with (
        bs.ContinuousScope(step, max_active=max_active, max_buffered=max_buffered) as scope,
        anyio.create_task_group() as tg,
    ):

        async def run(
            index: int, delay: float, patience: float | None, n: int, stop: int | None
        ) -> None:
            await anyio.sleep(delay)
            got[index] = []
            with anyio.move_on_after(math.inf if patience is None else patience):
                async for output in scope.stream((index, n)):
                    got[index].append(output)
                    await anyio.sleep(0.3)  # a reader slower than the steps at times
                    if stop is not None and len(got[index]) >= stop:
                        break
                else:
                    whole.add(index)

        for index, (delay, patience, n, stop) in enumerate(schedule):
            tg.start_soon(run, index, delay, patience, n, stop)
    for index, (_, _, n, _) in enumerate(schedule):
        outputs = got[index]
        assert outputs == [(index, k) for k in range(len(outputs))]  # its own, in order
        if index in whole:
            assert len(outputs) == n
    assert all(alive_steps)  # every step had a caller still waiting
    stats = scope.statistics()
    check_invariant(stats)
    assert (stats.active, stats.pending, stats.completed) == (0, 0, stats.rows_finished)
    assert stats.rows_abandoned <= stats.cancelled
