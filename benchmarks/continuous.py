"""
Continuous vs static batching on a simulated generator (issue 16, part 3).

A generator step over ``r`` rows costs ``a + b * r`` seconds (an ``anyio.sleep`` on one
serial device); each request wants a lognormal number of outputs; requests arrive as a
Poisson process. Two servers at the same ``max_active``:

* ``static``: a streaming :class:`~batchscope.BatchScope` whose batch function (an async
  generator) yields steps until the longest row of its batch ends (every step pays for
  every row of the batch, as a padded ``generate`` does); a row that ends early gets
  ``END`` and its caller returns, but its place stays taken until the batch ends;
* ``continuous``: a :class:`~batchscope.ContinuousScope` whose step function does one
  step over the active rows.

Reported per server, medians over seeds: output throughput (outputs per second, from the
first arrival to the last output), p99 time to first output, and from the scope's
``statistics()`` the time between outputs (p50/p90/p99: ``output_gap_ms`` of the
streaming ``BatchScope``, ``time_between_outputs_ms`` of the ``ContinuousScope``) and the
wait before a row starts (p50/p99: ``queue_wait_ms``, submit to its batch's dispatch;
``join_wait_ms``, submit to joining the running batch); then the ratios (targets:
throughput >= 2x, p99 TTFT >= 3x lower). Last, *short during long*: one long request
submitted alone, a short one 2.5 steps later; when each finished (its caller's
``submit`` returned, seconds after the long one's submit) and which finished first.

By default it runs on Trio's virtual clock (``MockClock``): the simulated device is then
exact and the run takes seconds; ``--clock real`` runs the same on the real clock
(asyncio).

    python -m benchmarks.continuous [--runs 5] [--requests 300] [--clock virtual|real]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

import batchscope as bs

A = 0.010  # seconds per step
B = 0.001  # seconds per row per step
SHORT_AFTER_STEPS = 2.5  # the short request arrives mid-step, never on a step boundary
#: Outputs of the long and the short request of the short-during-long table.
LONG_OUTPUTS = 200
SHORT_OUTPUTS = 5


def workload(seed: int, requests: int, rate: float) -> list[tuple[float, int]]:
    """(arrival time, outputs wanted) per request: Poisson arrivals, lognormal lengths."""
    rng = random.Random(seed)
    t = 0.0
    out: list[tuple[float, int]] = []
    for _ in range(requests):
        t += rng.expovariate(rate)
        out.append((t, max(1, min(512, round(rng.lognormvariate(3.5, 1.0))))))
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass
class Served:
    """What one server did with one load: times per request (by index) and its statistics."""

    start: float
    first: dict[int, float] = field(default_factory=dict[int, float])  # first output
    last: dict[int, float] = field(default_factory=dict[int, float])  # last output
    done: dict[int, float] = field(default_factory=dict[int, float])  # the caller's submit returned
    #: From the scope's statistics, after exit: time between a row's outputs (static:
    #: output_gap_ms, continuous: time_between_outputs_ms) and its wait before it starts
    #: (static: queue_wait_ms, continuous: join_wait_ms).
    between_outputs: bs.Percentiles | None = None
    wait: bs.Percentiles | None = None


@dataclass
class Figures:
    """One server's figures on one load (milliseconds)."""

    throughput: float  # outputs per second
    ttft_p99: float
    between_outputs: bs.Percentiles  # from the scope's statistics
    wait: bs.Percentiles  # static: queue_wait_ms; continuous: join_wait_ms


async def run_static(load: list[tuple[float, int]], max_active: int) -> Served:
    served = Served(anyio.current_time())

    async def generate(batch: list[tuple[int, int]]) -> AsyncIterator[list[Any]]:
        longest = max(n for _, n in batch)
        for step in range(longest):
            await anyio.sleep(A + B * len(batch))
            now = anyio.current_time()
            outputs: list[Any] = []
            for index, n in batch:
                if step >= n:
                    outputs.append(bs.END)  # ended: its place stays taken all the same
                    continue
                if step == 0:
                    served.first[index] = now
                if step == n - 1:
                    served.last[index] = now
                outputs.append(step)
            yield outputs

    scope = bs.BatchScope(generate, max_batch_size=max_active, max_wait=0.005)
    async with scope, anyio.create_task_group() as tg:
        for index, (arrival, n) in enumerate(load):
            tg.start_soon(_submit_at, scope.submit, served, index, arrival, n)
    stats = scope.statistics()
    served.between_outputs, served.wait = stats.output_gap_ms, stats.queue_wait_ms
    return served


async def run_continuous(load: list[tuple[float, int]], max_active: int) -> Served:
    served = Served(anyio.current_time())

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
                served.first[index] = now
            if row.steps == n - 1:
                served.last[index] = now
            outputs.append(row.steps)
        return outputs

    scope = bs.ContinuousScope(step, max_active=max_active)
    async with scope, anyio.create_task_group() as tg:
        for index, (arrival, n) in enumerate(load):
            tg.start_soon(_submit_at, scope.submit, served, index, arrival, n)
    stats = scope.statistics()
    served.between_outputs, served.wait = stats.time_between_outputs_ms, stats.join_wait_ms
    return served


SERVERS: dict[str, Callable[[list[tuple[float, int]], int], Awaitable[Served]]] = {
    "static": run_static,
    "continuous": run_continuous,
}


async def _submit_at(
    submit: Callable[[tuple[int, int]], Awaitable[Any]],
    served: Served,
    index: int,
    arrival: float,
    n: int,
) -> None:
    await anyio.sleep_until(served.start + arrival)
    outputs = await submit((index, n))
    assert len(outputs) == n
    served.done[index] = anyio.current_time()


def serve(server: str, load: list[tuple[float, int]], max_active: int, clock: str) -> Served:
    """Run *server* over *load* in a fresh event loop on the virtual or the real clock."""
    if clock == "virtual":
        import trio.testing

        mock = trio.testing.MockClock(autojump_threshold=0)
        return anyio.run(
            SERVERS[server], load, max_active, backend="trio", backend_options={"clock": mock}
        )
    return anyio.run(SERVERS[server], load, max_active)


def measure(load: list[tuple[float, int]], served: Served) -> Figures:
    outputs = sum(n for _, n in load)
    makespan = max(served.last.values()) - (served.start + load[0][0])
    ttft = [
        served.first[index] - (served.start + arrival) for index, (arrival, _) in enumerate(load)
    ]
    assert served.between_outputs is not None
    assert served.wait is not None
    return Figures(outputs / makespan, p99(ttft) * 1000, served.between_outputs, served.wait)


def short_during_long(
    server: str,
    clock: str = "virtual",
    *,
    long: int = LONG_OUTPUTS,
    short: int = SHORT_OUTPUTS,
    max_active: int = 16,
) -> tuple[float, float]:
    """
    When a long request submitted alone, and a short one submitted ``SHORT_AFTER_STEPS``
    steps later, finished: seconds after the long one's submit, ``(long, short)``.
    """
    load = [(0.0, long), (SHORT_AFTER_STEPS * (A + B), short)]
    served = serve(server, load, max_active, clock)
    return served.done[0] - served.start, served.done[1] - served.start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "\n").splitlines()[1])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rate", type=float, default=12.0, help="requests per second")
    parser.add_argument("--max-active", type=int, default=16)
    parser.add_argument("--clock", choices=("virtual", "real"), default="virtual")
    args = parser.parse_args(argv)

    results: dict[str, list[Figures]] = {name: [] for name in SERVERS}
    for seed in range(args.runs):
        load = workload(seed, args.requests, args.rate)
        for name in SERVERS:
            results[name].append(measure(load, serve(name, load, args.max_active, args.clock)))

    print(
        f"simulated generator: step {A * 1000:g} ms + {B * 1000:g} ms/row, "
        f"{args.requests} requests at {args.rate:g}/s, lognormal lengths, "
        f"max_active={args.max_active}, {args.clock} clock, median of {args.runs} runs"
    )
    print(
        f"{'server':<12}{'outputs/s':>11}{'p99 TTFT':>11}"
        f"{'between outputs p50/p90/p99':>30}{'wait p50/p99':>18}   (ms)"
    )
    medians: dict[str, tuple[float, float]] = {}
    for name, runs in results.items():
        throughput = statistics.median([r.throughput for r in runs])
        ttft = statistics.median([r.ttft_p99 for r in runs])
        medians[name] = (throughput, ttft)
        between = "/".join(
            f"{statistics.median([getattr(r.between_outputs, q) for r in runs]):.1f}"
            for q in ("p50", "p90", "p99")
        )
        wait = "/".join(
            f"{statistics.median([getattr(r.wait, q) for r in runs]):.1f}" for q in ("p50", "p99")
        )
        print(f"{name:<12}{throughput:>11.1f}{ttft:>11.1f}{between:>30}{wait:>18}")
    print(
        "(between outputs: static output_gap_ms, continuous time_between_outputs_ms; "
        "wait: static queue_wait_ms, continuous join_wait_ms)"
    )
    speedup = medians["continuous"][0] / medians["static"][0]
    ttft_gain = medians["static"][1] / medians["continuous"][1]
    print(f"throughput: continuous / static = {speedup:.2f}x (target >= 2x)")
    print(f"p99 TTFT:   static / continuous = {ttft_gain:.2f}x (target >= 3x)")

    print(
        f"\nshort during long: a {LONG_OUTPUTS}-output request alone, a {SHORT_OUTPUTS}-output one "
        f"{SHORT_AFTER_STEPS:g} steps later (s after the long one's submit)"
    )
    print(f"{'server':<12}{'long done':>11}{'short done':>12}{'short first':>13}")
    for name in SERVERS:
        long_done, short_done = short_during_long(name, args.clock, max_active=args.max_active)
        first = "yes" if short_done < long_done else "no"
        print(f"{name:<12}{long_done:>11.3f}{short_done:>12.3f}{first:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
