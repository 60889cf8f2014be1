"""Tracing: callers' contexts captured at submit, one span per batch, the busy fraction."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio

REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


def _row_contexts(
    delay: float = 0.0,
) -> tuple[FakeBatchFunction[int, int], Callable[[list[int]], Awaitable[list[str]]]]:
    """A recording fake, and a fn through it that answers each row's caller's REQUEST."""
    fake = FakeBatchFunction[int, int](delay=delay)

    async def fn(items: list[int]) -> list[str]:
        await fake(items)
        contexts = bs.current_batch().contexts
        if contexts is None:
            return ["uncaptured"] * len(items)
        return [context.run(REQUEST.get) for context in contexts]

    return fake, fn


async def _call_as(
    scope: bs.BatchScope[int, str], request: str, item: int, out: dict[int, str]
) -> None:
    REQUEST.set(request)
    out[item] = await scope.submit(item)


@pytest.mark.virtual_time
async def test_each_row_sees_its_callers_context() -> None:
    """With capture_context=True, current_batch().contexts[i] is row i's caller's context."""
    fake, fn = _row_contexts()
    out: dict[int, str] = {}
    async with (
        bs.BatchScope(fn, max_batch_size=3, max_wait=0.1, capture_context=True) as scope,
        anyio.create_task_group() as tg,
    ):
        for i in range(3):
            tg.start_soon(_call_as, scope, f"request-{i}", i, out)
    assert out == {i: f"request-{i}" for i in range(3)}
    assert [sorted(batch) for batch in fake.batches] == [[0, 1, 2]]
    stats = scope.statistics()
    assert (stats.submitted, stats.completed, stats.batches) == (3, 3, 1)


@pytest.mark.virtual_time
async def test_contexts_are_not_captured_by_default() -> None:
    """Without capture_context (and no hook asking), fn sees contexts=None."""
    fake, fn = _row_contexts()
    out: dict[int, str] = {}
    async with (
        bs.BatchScope(fn, max_batch_size=2, max_wait=0.1) as scope,
        anyio.create_task_group() as tg,
    ):
        for i in range(2):
            tg.start_soon(_call_as, scope, f"request-{i}", i, out)
    assert out == {0: "uncaptured", 1: "uncaptured"}
    assert [sorted(batch) for batch in fake.batches] == [[0, 1]]
    assert scope.statistics().completed == 2


def test_capture_context_must_be_a_bool() -> None:
    """capture_context='yes' is a TypeError naming the option."""
    with pytest.raises(TypeError, match="'capture_context' must be True or False"):
        bs.BatchScope(FakeBatchFunction[int, int](), capture_context="yes")  # type: ignore[call-overload]


@pytest.mark.realclock
async def test_contexts_stay_with_their_rows_under_load(cpu_hog: Any) -> None:
    """On the real clock with a CPU hog, every caller gets its own context back."""
    fake, fn = _row_contexts(delay=0.002)
    out: dict[int, str] = {}
    async with (
        bs.BatchScope(fn, max_batch_size=8, max_wait=0.005, capture_context=True) as scope,
        anyio.create_task_group() as tg,
    ):
        for i in range(60):
            tg.start_soon(_call_as, scope, f"request-{i}", i, out)
    assert out == {i: f"request-{i}" for i in range(60)}
    assert sorted(fake.items) == list(range(60))
    stats = scope.statistics()
    assert stats.completed == stats.submitted == 60
    assert sum(size * count for size, count in stats.batch_size_histogram) == 60


# -- the busy fraction -------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_busy_fraction_is_the_share_of_time_a_batch_ran() -> None:
    """One 1 s batch in a scope open 4 s: busy_seconds 1.0, busy_fraction 0.25."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, max_batch_size=2, max_wait=0) as scope:
        assert scope.statistics().busy_fraction == 0.0
        await anyio.sleep(1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit, 1)
            await anyio.sleep(0.5)
            live = scope.statistics()  # mid-batch: the running batch counts up to now
            assert live.busy_seconds == pytest.approx(0.5)
            assert live.busy_fraction == pytest.approx(0.5 / 1.5)
        await anyio.sleep(2)
    stats = scope.statistics()
    assert fake.batches == [[1]]
    assert stats.busy_seconds == pytest.approx(1.0)
    assert stats.busy_fraction == pytest.approx(0.25)


@pytest.mark.virtual_time
async def test_overlapping_batches_count_once() -> None:
    """Two batches running at once are busy time once, not twice."""
    fake = FakeBatchFunction[int, int](delay=1.0)
    async with bs.BatchScope(fake, max_batch_size=1, max_wait=0, max_concurrent_batches=2) as scope:
        assert await scope.submit_many([1, 2]) == [1, 2]
        await anyio.sleep(1)
    stats = scope.statistics()
    assert sorted(fake.batches) == [[1], [2]]
    assert stats.busy_seconds == pytest.approx(1.0)
    assert stats.busy_fraction == pytest.approx(0.5)


async def test_prometheus_exports_the_busy_fraction() -> None:
    """PrometheusHooks has a busy_fraction gauge, between 0 and 1, above 0 after work."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from batchscope.metrics import PrometheusHooks

    registry = prometheus_client.CollectorRegistry()
    hooks = PrometheusHooks(name="busy", registry=registry)
    fake = FakeBatchFunction[int, int](delay=0.05)
    async with bs.BatchScope(fake, max_wait=0, hooks=hooks) as scope:
        await scope.submit(1)
    value = registry.get_sample_value("batchscope_busy_fraction", {"scope": "busy"})
    assert value is not None and 0.0 < value <= 1.0
    assert fake.batches == [[1]]
    assert 0.0 < scope.statistics().busy_fraction <= 1.0


async def test_opentelemetry_exports_the_busy_fraction() -> None:
    """OpenTelemetryHooks observes a batchscope.busy_fraction gauge."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from batchscope.metrics import OpenTelemetryHooks

    reader = InMemoryMetricReader()
    hooks = OpenTelemetryHooks(meter=MeterProvider(metric_readers=[reader]).get_meter("t"))
    fake = FakeBatchFunction[int, int](delay=0.05)
    async with bs.BatchScope(fake, max_wait=0, hooks=hooks) as scope:
        await scope.submit(1)
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope_metrics in resource.scope_metrics
        for metric in scope_metrics.metrics
    }
    (busy,) = points["batchscope.busy_fraction"]
    assert 0.0 < busy.value <= 1.0  # type: ignore[attr-defined]
    assert scope.statistics().batches == 1


# -- spans -------------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[tuple[Any, Any]]:
    """A tracer recording into an in-memory exporter: (tracer, exporter)."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


async def _traced_submit(
    tracer: Any, scope: bs.BatchScope[int, Any], item: int, span_ids: dict[int, int]
) -> None:
    with tracer.start_as_current_span(f"request-{item}") as span:
        span_ids[item] = span.get_span_context().span_id
        await scope.submit(item)


@pytest.mark.virtual_time
async def test_one_span_per_batch_links_its_callers(spans: tuple[Any, Any]) -> None:
    """Each batch is one span with size, cost, reason, padding, linked to its callers' spans."""
    from batchscope.metrics import OpenTelemetryTracingHooks

    tracer, exporter = spans
    hooks = OpenTelemetryTracingHooks(name="embed", tracer=tracer)
    fake = FakeBatchFunction[int, int]()
    span_ids: dict[int, int] = {}
    async with (
        bs.BatchScope(fake, max_batch_size=3, max_wait=0.1, cost=lambda n: n, hooks=hooks) as scope,
        anyio.create_task_group() as tg,
    ):
        for i in (1, 2, 3, 4):
            tg.start_soon(_traced_submit, tracer, scope, i, span_ids)
    batches = [s for s in exporter.get_finished_spans() if s.name == "batchscope.batch"]
    assert len(batches) == 2 == scope.statistics().batches
    assert sorted(len(b) for b in fake.batches) == [1, 3]
    for span, batch in zip(
        sorted(batches, key=lambda s: s.attributes["batchscope.batch.size"], reverse=True),
        sorted(fake.batches, key=len, reverse=True),
        strict=True,
    ):
        attributes = span.attributes
        assert attributes["batchscope.scope"] == "embed"
        assert attributes["batchscope.batch.size"] == len(batch)
        assert attributes["batchscope.batch.cost"] == len(batch) * max(batch)
        assert attributes["batchscope.batch.padding_efficiency"] == pytest.approx(
            sum(batch) / (len(batch) * max(batch))
        )
        assert attributes["batchscope.batch.outcome"] == "ok"
        assert span.parent is None
        assert {link.context.span_id for link in span.links} == {span_ids[i] for i in batch}
    reasons = sorted(span.attributes["batchscope.batch.release_reason"] for span in batches)
    assert reasons == ["size", "timer"]


@pytest.mark.virtual_time
async def test_links_are_capped(spans: tuple[Any, Any]) -> None:
    """A batch links at most max_links caller spans and counts the rest as dropped."""
    from batchscope.metrics import OpenTelemetryTracingHooks

    tracer, exporter = spans
    hooks = OpenTelemetryTracingHooks(tracer=tracer, max_links=2)
    fake = FakeBatchFunction[int, int]()
    span_ids: dict[int, int] = {}
    async with (
        bs.BatchScope(fake, max_batch_size=5, max_wait=0.1, hooks=hooks) as scope,
        anyio.create_task_group() as tg,
    ):
        for i in range(5):
            tg.start_soon(_traced_submit, tracer, scope, i, span_ids)
    (batch,) = [s for s in exporter.get_finished_spans() if s.name == "batchscope.batch"]
    assert len(batch.links) == 2
    assert {link.context.span_id for link in batch.links} <= set(span_ids.values())
    assert batch.attributes["batchscope.batch.links_dropped"] == 3
    assert [sorted(batch) for batch in fake.batches] == [[0, 1, 2, 3, 4]]
    assert scope.statistics().completed == 5


@pytest.mark.virtual_time
async def test_a_failed_batch_span_has_an_error_status(spans: tuple[Any, Any]) -> None:
    """A batch whose fn raised ends its span with an error status and outcome 'failed'."""
    from opentelemetry.trace import StatusCode

    from batchscope.metrics import OpenTelemetryTracingHooks

    tracer, exporter = spans
    fake = FakeBatchFunction[int, int](raise_on={1: ValueError("down")})
    hooks = OpenTelemetryTracingHooks(tracer=tracer)
    async with bs.BatchScope(fake, max_wait=0, hooks=hooks) as scope:
        with pytest.raises(ValueError, match="down"):
            await scope.submit(1)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["batchscope.batch.outcome"] == "failed"
    assert span.attributes["batchscope.batch.failed"] == 1
    assert span.links == ()  # the caller had no span
    assert scope.statistics().failed == 1


@pytest.mark.virtual_time
async def test_the_tracing_hook_turns_capture_on(spans: tuple[Any, Any]) -> None:
    """With the tracing hook, fn sees each row's caller span through current_batch()."""
    from opentelemetry import trace

    from batchscope.metrics import OpenTelemetryTracingHooks

    tracer, _ = spans
    seen: list[int] = []

    async def fn(items: list[int]) -> list[int]:
        contexts = bs.current_batch().contexts
        assert contexts is not None
        seen.extend(c.run(trace.get_current_span).get_span_context().span_id for c in contexts)
        return items

    span_ids: dict[int, int] = {}
    hooks = OpenTelemetryTracingHooks(tracer=tracer)
    async with (
        bs.BatchScope(fn, max_batch_size=2, max_wait=0.1, hooks=hooks) as scope,
        anyio.create_task_group() as tg,
    ):
        for i in range(2):
            tg.start_soon(_traced_submit, tracer, scope, i, span_ids)
    assert sorted(seen) == sorted(span_ids.values())
    assert scope.statistics().batches == 1


def test_max_links_is_checked() -> None:
    """max_links=-1 is a ValueError naming it."""
    pytest.importorskip("opentelemetry.trace")
    from batchscope.metrics import OpenTelemetryTracingHooks

    with pytest.raises(ValueError, match="'max_links'"):
        OpenTelemetryTracingHooks(max_links=-1)
