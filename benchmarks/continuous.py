"""
Continuous vs static batching on a simulated generator (issue 16, part 3).

A generator step over ``r`` rows costs ``a + b * r`` seconds (an ``anyio.sleep`` on one
serial device); each request wants a lognormal number of outputs; requests arrive as a
Poisson process. Two servers at the same ``max_active``:

* ``static``: a :class:`~batchscope.BatchScope` whose batch function loops steps until
  the longest row of its batch ends (every step pays for every row of the batch, as a
  padded ``generate`` does); a row's first output counts when its first step ends, as if
  it were streamed;
* ``continuous``: a :class:`~batchscope.ContinuousScope` whose step function does one
  step over the active rows.

Reported per server: output throughput (outputs per second, from the first arrival to the
last output) and p99 time to first output, medians over seeds; then the ratios
(targets: throughput >= 2x, p99 TTFT >= 3x lower). By default it runs on Trio's virtual
clock (``MockClock``): the simulated device is then exact and the run takes seconds;
``--clock real`` runs the same on the real clock (asyncio).

    python -m benchmarks.continuous [--runs 5] [--requests 300] [--clock virtual|real]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from typing import Any

import anyio

import batchscope as bs

A = 0.010  # seconds per step
B = 0.001  # seconds per row per step


def workload(seed: int, requests: int, rate: float) -> list[tuple[float, int]]:
    """(arrival time, outputs wanted) per request: Poisson arrivals, lognormal lengths."""
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(requests):
        t += rng.expovariate(rate)
        out.append((t, max(1, min(512, round(rng.lognormvariate(3.5, 1.0))))))
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def run_static(load: list[tuple[float, int]], max_active: int) -> tuple[float, float]:
    first: dict[int, float] = {}
    last: dict[int, float] = {}

    async def generate(batch: list[tuple[int, int]]) -> list[None]:
        longest = max(n for _, n in batch)
        for step in range(longest):
            await anyio.sleep(A + B * len(batch))
            now = anyio.current_time()
            for index, n in batch:
                if step == 0:
                    first[index] = now
                if step == n - 1:
                    last[index] = now
        return [None] * len(batch)

    start = anyio.current_time()
    scope = bs.BatchScope(generate, max_batch_size=max_active, max_wait=0.005)
    async with scope, anyio.create_task_group() as tg:
        for index, (arrival, n) in enumerate(load):
            tg.start_soon(_submit_at, scope.submit, start + arrival, (index, n))
    return _measure(load, start, first, last)


async def run_continuous(load: list[tuple[float, int]], max_active: int) -> tuple[float, float]:
    first: dict[int, float] = {}
    last: dict[int, float] = {}

    async def step(rows: list[bs.Row[tuple[int, int]]]) -> list[Any]:
        await anyio.sleep(A + B * len(rows))
        now = anyio.current_time()
        outputs: list[Any] = []
        for row in rows:
            index, n = row.item
            if row.steps >= n:
                outputs.append(bs.END)
                continue
            if row.new:
                first[index] = now
            if row.steps == n - 1:
                last[index] = now
            outputs.append(row.steps)
        return outputs

    start = anyio.current_time()
    continuous = bs.ContinuousScope(step, max_active=max_active)
    async with continuous, anyio.create_task_group() as tg:
        for index, (arrival, n) in enumerate(load):
            tg.start_soon(_submit_at, continuous.submit, start + arrival, (index, n))
    return _measure(load, start, first, last)


async def _submit_at(submit: Any, when: float, item: tuple[int, int]) -> None:
    await anyio.sleep_until(when)
    await submit(item)


def _measure(
    load: list[tuple[float, int]], start: float, first: dict[int, float], last: dict[int, float]
) -> tuple[float, float]:
    outputs = sum(n for _, n in load)
    makespan = max(last.values()) - (start + load[0][0])
    ttft = [first[index] - (start + arrival) for index, (arrival, _) in enumerate(load)]
    return outputs / makespan, p99(ttft)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rate", type=float, default=12.0, help="requests per second")
    parser.add_argument("--max-active", type=int, default=16)
    parser.add_argument("--clock", choices=("virtual", "real"), default="virtual")
    args = parser.parse_args(argv)

    results: dict[str, list[tuple[float, float]]] = {"static": [], "continuous": []}
    for seed in range(args.runs):
        load = workload(seed, args.requests, args.rate)
        for name, server in (("static", run_static), ("continuous", run_continuous)):
            if args.clock == "virtual":
                import trio.testing

                clock = trio.testing.MockClock(autojump_threshold=0)
                measured = anyio.run(
                    server, load, args.max_active, backend="trio", backend_options={"clock": clock}
                )
            else:
                measured = anyio.run(server, load, args.max_active)
            results[name].append(measured)

    print(
        f"simulated generator: step {A * 1000:g} ms + {B * 1000:g} ms/row, "
        f"{args.requests} requests at {args.rate:g}/s, lognormal lengths, "
        f"max_active={args.max_active}, {args.clock} clock, median of {args.runs} runs"
    )
    print(f"{'server':<12}{'outputs/s':>12}{'p99 TTFT (ms)':>16}")
    medians = {}
    for name, runs in results.items():
        throughput = statistics.median(r[0] for r in runs)
        ttft = statistics.median(r[1] for r in runs)
        medians[name] = (throughput, ttft)
        print(f"{name:<12}{throughput:>12.1f}{ttft * 1000:>16.1f}")
    speedup = medians["continuous"][0] / medians["static"][0]
    ttft_gain = medians["static"][1] / medians["continuous"][1]
    print(f"throughput: continuous / static = {speedup:.2f}x (target >= 2x)")
    print(f"p99 TTFT:   static / continuous = {ttft_gain:.2f}x (target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
