"""
Benchmark the CuPy pipeline of batchscope.arrays: copy/compute overlap and loop blocking.

NumPy items (variable-length float32 sequences) are padded into pinned host memory,
copied to the GPU, run through a small GPU model, and copied back, with one and then two
batches in flight (``max_concurrent_batches``), for each way of awaiting CUDA events.
Prints batches per second and how long the event loop was blocked (a 1 ms ticker's worst
and total lateness).

    python examples/gpu_pipeline.py [--backend trio] [--items 4096] [--features 256]

Exits with status 0 and a message where no CUDA GPU is present (``--strict``: status 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any

import anyio
import numpy as np

import batchscope as bs
from batchscope.arrays import PadCollator, PaddedBatch


def gpu_or_exit(strict: bool) -> Any:
    try:
        cupy: Any = importlib.import_module("cupy")
    except ImportError:
        reason = "CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x)"
    else:
        if cupy.is_available():
            return cupy
        reason = "no CUDA GPU is available (cupy.is_available() is False)"
    print(f"gpu_pipeline: {reason}; nothing to measure.", file=sys.stderr)
    raise SystemExit(1 if strict else 0)


def make_model(cupy: Any, features: int, depth: int) -> Any:
    rng = cupy.random.default_rng(0)
    weights = [
        rng.standard_normal((features, features), dtype=cupy.float32) / features**0.5
        for _ in range(depth)
    ]

    def model(batch: PaddedBatch) -> Any:
        hidden = batch.data
        for weight in weights:
            hidden = cupy.tanh(hidden @ weight)
        return hidden[..., :16] * batch.mask[..., None]  # (B, L, 16), trimmed per item

    return model


class LoopWatch:
    """A 1 ms ticker: how late it wakes up is how long the loop was blocked."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.total = 0.0
        self.running = True

    async def run(self) -> None:
        while self.running:
            before = time.perf_counter()
            await anyio.sleep(0.001)
            late = time.perf_counter() - before - 0.001
            self.worst = max(self.worst, late)
            self.total += max(late - 0.001, 0.0)  # tolerate 1 ms of timer slack


async def measure(
    model: Any, items: list[Any], batch: int, concurrent: int, wait: str
) -> dict[str, float]:
    collator = PadCollator(xp="cupy", wait=wait, batch_sizes=(batch,), pad_to_multiple_of=64)  # type: ignore[arg-type]
    watch = LoopWatch()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        async with bs.BatchScope(
            model,
            collate=collator,
            max_batch_size=batch,
            max_concurrent_batches=concurrent,
            max_wait=0.002,
        ) as scope:
            await scope.submit_many(items[: batch * 2])  # warm-up: kernels, pinned buffers
            started = time.perf_counter()
            before = scope.statistics().batches
            count = 0
            async for _ in scope.map(items, window=batch * (concurrent + 2)):
                count += 1
            elapsed = time.perf_counter() - started
            batches = scope.statistics().batches - before
        watch.running = False
    return {
        "batches/s": batches / elapsed,
        "items/s": count / elapsed,
        "loop worst ms": watch.worst * 1e3,
        "loop blocked ms": watch.total * 1e3,
    }


async def main(args: argparse.Namespace) -> None:
    cupy = gpu_or_exit(args.strict)
    rng = np.random.default_rng(0)
    lengths = np.clip(
        rng.lognormal(np.log(args.median_length), 0.6, args.items), 1, args.max_length
    ).astype(int)
    items = [rng.standard_normal((n, args.features), dtype=np.float32) for n in lengths]
    model = make_model(cupy, args.features, args.depth)
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"device: {name}, cupy {cupy.__version__}, backend {args.backend}")
    print(
        f"{args.items} items, median length {args.median_length}, "
        f"{args.features} features, batch {args.batch}"
    )
    header = ("wait", "concurrent", "batches/s", "items/s", "loop worst ms", "loop blocked ms")
    print("{:>6} {:>10} {:>10} {:>9} {:>14} {:>16}".format(*header))
    for wait in ("thread", "poll"):
        for concurrent in (1, 2):
            row = await measure(model, items, args.batch, concurrent, wait)
            print(
                f"{wait:>6} {concurrent:>10} {row['batches/s']:>10.1f} {row['items/s']:>9.0f} "
                f"{row['loop worst ms']:>14.2f} {row['loop blocked ms']:>16.1f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--items", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--median-length", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when no GPU is present"
    )
    arguments = parser.parse_args()
    anyio.run(main, arguments, backend=arguments.backend)
