"""
The demo: a model service under concurrent load, unbatched, FIFO-batched and length-bucketed.

Many clients send variable-length requests (lognormal lengths, median 64 tokens, capped at
512, seeded) to one model whose cost follows *padded* tokens (see :mod:`._demo_models`).
The same workload is served three ways:

* **unbatched**: every request is its own call of the model;
* **FIFO-batched**: a :class:`BatchScope` with ``policy="fifo"``: batches in arrival
  order, so a short request is padded to the longest one that came with it;
* **length-bucketed**: ``policy="length", cost=<tokens>``: each batch holds requests of
  similar length, so little is padded.

For each it reports throughput, p50/p99 latency (measured by the clients), mean batch size,
padding efficiency and why batches were released (from ``scope.statistics()``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Literal, Protocol

import anyio
import attrs

from .._scope import BatchScope
from .._statistics import Percentiles
from .models import WORDS, DemoModel

__all__ = [
    "MODES",
    "DemoConfig",
    "DemoResult",
    "Display",
    "Mode",
    "Phase",
    "format_header",
    "format_table",
    "legend",
    "ratio",
    "request_lengths",
    "requests",
    "run_demo",
]

Mode = Literal["unbatched", "fifo", "length"]
MODES: tuple[Mode, ...] = ("unbatched", "fifo", "length")
LABELS: Mapping[Mode, str] = MappingProxyType(
    {"unbatched": "unbatched", "fifo": "FIFO-batched", "length": "length-bucketed"}
)


@attrs.frozen(kw_only=True)
class DemoConfig:
    """The workload and the batching options (the command line's defaults)."""

    clients: int = 256
    requests: int = 2_000
    max_batch_size: int = 32
    #: Seconds the oldest pending request waits for companions.
    max_wait: float = 0.005
    #: Seeds the request lengths and words.
    seed: int = 0
    median_tokens: int = 64
    max_tokens: int = 512
    #: Which ways of serving to run, in order (unbatched is the baseline of the ratios).
    modes: tuple[Mode, ...] = MODES


@attrs.frozen(kw_only=True)
class DemoResult:
    """What one way of serving achieved."""

    mode: Mode
    seconds: float
    #: Requests per second.
    throughput: float
    p50_ms: float
    p99_ms: float
    mean_batch_size: float
    #: Real tokens over padded tokens computed.
    padding_efficiency: float
    #: Batches released per reason (``size``, ``timer``, ...); empty when unbatched.
    release_reasons: Mapping[str, int]
    #: Every request's latency in seconds, in completion order.
    latencies: tuple[float, ...] = attrs.field(repr=False)

    @property
    def label(self) -> str:
        """The mode as the table shows it."""
        return LABELS[self.mode]


@attrs.define(eq=False)
class Phase:
    """Live progress of one way of serving, read by a :class:`Display`."""

    mode: Mode
    total: int
    started: float
    done: int = 0

    @property
    def label(self) -> str:
        """The mode as the display shows it."""
        return LABELS[self.mode]


class Display(Protocol):
    """A live progress display, driven from the demo's own task (works under Trio)."""

    #: Seconds between two calls of :meth:`update`.
    interval: float

    def begin(self, phase: Phase) -> None:
        """A way of serving starts."""

    def update(self, phase: Phase, now: float) -> None:
        """Show the progress of *phase* at time *now*."""

    def end(self, phase: Phase, now: float) -> None:
        """*phase* has finished."""


def request_lengths(config: DemoConfig) -> list[int]:
    """Token counts of the requests: lognormal, median ``median_tokens``, capped, seeded."""
    rng = random.Random(config.seed)
    mu = math.log(config.median_tokens)
    return [
        max(1, min(config.max_tokens, round(rng.lognormvariate(mu, 0.9))))
        for _ in range(config.requests)
    ]


def requests(config: DemoConfig) -> list[str]:
    """The requests: sentences of :data:`WORDS` with :func:`request_lengths` words."""
    rng = random.Random(config.seed + 1)
    return [" ".join(rng.choices(WORDS, k=n)) for n in request_lengths(config)]


async def _watch(display: Display, phase: Phase) -> None:
    while True:
        display.update(phase, anyio.current_time())
        await anyio.sleep(display.interval)


async def _load(
    texts: Sequence[str],
    clients: int,
    call: Callable[[str], Awaitable[object]],
    phase: Phase,
    display: Display | None,
) -> tuple[float, list[float]]:
    """Closed loop: *clients* tasks share *texts*, one request at a time each."""
    latencies: list[float] = []
    queue = iter(texts)

    async def client() -> None:
        for text in queue:
            start = anyio.current_time()
            await call(text)
            latencies.append(anyio.current_time() - start)
            phase.done += 1

    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        if display is not None:
            tg.start_soon(_watch, display, phase)
        async with anyio.create_task_group() as load:
            for _ in range(min(clients, len(texts))):
                load.start_soon(client)
        tg.cancel_scope.cancel()
    return anyio.current_time() - started, latencies


async def _serve(
    mode: Mode,
    config: DemoConfig,
    model: DemoModel,
    texts: Sequence[str],
    phase: Phase,
    display: Display | None,
) -> DemoResult:
    model.reset()
    reasons: Mapping[str, int] = MappingProxyType({})
    if mode == "unbatched":

        async def alone(text: str) -> object:
            return (await model([text]))[0]

        seconds, latencies = await _load(texts, config.clients, alone, phase, display)
        mean_batch, efficiency = 1.0, model.padding_efficiency
    else:
        scope = BatchScope(
            model,
            max_batch_size=config.max_batch_size,
            max_wait=config.max_wait,
            policy=mode,
            cost=model.cost,  # with policy="fifo" it only counts padding, for the table
        )
        async with scope:
            seconds, latencies = await _load(texts, config.clients, scope.submit, phase, display)
        stats = scope.statistics()
        mean_batch, efficiency = stats.mean_batch_size, stats.padding_efficiency
        reasons = MappingProxyType({k: v for k, v in stats.release_reasons.items() if v})
    latency = Percentiles.of(latencies)
    return DemoResult(
        mode=mode,
        seconds=seconds,
        throughput=len(latencies) / seconds if seconds > 0 else math.inf,
        p50_ms=latency.p50,
        p99_ms=latency.p99,
        mean_batch_size=mean_batch,
        padding_efficiency=efficiency,
        release_reasons=reasons,
        latencies=tuple(latencies),
    )


async def run_demo(
    config: DemoConfig, model: DemoModel, display: Display | None = None
) -> list[DemoResult]:
    """
    Serve the same requests each way of ``config.modes``, one after the other.

    Returns:
        One result per mode, in order.
    """
    texts = requests(config)
    results: list[DemoResult] = []
    for mode in config.modes:
        phase = Phase(mode=mode, total=len(texts), started=anyio.current_time())
        if display is not None:
            display.begin(phase)
        results.append(await _serve(mode, config, model, texts, phase, display))
        if display is not None:
            display.end(phase, anyio.current_time())
    return results


def format_header(config: DemoConfig, model: DemoModel, backend: str) -> str:
    """The lines above the table: which model ran, on what, with which workload."""
    return "\n".join(
        [
            f"batchscope demo: {model.title}, {backend}",
            f"model: {model.description}",
            f"load: {config.requests:,} requests from {config.clients} concurrent clients; "
            f"lengths lognormal, median {config.median_tokens} words, max {config.max_tokens} "
            f"(seed {config.seed})",
            "; ".join(
                [
                    f"batching: max_batch_size={config.max_batch_size}, "
                    f"max_wait={config.max_wait * 1e3:g} ms",
                    *(_POLICY_TEXT[mode] for mode in config.modes if mode in _POLICY_TEXT),
                ]
            ),
        ]
    )


_POLICY_TEXT: Mapping[Mode, str] = MappingProxyType(
    {"fifo": "FIFO: policy='fifo'", "length": "length-bucketed: policy='length', cost=<tokens>"}
)


def ratio(value: float, base: float) -> str:
    """*value* over *base* as ``"1.23x"`` (``"-"`` when either is not finite, or base is 0)."""
    if not (math.isfinite(value) and math.isfinite(base)) or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def _reasons(result: DemoResult) -> str:
    if not result.release_reasons:
        return "-"
    return ", ".join(f"{reason} {count}" for reason, count in result.release_reasons.items())


COLUMNS = (
    "mode",
    "req/s",
    "vs unbatched",
    "p50 ms",
    "p99 ms",
    "p99 vs unb.",
    "batch",
    "padding eff.",
    "batches released by",
)


def table_rows(results: Sequence[DemoResult]) -> list[tuple[str, ...]]:
    """The table's cells, one tuple per result (ratios against the unbatched result)."""
    base = next((r for r in results if r.mode == "unbatched"), None)
    return [
        (
            r.label,
            f"{r.throughput:,.0f}",
            "-" if base is None else ratio(r.throughput, base.throughput),
            f"{r.p50_ms:,.1f}",
            f"{r.p99_ms:,.1f}",
            "-" if base is None else ratio(r.p99_ms, base.p99_ms),
            f"{r.mean_batch_size:.1f}",
            f"{r.padding_efficiency:.0%}",
            _reasons(r),
        )
        for r in results
    ]


def summary(results: Sequence[DemoResult]) -> list[str]:
    """One line per comparison worth saying in words."""
    by_mode = {r.mode: r for r in results}
    lines: list[str] = []
    length, fifo, base = by_mode.get("length"), by_mode.get("fifo"), by_mode.get("unbatched")
    if length is not None and fifo is not None:
        lines.append(
            f"length bucketing vs FIFO batching: {ratio(length.throughput, fifo.throughput)} "
            f"the throughput, padding efficiency {length.padding_efficiency:.0%} vs "
            f"{fifo.padding_efficiency:.0%}, p99 latency {ratio(length.p99_ms, fifo.p99_ms)}"
        )
    if base is not None:
        lines.extend(
            f"{r.label} vs unbatched: {ratio(r.throughput, base.throughput)} the throughput, "
            f"p99 latency {ratio(r.p99_ms, base.p99_ms)}"
            for r in results
            if r is not base
        )
    return lines


def legend(results: Sequence[DemoResult]) -> list[str]:
    """What the columns a newcomer may misread mean: padding efficiency, timer releases."""
    lines = [
        "padding eff.: real tokens / padded tokens over all batches (a padded batch costs "
        "its size times its longest request; 100% = no padding)",
        "batches released by: size = a full batch was pending; cost = fewer, longer "
        "requests that weigh a full batch went together; timer = the oldest request "
        "had waited max_wait when the model became free",
    ]
    if any(r.mode == "length" for r in results):
        lines.append(
            "length-bucketed: under load many batches leave on the timer because each "
            "length bucket fills more slowly than the whole queue; when the busy model frees "
            "up, the oldest request has already waited max_wait and its bucket goes: the "
            "batch waited for the model, not idly"
        )
    return lines


def format_table(results: Sequence[DemoResult]) -> str:
    """The results as a plain-text table, with a summary below it."""
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells.extend(cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:-1], strict=True))
        cells.append(row[-1])
        return "  ".join(cells).rstrip()

    return "\n".join([line(row) for row in rows] + ["", *summary(results), "", *legend(results)])
