"""
The demo's ``--workload generate``: static vs continuous batching of a simulated generator.

A generator produces one output per row per step; a step over ``r`` rows costs
``step_seconds + row_seconds * r`` (one serial device, an ``anyio.sleep``, so it also runs
on a virtual clock in tests). Each request wants a lognormal number of outputs (seeded).
Many concurrent clients stream their requests (a closed loop: each sends its next request
when the last one ended) and time each request's first output. Two servers, at the same
``max_active``:

* **static**: a streaming :class:`BatchScope` (an async-generator batch function); a batch
  runs until its longest row ends, and every step pays for every row of the batch (as a
  padded ``generate`` does), so short requests wait for long ones and new requests wait
  for the whole batch;
* **continuous**: a :class:`ContinuousScope` whose step function does one step over the
  active rows; rows that end leave and waiting ones join between two steps.
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import anyio
import attrs

from .. import Row  # the public name: the demo stays off the engine layers
from .._continuous import ContinuousScope
from .._markers import END, End
from .._scope import BatchScope
from .._statistics import Percentiles
from . import ratio

__all__ = [
    "GENERATE_MODES",
    "GenerateConfig",
    "GenerateResult",
    "format_generate_header",
    "format_generate_table",
    "output_lengths",
    "run_generate",
    "write_generate_plot",
]

GenerateMode = Literal["static", "continuous"]
GENERATE_MODES: tuple[GenerateMode, ...] = ("static", "continuous")
_LABELS: Mapping[GenerateMode, str] = MappingProxyType(
    {"static": "static batching", "continuous": "continuous batching"}
)
_COLOURS: Mapping[GenerateMode, str] = MappingProxyType(
    {"static": "#d62728", "continuous": "#1f77b4"}
)


@attrs.frozen(kw_only=True)
class GenerateConfig:
    """The generate workload and the simulated generator (the command line's defaults)."""

    clients: int = 64
    requests: int = 160
    #: Most rows in one step, for both servers (the static batch size).
    max_active: int = 16
    #: Seconds the static scope's oldest pending request waits for companions.
    max_wait: float = 0.005
    #: Fixed cost of one step (seconds).
    step_seconds: float = 0.002
    #: Cost of one row in one step (seconds).
    row_seconds: float = 0.000_1
    median_outputs: int = 24
    max_outputs: int = 256
    #: Seeds the output lengths.
    seed: int = 0


@attrs.frozen(kw_only=True)
class GenerateResult:
    """What one server achieved."""

    mode: GenerateMode
    seconds: float
    #: Outputs per second, over the whole run.
    throughput: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    #: Steps of the generator, and the mean number of rows each paid for.
    steps: int
    mean_rows_per_step: float
    #: Every request's time to first output in seconds, in the order they came.
    ttfts: tuple[float, ...] = attrs.field(repr=False)

    @property
    def label(self) -> str:
        """The mode as the table shows it."""
        return _LABELS[self.mode]


def output_lengths(config: GenerateConfig) -> list[int]:
    """Outputs each request wants: lognormal, median ``median_outputs``, capped, seeded."""
    rng = random.Random(config.seed)
    mu = math.log(config.median_outputs)
    return [
        max(1, min(config.max_outputs, round(rng.lognormvariate(mu, 0.9))))
        for _ in range(config.requests)
    ]


async def _clients(
    lengths: Sequence[int], clients: int, stream: Callable[[int], AsyncIterator[int]]
) -> tuple[float, list[float], int]:
    """Closed loop: *clients* tasks stream the requests; (seconds, TTFTs, outputs read)."""
    ttfts: list[float] = []
    outputs = 0
    queue = iter(lengths)

    async def client() -> None:
        nonlocal outputs
        for length in queue:
            start = anyio.current_time()
            first = True
            async for _ in stream(length):
                if first:
                    ttfts.append(anyio.current_time() - start)
                    first = False
                outputs += 1

    started = anyio.current_time()
    async with anyio.create_task_group() as task_group:
        for _ in range(min(clients, len(lengths))):
            task_group.start_soon(client)
    return anyio.current_time() - started, ttfts, outputs


async def _serve_static(config: GenerateConfig, lengths: Sequence[int]) -> GenerateResult:
    steps = 0
    rows_paid = 0

    async def generate(batch: list[int]) -> AsyncIterator[list[int | End]]:
        nonlocal steps, rows_paid
        for step in range(max(batch)):  # until the longest row of the batch ends
            await anyio.sleep(config.step_seconds + config.row_seconds * len(batch))
            steps += 1
            rows_paid += len(batch)
            yield [step if step < n else END for n in batch]  # returning ends the longest

    scope = BatchScope(generate, max_batch_size=config.max_active, max_wait=config.max_wait)
    async with scope:
        seconds, ttfts, outputs = await _clients(lengths, config.clients, scope.stream)
    return _result("static", seconds, ttfts, outputs, steps, rows_paid / steps if steps else 0.0)


async def _serve_continuous(config: GenerateConfig, lengths: Sequence[int]) -> GenerateResult:
    async def step(rows: list[Row[int]]) -> list[int | End]:
        await anyio.sleep(config.step_seconds + config.row_seconds * len(rows))
        return [row.steps if row.steps < row.item else END for row in rows]

    scope = ContinuousScope(step, max_active=config.max_active)
    async with scope:
        seconds, ttfts, outputs = await _clients(lengths, config.clients, scope.stream)
    stats = scope.statistics()
    return _result("continuous", seconds, ttfts, outputs, stats.steps, stats.mean_rows_per_step)


def _result(
    mode: GenerateMode,
    seconds: float,
    ttfts: list[float],
    outputs: int,
    steps: int,
    mean_rows: float,
) -> GenerateResult:
    ttft = Percentiles.of(ttfts)
    return GenerateResult(
        mode=mode,
        seconds=seconds,
        throughput=outputs / seconds if seconds > 0 else math.inf,
        ttft_p50_ms=ttft.p50,
        ttft_p99_ms=ttft.p99,
        steps=steps,
        mean_rows_per_step=mean_rows,
        ttfts=tuple(ttfts),
    )


async def run_generate(config: GenerateConfig) -> list[GenerateResult]:
    """
    Serve the same requests with static, then continuous batching.

    Returns:
        One result per server: static first.
    """
    lengths = output_lengths(config)
    return [await _serve_static(config, lengths), await _serve_continuous(config, lengths)]


def format_generate_header(config: GenerateConfig, backend: str) -> str:
    """The lines above the table: the generator, the workload and the servers."""
    return "\n".join(
        [
            f"batchscope demo: generate workload (simulated generator), {backend}",
            f"generator: a step over r rows costs {config.step_seconds * 1e3:g} ms + "
            f"{config.row_seconds * 1e3:g} ms x r; one output per row per step",
            f"load: {config.requests:,} requests from {config.clients} concurrent clients; "
            f"outputs lognormal, median {config.median_outputs}, max {config.max_outputs} "
            f"(seed {config.seed})",
            f"batching: max_active={config.max_active} for both; static: a streaming "
            f"BatchScope (max_batch_size={config.max_active}, max_wait="
            f"{config.max_wait * 1e3:g} ms), a batch runs until its longest row ends; "
            "continuous: ContinuousScope, rows join and leave between steps",
        ]
    )


_COLUMNS = ("mode", "outputs/s", "vs static", "TTFT p50 ms", "TTFT p99 ms", "steps", "rows/step")


def format_generate_table(results: Sequence[GenerateResult]) -> str:
    """The results side by side as a plain-text table, with a summary below it."""
    base = results[0]
    rows = [_COLUMNS] + [
        (
            r.label,
            f"{r.throughput:,.0f}",
            ratio(r.throughput, base.throughput),
            f"{r.ttft_p50_ms:,.1f}",
            f"{r.ttft_p99_ms:,.1f}",
            f"{r.steps:,}",
            f"{r.mean_rows_per_step:.1f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(
            [row[0].ljust(widths[0])]
            + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        )
        for row in rows
    ]
    by_mode = {r.mode: r for r in results}
    static, continuous = by_mode.get("static"), by_mode.get("continuous")
    if static is not None and continuous is not None:
        throughput = ratio(continuous.throughput, static.throughput)
        p50 = ratio(static.ttft_p50_ms, continuous.ttft_p50_ms)
        p99 = ratio(static.ttft_p99_ms, continuous.ttft_p99_ms)
        lines += [
            "",
            f"continuous vs static batching: {throughput} the throughput; time to first "
            f"output {p50} lower at p50, {p99} lower at p99",
        ]
    lines += [
        "",
        "TTFT: time from a client's request to its first output. rows/step: rows each step "
        "paid for (a static batch pays for rows that have ended until its longest ends)",
    ]
    return "\n".join(lines)


def write_generate_plot(results: Sequence[GenerateResult], path: Path, title: str) -> None:
    """
    Write throughput (bars) and time to first output (distribution per server) to *path*.

    The format follows the extension (``.png`` or ``.svg``).

    Raises:
        ImportError: matplotlib is not installed.
    """
    figure: Any = importlib.import_module("matplotlib.figure").Figure(
        figsize=(11, 5.2), layout="constrained"
    )
    bars_axes, cdf_axes = figure.subplots(1, 2, width_ratios=(1, 1.5))
    colours = [_COLOURS[r.mode] for r in results]
    bars = bars_axes.bar([r.label for r in results], [r.throughput for r in results], color=colours)
    bars_axes.bar_label(bars, [f"{r.throughput:,.0f}/s" for r in results], padding=3, fontsize=9)
    bars_axes.set_ylabel("throughput (outputs/s)")
    bars_axes.set_title("throughput")
    bars_axes.margins(y=0.2)
    bars_axes.grid(axis="y", alpha=0.3)
    for result in results:
        if not result.ttfts:
            continue
        xs = sorted(value * 1000 for value in result.ttfts)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        cdf_axes.step(
            xs,
            ys,
            where="post",
            color=_COLOURS[result.mode],
            label=f"{result.label}: p50 {result.ttft_p50_ms:,.0f} ms, "
            f"p99 {result.ttft_p99_ms:,.0f} ms",
        )
    cdf_axes.axhline(0.99, color="black", linewidth=0.6, linestyle=":")
    cdf_axes.set_xscale("log")
    cdf_axes.set_xlabel("time to first output (ms, log scale)")
    cdf_axes.set_ylabel("fraction of requests")
    cdf_axes.set_ylim(0, 1.02)
    cdf_axes.set_title("time to first output")
    cdf_axes.grid(alpha=0.3, which="both")
    cdf_axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=110)
