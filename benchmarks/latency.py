"""
Scenario (b): latency under open-loop Poisson arrivals.

The batch function stands for one serial device: a batch holds it for ``2 ms + 0.05 ms x
batch size`` (an ``anyio.sleep`` under an ``anyio.Lock``, so the event loop stays free as
it would with a GPU or a remote service). Capacity is what the device does with full
batches of 32, nominally ``32 / 3.6 ms ≈ 8,889 items/s``, measured on each backend before
the runs (waking a loop from a thread adds a few hundred µs per batch on a loaded
machine, and at 90 % load that matters); arrivals come at 30, 70 and 90 % of it.

Arrivals are open-loop: their times are drawn in advance (exponential gaps), each item's
latency runs from its *scheduled* arrival to its result, so a harness that falls behind
does not hide queueing (no coordinated omission). Items of the first 15 % of the window
are a warm-up and not counted. Items still unfinished a few seconds after the window
closes count as infinitely late (an overloaded implementation shows p99 = inf). Each
point also reports the achieved throughput: counted items done per second, from the end
of the warm-up to the last of them.

The knee (90 % load and more) is noisy: there each implementation runs at least
``Settings.latency_knee_runs`` times for ``latency_knee_seconds`` each, and the report
gives the spread (lowest to highest) of every figure beside its median.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import anyio
import anyio.to_thread

from ._core import (
    Record,
    Settings,
    attach_ratios,
    backend_available,
    percentile,
    safe_run,
    skipped,
)
from .implementations import Impl, measurable
from .overhead import reference

__all__ = ["CAPACITY", "SerialDevice", "measure", "run"]

SCENARIO = "latency"
IMPLEMENTATIONS = (
    "floor",
    "lean-floor",
    "anyio-event",
    "batchscope",
    "batched",
    "aiodataloader",
    "ray",
)
#: Loads from which a point is "the knee": more and longer repeats (``Settings``).
KNEE = 0.9
BATCH = 32
MAX_WAIT = 0.005
BASE_S = 0.002
PER_ITEM_S = 0.00005
#: Items per second with full batches.
CAPACITY = BATCH / (BASE_S + PER_ITEM_S * BATCH)
WARMUP = 0.15
GRACE_S = 3.0


class SerialDevice:
    """
    A device that runs one batch at a time, for ``base + per_item x len(batch)`` s.

    The wait is a ``time.sleep`` in a worker thread, awaited from the loop: it ends within
    tens of µs of its due time, where an event-loop timer may overshoot by up to a
    millisecond (epoll's resolution), which would cut capacity by a fifth.
    """

    def __init__(self, base: float = BASE_S, per_item: float = PER_ITEM_S) -> None:
        self.base = base
        self.per_item = per_item
        self.batches = 0
        self.items = 0
        self._lock: anyio.Lock | None = None

    async def run(self, items: list[Any]) -> list[Any]:
        """Hold the device for the batch's cost; return the items."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            await anyio.to_thread.run_sync(time.sleep, self.base + self.per_item * len(items))
        self.batches += 1
        self.items += len(items)
        return items


async def calibrate(batches: int = 40) -> float:
    """Items per second the device really does with full batches on this machine."""
    device = SerialDevice()
    items = list(range(BATCH))
    await device.run(items)
    started = anyio.current_time()
    for _ in range(batches):
        await device.run(items)
    return BATCH * batches / (anyio.current_time() - started)


async def measure(impl: Impl, rate: float, seconds: float, seed: int) -> dict[str, float]:
    """Run Poisson arrivals at *rate* items/s for *seconds*; return latency figures (ms)."""
    device = SerialDevice()
    rng = random.Random(seed)
    latencies: list[float] = []
    counted_from = 0.0
    scheduled_count = 0
    clock = anyio.current_time
    last_done = 0.0

    async with impl.open(device.run, max_batch_size=BATCH, max_wait=MAX_WAIT) as submit:

        async def one(scheduled: float, counted: bool) -> None:
            nonlocal last_done
            await submit(scheduled)
            if counted:
                last_done = clock()
                latencies.append(last_done - scheduled)

        async with anyio.create_task_group() as tg:
            start = clock()
            end = start + seconds
            counted_from = start + WARMUP * seconds
            due = start + rng.expovariate(rate)
            while due < end:
                current = clock()
                while due <= current and due < end:
                    counted = due >= counted_from
                    scheduled_count += counted
                    tg.start_soon(one, due, counted)
                    due += rng.expovariate(rate)
                if due < end:
                    await anyio.sleep_until(due)
            with anyio.move_on_after(GRACE_S):
                while len(latencies) < scheduled_count:  # noqa: ASYNC110 - harness grace period
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    unfinished = scheduled_count - len(latencies)
    if unfinished > 0.01 * max(1, scheduled_count):
        p50 = p99 = math.inf
    else:
        latencies.extend([math.inf] * unfinished)
        p50 = percentile(latencies, 50) * 1e3
        p99 = percentile(latencies, 99) * 1e3
    done = scheduled_count - unfinished
    achieved = done / (last_done - counted_from) if done and last_done > counted_from else 0.0
    return {
        "p50": p50,
        "p99": p99,
        "achieved": achieved,
        "mean_batch": device.items / max(1, device.batches),
        "unfinished": float(unfinished),
    }


def run(settings: Settings) -> list[Record]:
    """Every implementation, backend and load; ratios of p50/p99 against the reference."""
    records: list[Record] = []
    for backend in settings.backends:
        missing = backend_available(backend)
        if missing:
            records.append(skipped(SCENARIO, "*", backend, missing))
            continue
        impls = measurable(settings, SCENARIO, backend, IMPLEMENTATIONS, records)
        if settings.wants("unbatched"):
            records.append(
                skipped(
                    SCENARIO,
                    "unbatched",
                    backend,
                    f"capacity without batching is {1 / (BASE_S + PER_ITEM_S):.0f} items/s, "
                    f"below every arrival rate",
                )
            )
        backend_records: list[Record] = []
        capacity, error = safe_run(backend, calibrate)
        if error:
            records.append(skipped(SCENARIO, "device", backend, error, status="error"))
            continue
        records.append(
            Record(
                SCENARIO,
                "device",
                backend,
                "capacity",
                capacity,
                "items/s",
                {"batch": BATCH},
                note=f"nominal {CAPACITY:.0f} items/s",
            )
        )
        for load in settings.latency_loads:
            rate = load * capacity
            params = {"load": load, "batch": BATCH}
            runs, seconds = settings.runs, settings.latency_seconds
            if load >= KNEE:
                runs = max(runs, settings.latency_knee_runs)
                seconds = max(seconds, settings.latency_knee_seconds)
            for run_index in range(runs):
                for impl in impls:
                    seed = 1000 * run_index + int(load * 100)
                    result, error = safe_run(backend, measure, impl, rate, seconds, seed)
                    if error:
                        backend_records.append(
                            Record(
                                SCENARIO,
                                impl.name,
                                backend,
                                "p99",
                                None,
                                "ms",
                                dict(params),
                                run_index,
                                status="error",
                                note=error,
                            )
                        )
                        continue
                    for metric, unit in (
                        ("p50", "ms"),
                        ("p99", "ms"),
                        ("achieved", "items/s"),
                        ("mean_batch", "items"),
                    ):
                        note = (
                            f"{result['unfinished']:.0f} unfinished" if result["unfinished"] else ""
                        )
                        backend_records.append(
                            Record(
                                SCENARIO,
                                impl.name,
                                backend,
                                metric,
                                result[metric],
                                unit,
                                dict(params),
                                run_index,
                                note=note,
                            )
                        )
        attach_ratios(backend_records, reference(backend))
        records.extend(backend_records)
    return records
