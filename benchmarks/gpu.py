"""
Scenario (h): a small model on a CUDA GPU (CuPy), fed variable-length NumPy sequences.

Items are float32 sequences of shape ``(L, features)``, lognormal lengths (median 128,
sigma 0.6, clipped to 1..512, as in ``examples/gpu_pipeline.py``; views into one random
block, so that the full size does not take gigabytes of host memory). The model is a few
``tanh(h @ W)`` layers on the GPU, summed over the sequence into one vector per item (no
bias: padding rows are zero and stay zero, so padding does not change a result). Every
way ends with the results in host memory. Three ways, each a throughput in items/s:

* ``one-at-a-time``: each item alone to the GPU, through the model and back, synchronized;
* ``offline-sorted`` (the reference): all items sorted by length, padded on the host in
  batches of 32, copied with ``cupy.asarray`` and run back to back, one synchronize at the
  end: the best a batcher that knew every item upfront could do with plain copies;
* ``batchscope``: 256 concurrent callers through ``BatchScope`` with
  ``collate=PadCollator(xp="cupy")`` (pinned staging buffers, asynchronous copies, CUDA
  events awaited off the loop), ``policy="length"``, ``cost=len``, with one and two
  batches in flight (``in_flight``: with two, the next batch is padded and copied while
  the current one computes), on every installed backend. A 1 ms ticker measures how long
  the event loop was blocked meanwhile: ``loop_blocked`` sums its lateness beyond 1 ms of
  timer slack, ``loop_worst`` is its worst lateness.

Targets: online (the better of one and two in flight) ≥ 0.9x offline sorted and ≥ 1.6x
one at a time. Without CuPy or a CUDA device the scenario is one ``skipped`` record.
"""

from __future__ import annotations

import importlib
import math
import time
from typing import Any

import anyio
import numpy as np

from ._core import Record, Settings, backend_available, describe, safe_run, skipped

__all__ = ["Model", "make_items", "run"]

SCENARIO = "gpu"
BATCH = 32
CALLERS = 256
DEPTH = 4
MAX_WAIT = 0.002
MEDIAN_LENGTH = 128
MAX_LENGTH = 512
#: Padded lengths are rounded up to this, online and offline alike (tensor-core tiles).
PAD_MULTIPLE = 16
IN_FLIGHT = (1, 2)


def _import_cupy() -> tuple[Any, str]:
    """CuPy with a usable CUDA device, or None and why not."""
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return None, "no GPU on this machine (and CuPy not installed)"
    if not cupy.is_available():
        return None, "no GPU on this machine"
    return cupy, ""


def make_items(count: int, features: int, seed: int = 5) -> list[np.ndarray]:
    """*count* float32 ``(L, features)`` sequences: views into one random block."""
    rng = np.random.default_rng(seed)
    drawn = rng.lognormal(math.log(MEDIAN_LENGTH), 0.6, count)
    lengths = np.clip(np.round(drawn), 1, MAX_LENGTH).astype(np.int64)
    # One block of at most 64 longest items' worth, not gigabytes of distinct items.
    rows = max(MAX_LENGTH, min(int(lengths.sum()), 64 * MAX_LENGTH))
    block = rng.standard_normal((rows, features), dtype=np.float32)
    starts = rng.integers(0, rows - lengths + 1)
    return [
        block[start : start + n] for start, n in zip(starts.tolist(), lengths.tolist(), strict=True)
    ]


class Model:
    """``DEPTH`` layers of ``tanh(h @ W)`` on the GPU; ``(rows, L, F)`` in, ``(rows, F)`` out."""

    def __init__(self, cupy: Any, features: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        scale = np.float32(1 / math.sqrt(features))
        self.cupy = cupy
        self.weights = [
            cupy.asarray(rng.standard_normal((features, features), dtype=np.float32) * scale)
            for _ in range(DEPTH)
        ]

    def __call__(self, data: Any) -> Any:
        """Enqueue the model on the current stream (no synchronization)."""
        hidden = data
        for weight in self.weights:
            hidden = self.cupy.tanh(hidden @ weight)
        return hidden.sum(axis=1)


def one_at_a_time(cupy: Any, model: Model, items: list[np.ndarray]) -> float:
    """Items/s of each item alone: copy, model, copy back (which synchronizes)."""
    started = time.perf_counter()
    for item in items:
        cupy.asnumpy(model(cupy.asarray(item[None])))
    return len(items) / (time.perf_counter() - started)


def _pad(items: list[np.ndarray]) -> np.ndarray:
    longest = -(-max(len(item) for item in items) // PAD_MULTIPLE) * PAD_MULTIPLE
    host = np.zeros((len(items), longest, items[0].shape[1]), dtype=np.float32)
    for row, item in enumerate(items):
        host[row, : len(item)] = item
    return host


def offline_sorted(cupy: Any, model: Model, items: list[np.ndarray]) -> float:
    """Items/s of length-sorted batches run back to back, synchronized once at the end."""
    ordered = sorted(items, key=len)
    started = time.perf_counter()
    outputs = [
        model(cupy.asarray(_pad(ordered[index : index + BATCH])))
        for index in range(0, len(ordered), BATCH)
    ]
    cupy.cuda.Device().synchronize()
    for output in outputs:
        cupy.asnumpy(output)
    return len(items) / (time.perf_counter() - started)


class LoopWatch:
    """A 1 ms ticker: how late it wakes up is how long the event loop was blocked."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.total = 0.0

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await anyio.sleep(0.001)
            late = time.perf_counter() - before - 0.001
            self.worst = max(self.worst, late)
            self.total += max(late - 0.001, 0.0)  # tolerate 1 ms of timer slack


async def online(model: Model, items: list[np.ndarray], in_flight: int) -> dict[str, float]:
    """Items/s and event-loop blocking of CALLERS callers through BatchScope."""
    from batchscope import BatchScope
    from batchscope.arrays import PadCollator, PaddedBatch

    def forward(batch: PaddedBatch) -> Any:
        return model(batch.data)

    # trim=False: the output is pooled, its axis 1 is features, never the padded length.
    collator = PadCollator(xp="cupy", pad_to_multiple_of=PAD_MULTIPLE, trim=False)
    queue = list(reversed(items))
    async with anyio.create_task_group() as outer:
        async with BatchScope(
            forward,
            collate=collator,
            max_batch_size=BATCH,
            max_wait=MAX_WAIT,
            max_concurrent_batches=in_flight,
            policy="length",
            cost=len,
        ) as scope:
            await scope.submit_many(items[: 2 * BATCH])  # warm-up: kernels, pinned buffers

            async def caller() -> None:
                while queue:
                    await scope.submit(queue.pop())

            watch = LoopWatch()
            outer.start_soon(watch.run)
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(CALLERS):
                    tg.start_soon(caller)
            elapsed = time.perf_counter() - started
            worst, blocked = watch.worst, watch.total
        outer.cancel_scope.cancel()
    return {
        "throughput": len(items) / elapsed,
        "loop_blocked": blocked * 1e3,
        "loop_worst": worst * 1e3,
    }


def _measure(settings: Settings, cupy: Any, records: list[Record]) -> None:
    items = make_items(settings.gpu_items, settings.gpu_features)
    model = Model(cupy, settings.gpu_features)
    one_at_a_time(cupy, model, items[:BATCH])  # warm-up: cuBLAS, kernels, allocator
    offline_sorted(cupy, model, items[:BATCH])
    backends = []
    for backend in settings.backends:
        missing = backend_available(backend)
        if missing:
            records.append(skipped(SCENARIO, "batchscope", backend, missing))
        else:
            backends.append(backend)
    params: dict[str, Any] = {
        "items": len(items),
        "features": settings.gpu_features,
        "batch": BATCH,
    }
    for run_index in range(settings.runs):
        offline = offline_sorted(cupy, model, items)
        one = one_at_a_time(cupy, model, items)
        for name, value in (("offline-sorted", offline), ("one-at-a-time", one)):
            records.append(_record(name, "-", "throughput", value, params, run_index, offline))
        for backend in backends:
            for in_flight in IN_FLIGHT:
                result, error = safe_run(backend, online, model, items, in_flight)
                if error:
                    why = f"in_flight={in_flight}: {error}"
                    records.append(skipped(SCENARIO, "batchscope", backend, why, status="error"))
                    continue
                mine = {**params, "callers": CALLERS, "in_flight": in_flight}
                records.extend(
                    _record("batchscope", backend, metric, value, mine, run_index, offline)
                    for metric, value in result.items()
                )


def _record(
    name: str,
    backend: str,
    metric: str,
    value: float,
    params: dict[str, Any],
    run: int,
    offline: float,
) -> Record:
    """A throughput (its ratio against offline sorted of the same run) or a loop time (ms)."""
    throughput = metric == "throughput"
    return Record(
        SCENARIO,
        name,
        backend,
        metric,
        value,
        "items/s" if throughput else "ms",
        dict(params),
        run,
        reference="offline-sorted" if throughput else None,
        ratio=value / offline if throughput else None,
    )


def run(settings: Settings) -> list[Record]:
    """(h): skipped unless CuPy finds a CUDA device."""
    cupy, why = _import_cupy()
    if cupy is None:
        return [skipped(SCENARIO, "*", "*", why)]
    records: list[Record] = []
    try:
        _measure(settings, cupy, records)
    except Exception as exc:  # a CUDA error, out of memory: report it, keep the suite going
        records.append(skipped(SCENARIO, "*", "*", describe(exc), status="error"))
    return records
