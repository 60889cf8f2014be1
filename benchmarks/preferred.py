"""
Preferred batch sizes: the distinct batch shapes a GPU would see, with and without.

Callers arrive as a Poisson process at a few offered loads (items per second) and each
submits one item. The batch function stands for a GPU call: a launch overhead plus a
little per row (``anyio.sleep``), where a batch of a preferred size is what a compiled
model or a captured CUDA graph runs (every other shape would be compiled or captured
anew, or run eagerly).

* ``any size``: ``BatchScope(fn, max_batch_size=32)``: a batch is whatever is pending.
* ``preferred``: ``preferred_batch_sizes=(1, 2, 4, 8, 16, 32)``: full batches leave at
  32, timer releases are cut to a preferred size.

Reported per load and variant, medians of ``REPEATS`` runs in the same process: the
distinct batch sizes fn saw, the share of batches of a preferred size, throughput
(items/s) and p99 latency (ms). Run: ``python -m benchmarks.preferred``.
"""

from __future__ import annotations

import random
import statistics
import time

import anyio

import batchscope as bs

__all__ = ["main", "run_variant"]

ITEMS = 1000
BATCH = 32
PREFERRED = (1, 2, 4, 8, 16, 32)
MAX_WAIT = 0.005
#: A GPU call: this much per call, plus PER_ROW per row.
LAUNCH = 0.002
PER_ROW = 0.00005
#: Offered loads, items per second (capacity at full batches is about 8,900/s).
LOADS = (500, 2000, 6000)
REPEATS = 3
VARIANTS = ("any size", "preferred")


async def run_variant(name: str, load: float, seed: int) -> tuple[int, float, float, float]:
    """One run: (distinct sizes, share of preferred-size batches, items/s, p99 seconds)."""
    rng = random.Random(seed)
    sizes: list[int] = []

    async def fn(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await anyio.sleep(LAUNCH + PER_ROW * len(items))
        return items

    latencies: list[float] = []

    async def caller(scope: bs.BatchScope[int, int], item: int) -> None:
        start = time.perf_counter()
        assert await scope.submit(item) == item
        latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    async with (
        bs.BatchScope(
            fn,
            max_batch_size=BATCH,
            max_wait=MAX_WAIT,
            preferred_batch_sizes=PREFERRED if name == "preferred" else None,
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        # Arrivals on an absolute schedule: a late sleep sends the overdue ones at once.
        due = anyio.current_time()
        for item in range(ITEMS):
            if due > anyio.current_time():
                await anyio.sleep_until(due)
            tg.start_soon(caller, scope, item)
            due += rng.expovariate(load)
    elapsed = time.perf_counter() - started
    assert sum(sizes) == ITEMS
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    share = sum(size in PREFERRED for size in sizes) / len(sizes)
    return len(set(sizes)), share, ITEMS / elapsed, p99


async def measure(repeats: int = REPEATS) -> dict[tuple[float, str], tuple[float, ...]]:
    """Medians per (load, variant) of the four figures, variants interleaved."""
    runs: dict[tuple[float, str], list[tuple[int, float, float, float]]] = {}
    for repeat in range(repeats):
        for load in LOADS:
            for name in VARIANTS:
                result = await run_variant(name, load, seed=repeat)
                runs.setdefault((load, name), []).append(result)
    return {
        key: tuple(statistics.median(r[i] for r in results) for i in range(4))
        for key, results in runs.items()
    }


def main() -> None:
    """Print the table (asyncio)."""
    results = anyio.run(measure)
    print(
        f"Poisson arrivals, {ITEMS} items per run, max_batch_size={BATCH}, "
        f"max_wait={MAX_WAIT * 1000:g} ms, preferred {PREFERRED}, GPU call "
        f"{LAUNCH * 1000:g} ms + {PER_ROW * 1e6:g} us/row; medians of {REPEATS}"
    )
    print(f"{'load/s':>7} {'variant':<10}{'shapes':>7}{'preferred':>10}{'items/s':>9}{'p99 ms':>8}")
    for (load, name), (shapes, share, rate, p99) in results.items():
        print(f"{load:>7.0f} {name:<10}{shapes:>7.0f}{share:>10.0%}{rate:>9.0f}{p99 * 1000:>8.1f}")


if __name__ == "__main__":
    main()
