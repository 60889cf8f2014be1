"""
Metrics exporters for batchscope, built on :class:`batchscope.Hooks`.

* :class:`PrometheusHooks` — ``prometheus-client`` histograms (batch size, queue wait,
  batch run time, item latency), counters (batches by release reason and outcome,
  items by outcome) and a gauge of pending items.
* :class:`OpenTelemetryHooks` — the same instruments through ``opentelemetry-api`` only
  (as OpenTelemetry's guidance for libraries says; the application picks the SDK).

Both are optional (``pip install 'batchscope[metrics]'``); each imports its library when
it is constructed, so ``import batchscope.metrics`` itself costs nothing::

    from batchscope.metrics import PrometheusHooks

    async with BatchScope(model, hooks=PrometheusHooks(name="embed")) as scope:
        ...

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._hooks import BatchFinished, BatchStarted, Hooks, RejectReason

if TYPE_CHECKING:
    from ._scope import BatchScope

__all__ = ["OpenTelemetryHooks", "PrometheusHooks"]

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

    _instruments: dict[tuple[int, str], dict[str, Any]] = {}  # noqa: RUF012 - shared cache

    def __init__(self, name: str = "default", registry: Any = None, namespace: str = "batchscope"):
        prometheus = _require("prometheus_client", "metrics")
        if registry is None:
            registry = prometheus.REGISTRY
        self.name = name
        key = (id(registry), namespace)
        instruments = self._instruments.get(key)
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
            }
            self._instruments[key] = instruments
        self._metrics = instruments

    def _m(self, name: str, **labels: str) -> Any:
        return self._metrics[name].labels(scope=self.name, **labels)

    def scope_opened(self, scope: BatchScope[Any, Any]) -> None:
        # scope.pending is a plain counter: scrapes stay cheap (no statistics snapshot).
        self._m("pending").set_function(lambda: scope.pending)

    def scope_closed(self, scope: BatchScope[Any, Any]) -> None:
        self._m("pending").set_function(lambda: 0)

    def batch_started(self, event: BatchStarted) -> None:
        self._m("batch_size").observe(event.size)
        self._m("batches", reason=event.reason).inc()
        queue_wait = self._m("queue_wait")
        for wait in event.queue_waits:
            queue_wait.observe(wait)

    def batch_finished(self, event: BatchFinished) -> None:
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
        self._scopes: list[BatchScope[Any, Any]] = []
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
        self._observation = metrics.Observation

    def _observe_pending(self, options: Any) -> list[Any]:
        pending = sum(scope.pending for scope in self._scopes)
        return [self._observation(pending, self._attributes)]

    def _with(self, **extra: str) -> dict[str, str]:
        return {**self._attributes, **extra}

    def scope_opened(self, scope: BatchScope[Any, Any]) -> None:
        self._scopes.append(scope)

    def scope_closed(self, scope: BatchScope[Any, Any]) -> None:
        if scope in self._scopes:
            self._scopes.remove(scope)

    def batch_started(self, event: BatchStarted) -> None:
        self._batch_size.record(event.size, self._attributes)
        self._batches.add(1, self._with(**{"batchscope.release_reason": event.reason}))
        for wait in event.queue_waits:
            self._queue_wait.record(wait, self._attributes)

    def batch_finished(self, event: BatchFinished) -> None:
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
