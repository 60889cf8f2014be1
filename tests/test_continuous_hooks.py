"""ContinuousScope's hooks (StepStarted/StepFinished, items refused or left) and exporters."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

import batchscope as bs

pytestmark = pytest.mark.anyio

Output = str | bs.End | Exception


class Generator:
    """
    A step function: item ``n`` yields ``"n:1"`` ... ``"n:n"`` then END, one per step,
    each step taking *step_time*; item ``-n`` fails its row (an exception output) at once.
    """

    def __init__(self, step_time: float = 1.0) -> None:
        self.step_time = step_time
        self.steps: list[list[Any]] = []

    async def __call__(self, rows: list[bs.Row[int]]) -> list[Output]:
        self.steps.append([row.item for row in rows])
        outputs: list[Output] = []
        for row in rows:
            if row.item < 0:
                outputs.append(ValueError(f"bad {row.item}"))
                continue
            row.state = 1 if row.new else row.state + 1
            outputs.append(bs.END if row.state > row.item else f"{row.item}:{row.state}")
        await anyio.sleep(self.step_time)
        return outputs


class Recorder(bs.Hooks):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def continuous_opened(self, scope: bs.ContinuousScope[Any, Any]) -> None:
        self.events.append(("opened", scope))

    def continuous_closed(self, scope: bs.ContinuousScope[Any, Any]) -> None:
        self.events.append(("closed", scope))

    def step_started(self, event: bs.StepStarted) -> None:
        self.events.append(("started", event))

    def step_finished(self, event: bs.StepFinished) -> None:
        self.events.append(("finished", event))

    def item_rejected(self, reason: str) -> None:
        self.events.append(("rejected", reason))

    def item_cancelled(self, dispatched: bool) -> None:
        self.events.append(("cancelled", dispatched))

    def of(self, kind: str) -> list[Any]:
        return [value for name, value in self.events if name == kind]


async def collect(scope: bs.ContinuousScope[int, str], n: int, delay: float = 0.0) -> list[str]:
    await anyio.sleep(delay)
    return await scope.submit(n)


async def leaving(scope: bs.ContinuousScope[int, str], n: int, delay: float, wait: float) -> None:
    await anyio.sleep(delay)
    with anyio.move_on_after(wait):
        await scope.submit(n)


async def failing(scope: bs.ContinuousScope[int, str], n: int, delay: float) -> None:
    await anyio.sleep(delay)
    with pytest.raises(ValueError, match=f"bad {n}"):
        await scope.submit(n)


# -- exact values on a virtual clock ------------------------------------------------------


@pytest.mark.virtual_time
async def test_step_events_carry_rows_joins_and_output_times() -> None:
    """Each step's events give its rows, new rows, join waits, outputs, endings and gaps."""
    hooks = Recorder()
    gen = Generator()
    async with (
        bs.ContinuousScope(gen, max_active=4, hooks=hooks) as scope,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(collect, scope, 2)
        tg.start_soon(collect, scope, 3, 0.25)  # both join at the step boundary t=1
        tg.start_soon(collect, scope, 1, 0.5)
    assert gen.steps == [[2], [2, 3, 1], [2, 3, 1], [3], [3]]
    started = hooks.of("started")
    assert started == [
        bs.StepStarted(rows=1, new_rows=1, active=1, active_cost=1.0, pending=0, join_waits=(0.0,)),
        bs.StepStarted(
            rows=3, new_rows=2, active=3, active_cost=3.0, pending=0, join_waits=(0.75, 0.5)
        ),
        bs.StepStarted(rows=3, new_rows=0, active=3, active_cost=3.0, pending=0, join_waits=()),
        bs.StepStarted(rows=1, new_rows=0, active=1, active_cost=1.0, pending=0, join_waits=()),
        bs.StepStarted(rows=1, new_rows=0, active=1, active_cost=1.0, pending=0, join_waits=()),
    ]
    finished = hooks.of("finished")
    assert [event.started for event in finished] == started
    assert [event.seconds for event in finished] == [1.0] * 5
    assert [(e.outputs, e.finished, e.failed, e.abandoned) for e in finished] == [
        (1, 0, 0, 0),
        (3, 0, 0, 0),
        (1, 2, 0, 0),
        (1, 0, 0, 0),
        (0, 1, 0, 0),
    ]
    assert [e.first_outputs for e in finished] == [(1.0,), (1.75, 1.5), (), (), ()]
    assert [e.between_outputs for e in finished] == [(), (1.0,), (1.0,), (1.0,), ()]
    assert [name for name, _ in hooks.events][:2] == ["opened", "started"]
    assert hooks.events[0][1] is scope and hooks.events[-1] == ("closed", scope)
    stats = scope.statistics()
    assert (stats.steps, stats.outputs, stats.rows_finished) == (5, 6, 3)
    assert stats.time_to_first_output_ms.p99 == 1750.0


@pytest.mark.virtual_time
async def test_step_events_count_failed_and_abandoned_rows() -> None:
    """A row failed by its output and one whose caller left mid-step are counted apart."""
    hooks = Recorder()
    gen = Generator()
    async with (
        bs.ContinuousScope(gen, max_active=4, hooks=[hooks]) as scope,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(collect, scope, 2)
        tg.start_soon(leaving, scope, 5, 0.5, 1.0)  # joins at t=1, leaves at t=1.5
        tg.start_soon(failing, scope, -1, 0.5)  # joins at t=1, fails at t=2
    first, second, third = hooks.of("finished")
    assert (first.outputs, first.finished, first.failed, first.abandoned) == (1, 0, 0, 0)
    assert (second.outputs, second.finished, second.failed, second.abandoned) == (1, 0, 1, 1)
    assert (third.outputs, third.finished, third.failed, third.abandoned) == (0, 1, 0, 0)
    assert hooks.of("cancelled") == [True]
    assert [sorted(step) for step in gen.steps] == [[2], [-1, 2, 5], [2]]
    stats = scope.statistics()
    assert (stats.rows_finished, stats.rows_failed, stats.rows_abandoned) == (1, 1, 1)


@pytest.mark.virtual_time
async def test_a_raising_step_fails_every_row_in_its_event() -> None:
    """A step that raises ends with failed == its rows and no outputs."""

    async def step(rows: list[bs.Row[int]]) -> list[Output]:
        await anyio.sleep(0.25)
        raise KeyError("step bug")

    hooks = Recorder()
    async with bs.ContinuousScope(step, hooks=hooks) as scope:
        with pytest.raises(KeyError, match="step bug"):
            await scope.submit(1)
    (started,) = hooks.of("started")
    (finished,) = hooks.of("finished")
    assert (started.rows, started.new_rows) == (1, 1)
    assert (finished.seconds, finished.outputs, finished.failed, finished.finished) == (
        0.25,
        0,
        1,
        0,
    )
    assert scope.statistics().rows_failed == 1


@pytest.mark.virtual_time
async def test_refused_and_withdrawn_items_reach_the_hooks() -> None:
    """item_rejected names queue_full and bad_cost; a withdrawn waiting item is undispatched."""

    def cost(item: int) -> float:
        if item == 99:
            raise LookupError("no cost")
        return 1.0

    hooks = Recorder()
    gen = Generator()
    async with (
        bs.ContinuousScope(
            gen, max_active=1, cost=cost, max_queue_size=1, on_full="reject", hooks=hooks
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(collect, scope, 2)  # active from t=0 to t=3
        await anyio.sleep(0.5)
        with pytest.raises(ValueError, match="'cost' function raised"):
            await scope.submit(99)
        with anyio.move_on_after(0.3):
            await scope.submit(1)  # waits to join, then leaves
        tg.start_soon(collect, scope, 1)
        await anyio.sleep(0.1)
        with pytest.raises(bs.QueueFullError):
            await scope.submit(1)
    assert hooks.of("rejected") == ["bad_cost", "queue_full"]
    assert hooks.of("cancelled") == [False]
    assert gen.steps == [[2], [2], [2], [1], [1]]
    stats = scope.statistics()
    assert (stats.rejected, stats.cancelled, stats.completed) == (2, 1, 2)


@pytest.mark.virtual_time
async def test_a_failing_hook_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises never breaks the scope or a caller; it is logged."""

    class Broken(bs.Hooks):
        def step_finished(self, event: bs.StepFinished) -> None:
            raise RuntimeError("exporter bug")

    recorder = Recorder()
    with caplog.at_level(logging.ERROR, logger="batchscope"):
        async with bs.ContinuousScope(Generator(), hooks=[Broken(), recorder]) as scope:
            assert await scope.submit(2) == ["2:1", "2:2"]
    assert "hook" in caplog.text and "exporter bug" in caplog.text
    assert len(recorder.of("finished")) == 3  # the next hook still saw every step
    assert scope.statistics().rows_finished == 1


@pytest.mark.virtual_time
async def test_no_hooks_builds_no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without hooks the stepper never constructs a step event."""
    from batchscope import _stepper

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("an event was built without hooks")

    monkeypatch.setattr(_stepper, "StepStarted", forbidden)
    monkeypatch.setattr(_stepper, "StepFinished", forbidden)
    async with bs.ContinuousScope(Generator()) as scope:
        assert await scope.submit(3) == ["3:1", "3:2", "3:3"]
    stats = scope.statistics()
    assert (stats.steps, stats.outputs, stats.time_between_outputs_ms.p50) == (4, 3, 1000.0)


def test_hooks_are_validated_like_batchscopes() -> None:
    """hooks= takes a Hooks or a list of them; a class or anything else is a TypeError."""
    with pytest.raises(TypeError, match=r"got the class Hooks \(pass an instance"):
        bs.ContinuousScope(Generator(), hooks=bs.Hooks)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"'hooks' must be a batchscope\.Hooks"):
        bs.ContinuousScope(Generator(), hooks="hooks")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got int"):
        bs.ContinuousScope(Generator(), hooks=[bs.Hooks(), 3])  # type: ignore[list-item]


# -- the exporters ------------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_prometheus_exporter_covers_a_continuous_scope() -> None:
    """PrometheusHooks counts steps and rows, and times joins, first outputs and gaps."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from batchscope.metrics import PrometheusHooks

    registry = prometheus_client.CollectorRegistry()
    hooks = PrometheusHooks(name="gen", registry=registry)
    async with bs.ContinuousScope(Generator(), max_active=8, hooks=hooks) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, scope, 2)
            tg.start_soon(collect, scope, 3, 0.25)
            tg.start_soon(collect, scope, 1, 0.5)
            tg.start_soon(leaving, scope, 9, 0.5, 1.0)  # abandoned during its first step
            tg.start_soon(failing, scope, -1, 0.5)
        assert registry.get_sample_value("batchscope_pending_items", {"scope": "gen"}) == 0

    def value(name: str, **labels: str) -> float | None:
        found: float | None = registry.get_sample_value(name, {"scope": "gen", **labels})
        return found

    stats = scope.statistics()
    assert value("batchscope_steps_total") == stats.steps == 5
    assert value("batchscope_step_rows_count") == 5
    assert value("batchscope_step_rows_sum") == 1 + 5 + 3 + 1 + 1
    assert value("batchscope_step_duration_seconds_sum") == 5.0
    assert value("batchscope_join_wait_seconds_count") == 5
    assert value("batchscope_join_wait_seconds_sum") == 0.75 + 0.5 * 3
    assert value("batchscope_time_to_first_output_seconds_count") == 3
    assert value("batchscope_time_to_first_output_seconds_sum") == 1.0 + 1.75 + 1.5
    assert value("batchscope_time_between_outputs_seconds_count") == 3
    assert value("batchscope_rows_total", outcome="finished") == stats.rows_finished == 3
    assert value("batchscope_rows_total", outcome="failed") == stats.rows_failed == 1
    assert value("batchscope_rows_total", outcome="abandoned") == stats.rows_abandoned == 1
    assert value("batchscope_items_total", outcome="cancelled") == 1
    assert value("batchscope_pending_items") == 0


@pytest.mark.virtual_time
async def test_opentelemetry_exporter_covers_a_continuous_scope() -> None:
    """OpenTelemetryHooks records steps, rows by outcome and the row timings."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from batchscope.metrics import OpenTelemetryHooks

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    hooks = OpenTelemetryHooks(name="gen", meter=meter)
    async with (
        bs.ContinuousScope(Generator(), max_active=4, hooks=hooks) as scope,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(collect, scope, 2)
        tg.start_soon(leaving, scope, 7, 0.25, 1.0)  # joins at t=1, leaves mid-step
        tg.start_soon(collect, scope, 1, 0.5)
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, Any] = {}
    for resource in data.resource_metrics:
        for scope_metrics in resource.scope_metrics:
            for metric in scope_metrics.metrics:
                points[metric.name] = list(metric.data.data_points)
    (steps,) = points["batchscope.steps"]
    assert steps.value == scope.statistics().steps == 3
    (rows,) = points["batchscope.step.rows"]
    assert (rows.count, rows.sum) == (3, 1 + 3 + 2)
    outcomes = {p.attributes["batchscope.outcome"]: p.value for p in points["batchscope.rows"]}
    assert outcomes == {"finished": 2, "abandoned": 1}
    (first,) = points["batchscope.row.time_to_first_output"]
    assert (first.count, first.sum) == (2, 1.0 + 1.5)
    (between,) = points["batchscope.row.time_between_outputs"]
    assert (between.count, between.sum) == (1, 1.0)
    (joins,) = points["batchscope.row.join_wait"]
    assert (joins.count, joins.sum) == (3, 0.75 + 0.5)
    assert "batchscope.items.pending" in points
    assert "batchscope.batch.size" not in points  # no batch metric from a continuous scope


# -- outcomes on the real clock -----------------------------------------------------------


@pytest.mark.realclock
async def test_events_add_up_to_the_statistics_under_load(cpu_hog: Any) -> None:
    """On a busy real loop, the step events sum to what statistics() counted."""
    hooks = Recorder()
    gen = Generator(step_time=0.001)
    async with (
        bs.ContinuousScope(gen, max_active=8, hooks=hooks) as scope,
        anyio.create_task_group() as tg,
    ):
        for n in range(1, 30):
            tg.start_soon(collect, scope, n % 7 + 1)
        stream = scope.stream(1000)
        async with stream:
            assert await stream.__anext__() == "1000:1"  # then leaves: abandoned
    finished = hooks.of("finished")
    stats = scope.statistics()
    assert len(finished) == len(hooks.of("started")) == stats.steps
    assert sum(e.outputs for e in finished) == stats.outputs
    assert sum(e.finished for e in finished) == stats.rows_finished == 29
    rows = sum(size * count for size, count in stats.rows_per_step_histogram)
    assert sum(e.started.rows for e in finished) == rows
    assert sum(len(e.started.join_waits) for e in finished) == 30
    assert sum(len(e.first_outputs) for e in finished) == 30
    assert stats.rows_abandoned == 1 and hooks.of("cancelled") == [True]
    assert all(e.seconds >= 0 for e in finished)
    assert cpu_hog.spins > 0
