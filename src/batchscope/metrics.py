"""
Metrics exporters for batchscope, built on :class:`batchscope.Hooks`.

* :class:`PrometheusHooks` — ``prometheus-client`` histograms (batch size, queue wait,
  batch run time, item latency), counters (batches by release reason and outcome,
  items by outcome), a gauge of pending items and one of the busy fraction (the share of
  time since the scope opened with at least one batch running).
* :class:`OpenTelemetryHooks` — the same instruments through ``opentelemetry-api`` only
  (as OpenTelemetry's guidance for libraries says; the application picks the SDK).
* :class:`OpenTelemetryTracingHooks` — one span per batch, linked to the spans of the
  callers whose items it carries.

Attached to a :class:`~batchscope.ContinuousScope`, the first two export its steps
instead: steps, active rows per step, step run time, join wait, time to first output,
time between outputs, rows finished/failed/abandoned, and the same pending gauge and
item counters (rejected, cancelled).

Both are optional (``pip install 'batchscope[metrics]'``); each imports its library when
it is constructed, so ``import batchscope.metrics`` itself costs nothing::

    from batchscope.metrics import PrometheusHooks

    async with BatchScope(model, hooks=PrometheusHooks(name="embed")) as scope:
        ...

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import importlib
import time
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, cast

from ._hooks import BatchFinished, BatchStarted, Hooks, RejectReason, StepFinished, StepStarted

if TYPE_CHECKING:
    from ._continuous import ContinuousScope
    from ._scope import BatchScope

    #: What a hook is attached to.
    AnyScope: TypeAlias = BatchScope[Any, Any] | ContinuousScope[Any, Any]

__all__ = ["OpenTelemetryHooks", "OpenTelemetryTracingHooks", "PrometheusHooks"]

#: Bucket bounds (seconds) for queue waits, run times and latencies: 0.5 ms to 10 s.
SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Bucket bounds for batch sizes.
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _Busy:
    """
    The share of wall time, since the first scope opened, with at least one batch running.

    Kept from the hook's own events on a monotonic wall clock, so an exporter's thread can
    read it at any time (a scrape never touches the event loop).
    """

    def __init__(self) -> None:
        self.opened: float | None = None
        self.running = 0
        self.since = 0.0
        self.busy = 0.0

    def open(self) -> None:
        if self.opened is None:
            self.opened = time.monotonic()

    def start(self) -> None:
        if not self.running:
            self.since = time.monotonic()
        self.running += 1

    def finish(self) -> None:
        self.running -= 1
        if not self.running:
            self.busy += time.monotonic() - self.since

    def fraction(self) -> float:
        opened = self.opened
        if opened is None:
            return 0.0
        now = time.monotonic()
        busy = self.busy + (now - self.since if self.running else 0.0)
        elapsed = now - opened
        return min(1.0, busy / elapsed) if elapsed > 0 else 0.0


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is not installed: pip install 'batchscope[{extra}]'") from None


class PrometheusHooks(Hooks):
    """
    Export a scope's batches and items as Prometheus metrics.

    Args:
        name: The value of the ``scope`` label, telling scopes apart in one registry.
        registry: A ``prometheus_client.CollectorRegistry`` (the default registry when
            None). Several scopes may share one registry: instruments are created once
            per registry and labelled by scope.
        namespace: The metric name prefix.

    .. versionadded:: 0.1.0
    """

    #: Instruments per registry (held weakly: a registry dropped and another made at the
    #: same address must not find the old one's instruments), then per namespace.
    _instruments: ClassVar[weakref.WeakKeyDictionary[Any, dict[str, dict[str, Any]]]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, name: str = "default", registry: Any = None, namespace: str = "batchscope"):
        prometheus = _require("prometheus_client", "metrics")
        if registry is None:
            registry = prometheus.REGISTRY
        self.name = name
        per_namespace = self._instruments.setdefault(registry, {})
        instruments = per_namespace.get(namespace)
        if instruments is None:
            labels = ["scope"]
            instruments = {
                "batch_size": prometheus.Histogram(
                    "batch_size",
                    "Items per dispatched batch.",
                    labels,
                    namespace=namespace,
                    buckets=SIZE_BUCKETS,
                    registry=registry,
                ),
                "queue_wait": prometheus.Histogram(
                    "queue_wait_seconds",
                    "Time from submit to dispatch, per item.",
                    labels,
                    namespace=namespace,
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
                "batch_seconds": prometheus.Histogram(
                    "batch_duration_seconds",
                    "Time from dispatch to the end of a batch.",
                    labels,
                    namespace=namespace,
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
                "latency": prometheus.Histogram(
                    "item_latency_seconds",
                    "Time from submit to the end of the item's batch.",
                    labels,
                    namespace=namespace,
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
                "batches": prometheus.Counter(
                    "batches",
                    "Batches dispatched, by release reason.",
                    [*labels, "reason"],
                    namespace=namespace,
                    registry=registry,
                ),
                "outcomes": prometheus.Counter(
                    "batch_outcomes",
                    "Batches ended, by outcome (ok, partial, failed, abandoned).",
                    [*labels, "outcome"],
                    namespace=namespace,
                    registry=registry,
                ),
                "items": prometheus.Counter(
                    "items",
                    "Items ended or refused, by outcome.",
                    [*labels, "outcome"],
                    namespace=namespace,
                    registry=registry,
                ),
                "pending": prometheus.Gauge(
                    "pending_items",
                    "Items queued and not yet dispatched.",
                    labels,
                    namespace=namespace,
                    registry=registry,
                ),
                "busy": prometheus.Gauge(
                    "busy_fraction",
                    "Share of time since the scope opened with at least one batch running.",
                    labels,
                    namespace=namespace,
                    registry=registry,
                ),
                # -- a ContinuousScope's ------------------------------------------------
                "steps": prometheus.Counter(
                    "steps",
                    "Calls of a continuous scope's step function.",
                    labels,
                    namespace=namespace,
                    registry=registry,
                ),
                "step_rows": prometheus.Histogram(
                    "step_rows",
                    "Active rows per step.",
                    labels,
                    namespace=namespace,
                    buckets=SIZE_BUCKETS,
                    registry=registry,
                ),
                "step_seconds": prometheus.Histogram(
                    "step_duration_seconds",
                    "Time the step function ran, per step.",
                    labels,
                    namespace=namespace,
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
                "join_wait": prometheus.Histogram(
                    "join_wait_seconds",
                    "Time from submit to joining the running batch, per row.",
                    labels,
                    namespace=namespace,
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
                "first_output": prometheus.Histogram(
                    "time_to_first_output_seconds",
                    "Time from submit to a row's first output.",
                    labels,
                    namespace=namespace,
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
                "between_outputs": prometheus.Histogram(
                    "time_between_outputs_seconds",
                    "Time between two consecutive outputs of one row.",
                    labels,
                    namespace=namespace,
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
                "rows": prometheus.Counter(
                    "rows",
                    "Rows that left the running batch, by outcome (finished, failed, abandoned).",
                    [*labels, "outcome"],
                    namespace=namespace,
                    registry=registry,
                ),
            }
            per_namespace[namespace] = instruments
        self._metrics = instruments
        self._busy = _Busy()
        #: Open continuous scopes (an abandoned row is a dispatched cancellation there).
        self._continuous = 0

    def _m(self, name: str, **labels: str) -> Any:
        return self._metrics[name].labels(scope=self.name, **labels)

    def scope_opened(self, scope: BatchScope[Any, Any]) -> None:
        # scope.pending is a plain counter: scrapes stay cheap (no statistics snapshot).
        self._m("pending").set_function(lambda: scope.pending)
        self._busy.open()
        self._m("busy").set_function(self._busy.fraction)

    def scope_closed(self, scope: BatchScope[Any, Any]) -> None:
        self._m("pending").set_function(lambda: 0)

    def continuous_opened(self, scope: ContinuousScope[Any, Any]) -> None:
        self._m("pending").set_function(lambda: scope.pending)
        self._continuous += 1

    def continuous_closed(self, scope: ContinuousScope[Any, Any]) -> None:
        self._m("pending").set_function(lambda: 0)
        self._continuous -= 1

    def batch_started(self, event: BatchStarted) -> None:
        self._busy.start()
        self._m("batch_size").observe(event.size)
        self._m("batches", reason=event.reason).inc()
        queue_wait = self._m("queue_wait")
        for wait in event.queue_waits:
            queue_wait.observe(wait)

    def batch_finished(self, event: BatchFinished) -> None:
        self._busy.finish()
        self._m("batch_seconds").observe(event.seconds)
        self._m("outcomes", outcome=event.outcome).inc()
        if event.completed:
            self._m("items", outcome="completed").inc(event.completed)
        if event.failed:
            self._m("items", outcome="failed").inc(event.failed)
        latency = self._m("latency")
        for seconds in event.latencies:
            latency.observe(seconds)

    def item_rejected(self, reason: RejectReason) -> None:
        self._m("items", outcome=f"rejected_{reason}").inc()

    def item_cancelled(self, dispatched: bool) -> None:
        self._m("items", outcome="cancelled").inc()
        if dispatched and self._continuous:
            self._m("rows", outcome="abandoned").inc()

    def step_started(self, event: StepStarted) -> None:
        self._m("steps").inc()
        self._m("step_rows").observe(event.rows)
        join_wait = self._m("join_wait")
        for wait in event.join_waits:
            join_wait.observe(wait)

    def step_finished(self, event: StepFinished) -> None:
        self._m("step_seconds").observe(event.seconds)
        if event.finished:
            self._m("rows", outcome="finished").inc(event.finished)
        if event.failed:
            self._m("rows", outcome="failed").inc(event.failed)
        first_output = self._m("first_output")
        for seconds in event.first_outputs:
            first_output.observe(seconds)
        between_outputs = self._m("between_outputs")
        for seconds in event.between_outputs:
            between_outputs.observe(seconds)


class OpenTelemetryHooks(Hooks):
    """
    Export a scope's batches and items as OpenTelemetry metrics (``opentelemetry-api``).

    Args:
        name: The value of the ``batchscope.scope`` attribute on every measurement.
        meter: An ``opentelemetry.metrics.Meter``; by default one named ``batchscope``
            from the global meter provider (a no-op until the application sets an SDK).

    .. versionadded:: 0.1.0
    """

    def __init__(self, name: str = "default", meter: Any = None) -> None:
        metrics = _require("opentelemetry.metrics", "metrics")
        if meter is None:
            meter = metrics.get_meter("batchscope")
        self._attributes = {"batchscope.scope": name}
        self._scopes: list[AnyScope] = []
        #: Open continuous scopes (an abandoned row is a dispatched cancellation there).
        self._continuous = 0
        self._batch_size = meter.create_histogram(
            "batchscope.batch.size", unit="{item}", description="Items per dispatched batch."
        )
        self._queue_wait = meter.create_histogram(
            "batchscope.item.queue_wait", unit="s", description="Time from submit to dispatch."
        )
        self._batch_seconds = meter.create_histogram(
            "batchscope.batch.duration", unit="s", description="Time a batch ran."
        )
        self._latency = meter.create_histogram(
            "batchscope.item.latency", unit="s", description="Time from submit to result."
        )
        self._batches = meter.create_counter(
            "batchscope.batches", unit="{batch}", description="Batches, by release reason."
        )
        self._items = meter.create_counter(
            "batchscope.items", unit="{item}", description="Items ended or refused, by outcome."
        )
        self._pending = meter.create_observable_gauge(
            "batchscope.items.pending",
            callbacks=[self._observe_pending],
            unit="{item}",
            description="Items queued and not yet dispatched.",
        )
        self._busy = _Busy()
        self._busy_gauge = meter.create_observable_gauge(
            "batchscope.busy_fraction",
            callbacks=[self._observe_busy],
            unit="1",
            description="Share of time since the scope opened with at least one batch running.",
        )
        self._observation = metrics.Observation
        # -- a ContinuousScope's ----------------------------------------------------------
        self._steps = meter.create_counter(
            "batchscope.steps", unit="{step}", description="Calls of the step function."
        )
        self._step_rows = meter.create_histogram(
            "batchscope.step.rows", unit="{row}", description="Active rows per step."
        )
        self._step_seconds = meter.create_histogram(
            "batchscope.step.duration", unit="s", description="Time the step function ran."
        )
        self._join_wait = meter.create_histogram(
            "batchscope.row.join_wait", unit="s", description="Time from submit to joining."
        )
        self._first_output = meter.create_histogram(
            "batchscope.row.time_to_first_output",
            unit="s",
            description="Time from submit to a row's first output.",
        )
        self._between_outputs = meter.create_histogram(
            "batchscope.row.time_between_outputs",
            unit="s",
            description="Time between two consecutive outputs of one row.",
        )
        self._rows = meter.create_counter(
            "batchscope.rows",
            unit="{row}",
            description="Rows that left the running batch, by outcome.",
        )

    def _observe_pending(self, options: Any) -> list[Any]:
        pending = sum(scope.pending for scope in self._scopes)
        return [self._observation(pending, self._attributes)]

    def _observe_busy(self, options: Any) -> list[Any]:
        return [self._observation(self._busy.fraction(), self._attributes)]

    def _with(self, **extra: str) -> dict[str, str]:
        return {**self._attributes, **extra}

    def scope_opened(self, scope: BatchScope[Any, Any]) -> None:
        self._scopes.append(scope)
        self._busy.open()

    def scope_closed(self, scope: BatchScope[Any, Any]) -> None:
        if scope in self._scopes:
            self._scopes.remove(scope)

    def continuous_opened(self, scope: ContinuousScope[Any, Any]) -> None:
        self._scopes.append(scope)
        self._continuous += 1

    def continuous_closed(self, scope: ContinuousScope[Any, Any]) -> None:
        if scope in self._scopes:
            self._scopes.remove(scope)
            self._continuous -= 1

    def batch_started(self, event: BatchStarted) -> None:
        self._busy.start()
        self._batch_size.record(event.size, self._attributes)
        self._batches.add(1, self._with(**{"batchscope.release_reason": event.reason}))
        for wait in event.queue_waits:
            self._queue_wait.record(wait, self._attributes)

    def batch_finished(self, event: BatchFinished) -> None:
        self._busy.finish()
        self._batch_seconds.record(
            event.seconds, self._with(**{"batchscope.outcome": event.outcome})
        )
        if event.completed:
            self._items.add(event.completed, self._with(**{"batchscope.outcome": "completed"}))
        if event.failed:
            self._items.add(event.failed, self._with(**{"batchscope.outcome": "failed"}))
        for seconds in event.latencies:
            self._latency.record(seconds, self._attributes)

    def item_rejected(self, reason: RejectReason) -> None:
        self._items.add(1, self._with(**{"batchscope.outcome": f"rejected_{reason}"}))

    def item_cancelled(self, dispatched: bool) -> None:
        self._items.add(1, self._with(**{"batchscope.outcome": "cancelled"}))
        if dispatched and self._continuous:
            self._rows.add(1, self._with(**{"batchscope.outcome": "abandoned"}))

    def step_started(self, event: StepStarted) -> None:
        self._steps.add(1, self._attributes)
        self._step_rows.record(event.rows, self._attributes)
        for wait in event.join_waits:
            self._join_wait.record(wait, self._attributes)

    def step_finished(self, event: StepFinished) -> None:
        self._step_seconds.record(event.seconds, self._attributes)
        if event.finished:
            self._rows.add(event.finished, self._with(**{"batchscope.outcome": "finished"}))
        if event.failed:
            self._rows.add(event.failed, self._with(**{"batchscope.outcome": "failed"}))
        for seconds in event.first_outputs:
            self._first_output.record(seconds, self._attributes)
        for seconds in event.between_outputs:
            self._between_outputs.record(seconds, self._attributes)


class OpenTelemetryTracingHooks(Hooks):
    """
    Trace a scope's batches with OpenTelemetry (``opentelemetry-api``): one span per batch.

    Each span (named ``batchscope.batch``, kind ``INTERNAL``) starts when its batch is
    dispatched and ends when the batch ends. It is the root of its own trace, and links
    to the span that was current in each caller when it submitted (up to *max_links*
    distinct spans; the rest are counted in ``batchscope.batch.links_dropped``), as
    OpenTelemetry's messaging conventions do for batch processing. Attributes:
    ``batchscope.scope``, ``batchscope.batch.size``, ``batchscope.batch.cost``,
    ``batchscope.batch.release_reason``, ``batchscope.batch.padding_efficiency``; at the
    end ``batchscope.batch.outcome``, ``batchscope.batch.completed``,
    ``batchscope.batch.failed``, and an error status when the whole batch failed.

    The scope captures each caller's context at submit for it (``captures_context``),
    so inside fn ``current_batch().contexts[i]`` is row *i*'s caller's context too.

    Args:
        name: The value of the ``batchscope.scope`` attribute.
        tracer: An ``opentelemetry.trace.Tracer``; by default one named ``batchscope``
            from the global tracer provider (a no-op until the application sets an SDK).
        max_links: The most caller spans one batch span links to (OpenTelemetry's SDK
            keeps 128 links per span by default).

    .. versionadded:: 0.2.0
    """

    captures_context: ClassVar[bool] = True

    def __init__(self, name: str = "default", tracer: Any = None, max_links: int = 128) -> None:
        trace = _require("opentelemetry.trace", "metrics")
        checked = cast(object, max_links)
        if isinstance(checked, bool) or not isinstance(checked, int) or checked < 0:
            raise ValueError(f"'max_links' must be an int >= 0, got {max_links!r}")
        if tracer is None:
            tracer = trace.get_tracer("batchscope")
        self._trace = trace
        self._tracer = tracer
        self._name = name
        self._max_links = max_links
        self._root = importlib.import_module("opentelemetry.context").Context()
        #: Open spans by id() of their batch's start event (alive until the batch ends).
        self._spans: dict[int, Any] = {}

    def _links(self, event: BatchStarted) -> tuple[list[Any], int]:
        """Links to the callers' distinct valid spans, and how many were left out."""
        links: list[Any] = []
        contexts = event.contexts
        if not contexts:
            return links, 0
        trace = self._trace
        seen: set[tuple[int, int]] = set()
        dropped = 0
        for context in contexts:
            try:
                span_context = context.run(trace.get_current_span).get_span_context()
            except RuntimeError:  # the context is entered elsewhere right now
                continue
            if not span_context.is_valid:
                continue
            ids = (span_context.trace_id, span_context.span_id)
            if ids in seen:
                continue
            seen.add(ids)
            if len(links) < self._max_links:
                links.append(trace.Link(span_context))
            else:
                dropped += 1
        return links, dropped

    def batch_started(self, event: BatchStarted) -> None:
        links, dropped = self._links(event)
        attributes: dict[str, Any] = {
            "batchscope.scope": self._name,
            "batchscope.batch.size": event.size,
            "batchscope.batch.cost": event.cost,
            "batchscope.batch.release_reason": event.reason,
            "batchscope.batch.padding_efficiency": event.padding_efficiency,
        }
        if dropped:
            attributes["batchscope.batch.links_dropped"] = dropped
        self._spans[id(event)] = self._tracer.start_span(
            "batchscope.batch",
            context=self._root,
            kind=self._trace.SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
        )

    def batch_finished(self, event: BatchFinished) -> None:
        span = self._spans.pop(id(event.started), None)
        if span is None:
            return
        span.set_attribute("batchscope.batch.outcome", event.outcome)
        span.set_attribute("batchscope.batch.completed", event.completed)
        span.set_attribute("batchscope.batch.failed", event.failed)
        if event.outcome == "failed":
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "the batch failed"))
        span.end()
