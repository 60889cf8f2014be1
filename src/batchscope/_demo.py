"""
The demo: a simulated model service under concurrent load, unbatched vs batched.

The model stands for an accelerator or a remote inference API: one device, one call at a
time, each call costing a fixed overhead plus a little per item (``2 ms + 0.05 ms`` per
item by default), so batching pays. Many clients send requests concurrently; the demo
reports throughput and latency percentiles for each way of serving them.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import anyio
import attrs

from ._scope import BatchScope

__all__ = ["DemoConfig", "DemoResult", "run_demo"]


@attrs.frozen(kw_only=True)
class DemoConfig:
    """The embedded default workload."""

    clients: int = 64
    requests: int = 1_000
    call_overhead: float = 0.002
    per_item: float = 0.000_05
    max_batch_size: int = 32
    max_wait: float = 0.002


@attrs.frozen(kw_only=True)
class DemoResult:
    """What one way of serving achieved."""

    mode: str
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    mean_batch_size: float


class SimulatedModel:
    """One device: calls run one at a time and cost ``overhead + per_item * len(batch)``."""

    def __init__(self, overhead: float, per_item: float) -> None:
        self._overhead = overhead
        self._per_item = per_item
        self._device = anyio.Lock()
        self.calls = 0
        self.items = 0

    async def __call__(self, batch: list[str]) -> list[int]:
        async with self._device:
            await anyio.sleep(self._overhead + self._per_item * len(batch))
        self.calls += 1
        self.items += len(batch)
        return [len(text) for text in batch]


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def _load(
    config: DemoConfig, call: Callable[[str], Awaitable[int]]
) -> tuple[float, list[float]]:
    """Closed-loop load: `clients` tasks share `requests` requests; returns time, latencies."""
    latencies: list[float] = []
    remaining = config.requests

    async def client(number: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            text = "x" * (1 + (number * 7 + remaining) % 50)
            start = anyio.current_time()
            assert await call(text) == len(text)
            latencies.append(anyio.current_time() - start)

    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for number in range(config.clients):
            tg.start_soon(client, number)
    return anyio.current_time() - started, latencies


def _result(mode: str, seconds: float, latencies: list[float], batch: float) -> DemoResult:
    return DemoResult(
        mode=mode,
        seconds=seconds,
        throughput=len(latencies) / seconds,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        mean_batch_size=batch,
    )


async def run_demo(config: DemoConfig) -> list[DemoResult]:
    """Serve the same load unbatched and batched; return one result per mode."""
    results: list[DemoResult] = []

    model = SimulatedModel(config.call_overhead, config.per_item)

    async def unbatched(text: str) -> int:
        return (await model([text]))[0]

    seconds, latencies = await _load(config, unbatched)
    results.append(_result("unbatched", seconds, latencies, 1.0))

    model = SimulatedModel(config.call_overhead, config.per_item)
    async with BatchScope(
        model, max_batch_size=config.max_batch_size, max_wait=config.max_wait
    ) as scope:
        seconds, latencies = await _load(config, scope.submit)
    stats = scope.statistics()
    results.append(_result("batchscope", seconds, latencies, stats.mean_batch_size))
    return results


def format_table(config: DemoConfig, backend: str, results: list[DemoResult]) -> str:
    """The results as a plain-text table, with the workload above it."""
    lines = [
        f"simulated model service on {backend}: {config.requests} requests from "
        f"{config.clients} concurrent clients",
        f"model: one device, {config.call_overhead * 1e3:g} ms per call + "
        f"{config.per_item * 1e3:g} ms per item; batchscope max_batch_size="
        f"{config.max_batch_size}, max_wait={config.max_wait * 1e3:g} ms",
        "",
        f"{'mode':<12}{'requests/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'batch':>8}",
    ]
    lines.extend(
        f"{r.mode:<12}{r.throughput:>12,.0f}{r.p50_ms:>10.1f}{r.p99_ms:>10.1f}"
        f"{r.mean_batch_size:>8.1f}"
        for r in results
    )
    base, best = results[0], results[-1]
    lines.append("")
    lines.append(
        f"batching: {best.throughput / base.throughput:.1f}x the throughput, "
        f"p99 latency {base.p99_ms / best.p99_ms:.1f}x lower"
    )
    return "\n".join(lines)
