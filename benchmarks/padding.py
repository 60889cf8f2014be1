"""
Scenarios (c) padding and (d) fairness, on a CPU NumPy model whose cost follows padded tokens.

Items are token-id arrays with lognormal lengths (median 64, sigma 0.8, clipped to
1..512: FIFO batches of 32 pad about 3.8x, like the mix in PEERS.md). The model pads a
batch to its longest item, embeds, multiplies by a weight matrix and pools, so its time is
proportional to ``batch size x longest item``. It runs on the event loop (a blocking
call inside the async batch function), the same for every implementation.

(c) pushes ``N`` items through each implementation with ``C`` concurrent callers and
reports the padding ratio (padded / real tokens) and throughput, against an offline run
that sorts all items by length first (the best any online batcher could do).

(d) sends Poisson arrivals at 70 % of what the policy could sustain offline (the offline
FIFO throughput for FIFO, the offline sorted throughput for length-aware policies),
measured in the same run, and reports, per item, the wait from arrival to the start of
its batch; the target compares the p99 wait of long items (≥ 256 tokens) with that of
short ones (≤ 64).
"""

from __future__ import annotations

import math
import random
import time

import anyio
import numpy as np

from ._core import Record, Settings, attach_ratios, backend_available, percentile, safe_run, skipped
from .implementations import IMPLS, Impl

__all__ = ["Model", "make_items", "run_fairness", "run_padding"]

BATCH = 32
MAX_WAIT = 0.005
DIM = 256
VOCAB = 1000
SHORT_MAX = 64
LONG_MIN = 256
#: (implementation, policy) pairs measured.
VARIANTS = (
    ("floor", "fifo"),
    ("anyio-event", "fifo"),
    ("batchscope", "fifo"),
    ("batchscope", "length"),
    ("batched", "fifo"),
    ("batched", "length"),
    ("aiodataloader", "fifo"),
)


def make_items(count: int, seed: int) -> list[np.ndarray]:
    """*count* token arrays, lognormal lengths (median 64, sigma 0.8, 1..512)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(math.log(64), 0.8, count)), 1, 512).astype(int)
    return [rng.integers(1, VOCAB, size=int(n), dtype=np.int32) for n in lengths]


class Model:
    """A CPU model whose cost is ``batch x longest``; counts tokens and batch start times."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.embedding = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
        self.weight = rng.standard_normal((DIM, DIM)).astype(np.float32) / DIM
        self.padded = 0
        self.real = 0
        self.batches = 0
        #: id(item) -> perf_counter() when its batch started (for fairness).
        self.started: dict[int, float] = {}

    def compute(self, items: list[np.ndarray]) -> list[np.ndarray]:
        """Run the model on one batch (blocking); one pooled vector per item."""
        start = time.perf_counter()
        started = self.started
        for item in items:
            started[id(item)] = start
        longest = max(len(item) for item in items)
        ids = np.zeros((len(items), longest), dtype=np.int32)
        for row, item in enumerate(items):
            ids[row, : len(item)] = item
        hidden = np.tanh(self.embedding[ids] @ self.weight)
        pooled = hidden.mean(axis=1)
        self.padded += len(items) * longest
        self.real += sum(len(item) for item in items)
        self.batches += 1
        return list(pooled)

    async def run(self, items: list[np.ndarray]) -> list[np.ndarray]:
        """The async batch function every implementation gets (it blocks the loop)."""
        return self.compute(items)


def offline(items: list[np.ndarray], *, sort: bool) -> tuple[float, float]:
    """Throughput (items/s) and padding ratio of running *items* in batches, no batcher."""
    model = Model()
    ordered = sorted(items, key=len) if sort else list(items)
    model.compute(ordered[:BATCH])  # warm-up
    model.padded = model.real = 0
    started = time.perf_counter()
    for index in range(0, len(ordered), BATCH):
        model.compute(ordered[index : index + BATCH])
    elapsed = time.perf_counter() - started
    return len(items) / elapsed, model.padded / model.real


async def closed_loop(
    impl: Impl, policy: str, items: list[np.ndarray], callers: int
) -> dict[str, float]:
    """Push *items* with *callers* concurrent callers; throughput and padding."""
    model = Model()
    model.compute(items[:BATCH])
    model.padded = model.real = 0
    queue = list(reversed(items))
    async with impl.open(
        model.run, max_batch_size=BATCH, max_wait=MAX_WAIT, policy=policy
    ) as submit:

        async def caller() -> None:
            while queue:
                await submit(queue.pop())

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)
        elapsed = time.perf_counter() - started
    return {"throughput": len(items) / elapsed, "padding": model.padded / model.real}


async def open_loop(
    impl: Impl, policy: str, items: list[np.ndarray], rate: float, seconds: float, seed: int
) -> dict[str, float]:
    """Poisson arrivals of *items* (cycled) at *rate*; p99 wait of short and long items."""
    model = Model()
    rng = random.Random(seed)
    waits: list[tuple[int, float]] = []
    pending: dict[int, tuple[int, float]] = {}
    async with impl.open(
        model.run, max_batch_size=BATCH, max_wait=MAX_WAIT, policy=policy
    ) as submit:

        async def one(item: np.ndarray, scheduled: float) -> None:
            pending[id(item)] = (len(item), scheduled)
            await submit(item)
            length, due = pending.pop(id(item))
            waits.append((length, model.started.pop(id(item)) - due))

        async with anyio.create_task_group() as tg:
            start = time.perf_counter()
            end = start + seconds
            due = start
            index = 0
            while due < end:
                current = time.perf_counter()
                while due <= current and due < end:
                    # A copy, so that every submitted item has its own id().
                    tg.start_soon(one, items[index % len(items)].copy(), due)
                    index += 1
                    due += rng.expovariate(rate)
                await anyio.sleep(max(0.0, due - time.perf_counter()))
            with anyio.move_on_after(3.0):
                while pending:  # noqa: ASYNC110 - harness grace period
                    await anyio.sleep(0.01)
            unfinished = len(pending)
            tg.cancel_scope.cancel()
    warm = waits[len(waits) // 10 :]
    short = [wait for length, wait in warm if length <= SHORT_MAX]
    long = [wait for length, wait in warm if length >= LONG_MIN]
    p99_short = percentile(short, 99) * 1e3
    p99_long = percentile(long, 99) * 1e3 if not unfinished else math.inf
    return {
        "p99_short": p99_short,
        "p99_long": p99_long,
        "long_short": p99_long / p99_short if p99_short > 0 else math.nan,
        "long_items": float(len(long)),
        "unfinished": float(unfinished),
    }


#: Fairness compares length-aware policies; FIFO variants are there for scale.
FAIRNESS_VARIANTS = (
    ("floor", "fifo"),
    ("batchscope", "fifo"),
    ("batchscope", "length"),
    ("batched", "length"),
)


def _variants(
    settings: Settings,
    backend: str,
    scenario: str,
    records: list[Record],
    variants: tuple[tuple[str, str], ...] = VARIANTS,
) -> list[tuple[Impl, str]]:
    chosen: list[tuple[Impl, str]] = []
    for name, policy in variants:
        if not settings.wants(name):
            continue
        why = IMPLS[name].unavailable(backend, policy)
        if why:
            records.append(skipped(scenario, f"{name}[{policy}]", backend, why))
        else:
            chosen.append((IMPLS[name], policy))
    return chosen


def run_padding(settings: Settings) -> list[Record]:
    """(c): padding ratio and throughput against the offline sorted run."""
    scenario = "padding"
    records: list[Record] = []
    items = make_items(settings.padding_items, seed=7)
    for backend in settings.backends:
        missing = backend_available(backend)
        if missing:
            records.append(skipped(scenario, "*", backend, missing))
            continue
        variants = _variants(settings, backend, scenario, records)
        backend_records: list[Record] = []
        for callers in settings.padding_callers:
            params = {"items": len(items), "callers": callers, "batch": BATCH}
            for run_index in range(settings.runs):
                for label, sort in (("offline-sorted", True), ("offline-fifo", False)):
                    throughput, padding = offline(items, sort=sort)
                    for metric, value, unit in (
                        ("throughput", throughput, "items/s"),
                        ("padding", padding, "x"),
                    ):
                        backend_records.append(
                            Record(
                                scenario,
                                label,
                                backend,
                                metric,
                                value,
                                unit,
                                dict(params),
                                run_index,
                            )
                        )
                for impl, policy in variants:
                    result, error = safe_run(backend, closed_loop, impl, policy, items, callers)
                    name = f"{impl.name}[{policy}]"
                    if error:
                        backend_records.append(
                            Record(
                                scenario,
                                name,
                                backend,
                                "throughput",
                                None,
                                "items/s",
                                dict(params),
                                run_index,
                                status="error",
                                note=error,
                            )
                        )
                        continue
                    for metric, unit in (("throughput", "items/s"), ("padding", "x")):
                        backend_records.append(
                            Record(
                                scenario,
                                name,
                                backend,
                                metric,
                                result[metric],
                                unit,
                                dict(params),
                                run_index,
                            )
                        )
        attach_ratios(backend_records, "offline-sorted")
        records.extend(backend_records)
    return records


def run_fairness(settings: Settings) -> list[Record]:
    """(d): p99 wait of long vs short items under sustained Poisson load."""
    scenario = "fairness"
    records: list[Record] = []
    items = make_items(max(settings.padding_items, 512), seed=11)
    # Each policy at 70 % of what it could sustain offline: FIFO of the offline FIFO
    # throughput, "length" of the offline sorted throughput (a load at which bucketing
    # matters, and at which FIFO would drown).
    rates = {
        "fifo": 0.7 * offline(items, sort=False)[0],
        "length": 0.7 * offline(items, sort=True)[0],
    }
    for backend in settings.backends:
        missing = backend_available(backend)
        if missing:
            records.append(skipped(scenario, "*", backend, missing))
            continue
        variants = _variants(settings, backend, scenario, records, FAIRNESS_VARIANTS)
        for run_index in range(settings.runs):
            for impl, policy in variants:
                name = f"{impl.name}[{policy}]"
                rate = rates[policy]
                params = {
                    "load": f"0.7 x offline {'sorted' if policy == 'length' else 'FIFO'}",
                    "rate": round(rate),
                    "batch": BATCH,
                }
                result, error = safe_run(
                    backend,
                    open_loop,
                    impl,
                    policy,
                    items,
                    rate,
                    settings.fairness_seconds,
                    run_index,
                )
                if error:
                    records.append(
                        Record(
                            scenario,
                            name,
                            backend,
                            "long_short",
                            None,
                            "x",
                            dict(params),
                            run_index,
                            status="error",
                            note=error,
                        )
                    )
                    continue
                note = f"{result['long_items']:.0f} long items"
                if result["unfinished"]:
                    note += f", {result['unfinished']:.0f} unfinished"
                for metric, unit in (("p99_short", "ms"), ("p99_long", "ms"), ("long_short", "x")):
                    records.append(
                        Record(
                            scenario,
                            name,
                            backend,
                            metric,
                            result[metric],
                            unit,
                            dict(params),
                            run_index,
                            note=note,
                        )
                    )
    return records
