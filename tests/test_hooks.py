"""Hooks, logging and the metrics exporters."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


class Recorder(bs.Hooks):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def scope_opened(self, scope: bs.BatchScope[Any, Any]) -> None:
        self.events.append(("opened", scope))

    def scope_closed(self, scope: bs.BatchScope[Any, Any]) -> None:
        self.events.append(("closed", scope))

    def batch_started(self, event: bs.BatchStarted) -> None:
        self.events.append(("started", event))

    def batch_finished(self, event: bs.BatchFinished) -> None:
        self.events.append(("finished", event))

    def item_rejected(self, reason: str) -> None:
        self.events.append(("rejected", reason))

    def item_cancelled(self, dispatched: bool) -> None:
        self.events.append(("cancelled", dispatched))

    def of(self, kind: str) -> list[Any]:
        return [value for name, value in self.events if name == kind]


async def test_hooks_see_each_batch_with_its_numbers() -> None:
    """batch_started/finished carry size, cost, reason, queue waits, run time and latencies."""
    hooks = Recorder()
    fake = FakeBatchFunction[int, int](delay=0.5, fail_items={2: ValueError("x")})
    async with bs.BatchScope(fake, max_wait=0.1, hooks=hooks) as scope:
        await scope.submit_many([1, 2, 3], return_exceptions=True)
    (started,) = hooks.of("started")
    (finished,) = hooks.of("finished")
    assert (started.size, started.cost, started.reason) == (3, 3.0, "timer")
    assert started.queue_waits == pytest.approx((0.1, 0.1, 0.1))
    assert finished.started is started
    assert finished.seconds == pytest.approx(0.5)
    assert (finished.outcome, finished.completed, finished.failed) == ("partial", 2, 1)
    assert finished.latencies == pytest.approx((0.6, 0.6, 0.6))
    assert [name for name, _ in hooks.events] == ["opened", "started", "finished", "closed"]


async def test_hooks_see_failed_and_abandoned_batches() -> None:
    """A batch whose fn raises ends 'failed'; one whose callers all left ends 'abandoned'."""
    hooks = Recorder()
    fake = FakeBatchFunction[int, int](raise_on={1: KeyError("k")}, delay=1.0)
    async with bs.BatchScope(fake, max_wait=0, hooks=[hooks]) as scope:
        with pytest.raises(KeyError):
            await scope.submit(1)
        with anyio.move_on_after(0.5):
            await scope.submit(2)
        await anyio.sleep(0.01)
    outcomes = [event.outcome for event in hooks.of("finished")]
    assert outcomes == ["failed", "abandoned"]
    assert hooks.of("cancelled") == [True]


async def test_hooks_see_rejections_and_withdrawals() -> None:
    """item_rejected names the reason; item_cancelled says whether it was dispatched."""
    hooks = Recorder()
    fake = FakeBatchFunction[str, str](delay=0.005)
    async with (
        bs.BatchScope(
            fake, cost=len, max_batch_cost=3, oversize="reject", max_wait=1.0, hooks=hooks
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        with pytest.raises(bs.ItemTooLargeError):
            await scope.submit("toolong")
        tg.start_soon(scope.submit, "abc")  # a full batch: the only slot is busy for 5 ms
        await anyio.sleep(0.001)
        with anyio.move_on_after(0.001):
            await scope.submit("ok")
    assert hooks.of("rejected") == ["too_large"]
    assert hooks.of("cancelled") == [False]
    assert fake.items == ["abc"]


async def test_a_failing_hook_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises never breaks the scope or a caller; it is logged."""

    class Broken(bs.Hooks):
        def batch_started(self, event: bs.BatchStarted) -> None:
            raise RuntimeError("exporter bug")

    with caplog.at_level(logging.ERROR, logger="batchscope"):
        async with bs.BatchScope(FakeBatchFunction[int, int](), hooks=Broken()) as scope:
            assert await scope.submit_many([1, 2]) == [1, 2]
    assert "hook" in caplog.text and "exporter bug" in caplog.text


async def test_no_hooks_builds_no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without hooks, the engine never constructs an event (no cost when unused)."""
    from batchscope import _executor, _slots

    def forbidden(*args: object) -> None:
        raise AssertionError("an event was built without hooks")

    monkeypatch.setattr(_slots, "BatchStarted", forbidden)
    monkeypatch.setattr(_executor, "BatchFinished", forbidden)
    async with bs.BatchScope(FakeBatchFunction[int, int]()) as scope:
        assert await scope.submit_many(range(10)) == list(range(10))


def test_hooks_must_be_hooks() -> None:
    """hooks= takes Hooks instances only; anything else is a TypeError naming it."""
    with pytest.raises(TypeError, match=r"'hooks' must be a batchscope\.Hooks"):
        bs.BatchScope(FakeBatchFunction[int, int](), hooks=[object()])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("hooks", "named"),
    [
        (Recorder, r"the class Recorder \(pass an instance: Recorder\(\)\)"),
        (42, "int"),
        (object(), "object"),
    ],
)
def test_hooks_not_a_hook_nor_a_list_is_a_type_error(hooks: object, named: str) -> None:
    """hooks= given a class, a number or a plain object is a TypeError naming the option."""
    with pytest.raises(TypeError, match=rf"'hooks' must be a batchscope\.Hooks .*, got {named}$"):
        bs.BatchScope(FakeBatchFunction[int, int](), hooks=hooks)  # type: ignore[call-overload]


async def test_batch_failures_are_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """fn raising is logged as a warning at most once per 10 s, with a suppressed count."""
    fake = FakeBatchFunction[int, int](raise_on={i: ValueError("down") for i in range(100)})
    with caplog.at_level(logging.WARNING, logger="batchscope"):
        async with bs.BatchScope(fake, max_wait=0, max_batch_size=1) as scope:
            for i in range(50):
                with pytest.raises(ValueError, match="down"):
                    await scope.submit(i)
            await anyio.sleep(11)
            with pytest.raises(ValueError, match="down"):
                await scope.submit(99)
    messages = [r.getMessage() for r in caplog.records if "batch function raised" in r.getMessage()]
    assert len(messages) == 2
    assert "49 similar messages suppressed" in messages[1]


async def test_prometheus_exporter() -> None:
    """PrometheusHooks fills histograms and counters labelled by scope, and a pending gauge."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from batchscope.metrics import PrometheusHooks

    registry = prometheus_client.CollectorRegistry()
    hooks = PrometheusHooks(name="embed", registry=registry)
    fake = FakeBatchFunction[int, int](fail_items={3: ValueError("x")})
    async with bs.BatchScope(fake, max_batch_size=2, max_wait=0.01, hooks=hooks) as scope:
        await scope.submit_many(range(4), return_exceptions=True)

    def value(name: str, **labels: str) -> float | None:
        found: float | None = registry.get_sample_value(name, {"scope": "embed", **labels})
        return found

    assert value("batchscope_batch_size_count") == 2
    assert value("batchscope_batch_size_sum") == 4
    assert value("batchscope_batches_total", reason="size") == 2
    assert value("batchscope_items_total", outcome="completed") == 3
    assert value("batchscope_items_total", outcome="failed") == 1
    assert value("batchscope_batch_outcomes_total", outcome="partial") == 1
    assert value("batchscope_queue_wait_seconds_count") == 4
    assert value("batchscope_item_latency_seconds_count") == 4
    assert value("batchscope_pending_items") == 0


async def test_opentelemetry_exporter() -> None:
    """OpenTelemetryHooks records through opentelemetry-api into whatever SDK the app set."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from batchscope.metrics import OpenTelemetryHooks

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    hooks = OpenTelemetryHooks(name="embed", meter=meter)
    async with bs.BatchScope(FakeBatchFunction[int, int](), max_wait=0.01, hooks=hooks) as scope:
        await scope.submit_many(range(5))
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, Any] = {}
    for resource in data.resource_metrics:
        for scope_metrics in resource.scope_metrics:
            for metric in scope_metrics.metrics:
                points[metric.name] = list(metric.data.data_points)
    (items,) = points["batchscope.items"]
    assert items.value == 5 and items.attributes["batchscope.outcome"] == "completed"
    (sizes,) = points["batchscope.batch.size"]
    assert sizes.sum == 5 and sizes.count == 1
    assert "batchscope.items.pending" in points


def test_prometheus_hooks_register_in_each_new_registry() -> None:
    """
    A registry made where a dropped one lived gets instruments of its own (CPython reuses
    the address of a collected registry within a few rounds; the cache was keyed by id).
    """
    prometheus_client = pytest.importorskip("prometheus_client")
    import gc

    from batchscope.metrics import PrometheusHooks

    for _ in range(20):
        registry = prometheus_client.CollectorRegistry()
        PrometheusHooks(name="reused", registry=registry)
        assert any(family.name == "batchscope_batches" for family in registry.collect())
        del registry
        gc.collect()
