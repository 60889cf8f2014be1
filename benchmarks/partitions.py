"""
Partitions: batches grouped by model stay full where fill-then-split halves them.

Four models share one scope; each item names its model, drawn uniformly at random. A
model call costs a fixed launch overhead plus a little per item (``anyio.sleep``: a GPU
kernel or a remote call awaited on the loop), and a call can only run one model.

* ``partition``: ``BatchScope(fn, partition=model_of)``: each batch is one model's, one
  model call per batch.
* ``fill-then-split`` (Ray Serve's multiplexed batching): ``BatchScope(fn)`` fills a
  batch of mixed models and fn splits it by model, one call per model in it.

Reported per variant, medians of ``REPEATS`` runs in the same process: mean items per
model call, model calls, throughput (items/s), and the ratio of the partition variant's
to fill-then-split's. Run: ``python -m benchmarks.partitions``.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import anyio

import batchscope as bs

__all__ = ["main", "run_variant"]

MODELS = 4
ITEMS = 4000
CALLERS = 256
BATCH = 32
MAX_WAIT = 0.005
#: A model call: this much per call, plus PER_ITEM per item.
LAUNCH = 0.004
PER_ITEM = 0.00005
REPEATS = 5

Item = tuple[int, int]  # (model, payload)


def model_of(item: Item) -> int:
    """The model an item is for."""
    return item[0]


async def model_call(model: int, payloads: list[int], calls: list[int]) -> list[int]:
    """One call of one model on *payloads* (timed like a kernel launch plus the work)."""
    calls.append(len(payloads))
    await anyio.sleep(LAUNCH + PER_ITEM * len(payloads))
    return [payload * 2 + model for payload in payloads]


def partitioned(calls: list[int]) -> tuple[Callable[[list[Item]], Awaitable[list[int]]], bool]:
    async def fn(items: list[Item]) -> list[int]:
        model = bs.current_batch().partition
        assert isinstance(model, int)
        return await model_call(model, [payload for _, payload in items], calls)

    return fn, True


def fill_then_split(calls: list[int]) -> tuple[Callable[[list[Item]], Awaitable[list[int]]], bool]:
    async def fn(items: list[Item]) -> list[int]:
        groups: dict[int, list[int]] = defaultdict(list)
        for index, (model, _) in enumerate(items):
            groups[model].append(index)
        results = [0] * len(items)
        for model, indices in groups.items():
            outputs = await model_call(model, [items[i][1] for i in indices], calls)
            for index, output in zip(indices, outputs, strict=True):
                results[index] = output
        return results

    return fn, False


VARIANTS = {"partition": partitioned, "fill-then-split": fill_then_split}


async def run_variant(name: str, seed: int) -> tuple[float, int, float]:
    """One run: (mean items per model call, model calls, items per second)."""
    rng = random.Random(seed)
    items = [(rng.randrange(MODELS), i) for i in range(ITEMS)]
    calls: list[int] = []
    fn, by_partition = VARIANTS[name](calls)
    queue = iter(items)

    async def caller(scope: bs.BatchScope[Item, int]) -> None:
        for item in queue:
            assert await scope.submit(item) == item[1] * 2 + item[0]

    started = time.perf_counter()
    async with (
        bs.BatchScope(
            fn,
            max_batch_size=BATCH,
            max_wait=MAX_WAIT,
            partition=model_of if by_partition else None,
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        for _ in range(CALLERS):
            tg.start_soon(caller, scope)
    elapsed = time.perf_counter() - started
    assert sum(calls) == ITEMS
    return ITEMS / len(calls), len(calls), ITEMS / elapsed


async def measure(repeats: int = REPEATS) -> dict[str, tuple[float, float, float]]:
    """Median (items per call, calls, items/s) per variant, runs interleaved."""
    runs: dict[str, list[tuple[float, int, float]]] = {name: [] for name in VARIANTS}
    for repeat in range(repeats):
        for name in VARIANTS:
            runs[name].append(await run_variant(name, seed=repeat))
    return {
        name: (
            statistics.median(r[0] for r in results),
            statistics.median(r[1] for r in results),
            statistics.median(r[2] for r in results),
        )
        for name, results in runs.items()
    }


def main() -> None:
    """Print the table (asyncio)."""
    results = anyio.run(measure)
    print(
        f"{MODELS} models, {ITEMS} items, {CALLERS} callers, max_batch_size={BATCH}, "
        f"model call {LAUNCH * 1000:g} ms + {PER_ITEM * 1e6:g} us/item; medians of {REPEATS}"
    )
    print(f"{'variant':<18}{'items/call':>12}{'calls':>8}{'items/s':>10}")
    for name, (per_call, calls, rate) in results.items():
        print(f"{name:<18}{per_call:>12.1f}{calls:>8.0f}{rate:>10.0f}")
    part, split = results["partition"], results["fill-then-split"]
    print(
        f"partition / fill-then-split: items per call x{part[0] / split[0]:.2f}, "
        f"throughput x{part[2] / split[2]:.2f}"
    )


if __name__ == "__main__":
    main()
