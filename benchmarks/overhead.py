"""
Scenario (a): per-item overhead.

An identity batch function, ``N`` items pushed by ``C`` concurrent callers (each submits
its share one after the other), ``max_wait`` 5 ms. The value is wall-clock microseconds
per item, everything included (submit, queueing, the timer, batch dispatch, waking the
caller). References: the floor under asyncio and uvloop, the anyio.Event batcher under
Trio (the floor cannot run there); the lean floor (no coroutine per item) is measured
beside the floor, and the targets read batchscope against it too.
"""

from __future__ import annotations

from typing import Any

import anyio

from ._core import Record, Settings, attach_ratios, backend_available, now, safe_run, skipped
from .implementations import Impl, measurable

__all__ = ["measure", "reference", "run"]

SCENARIO = "overhead"
IMPLEMENTATIONS = (
    "floor",
    "lean-floor",
    "anyio-event",
    "unbatched",
    "batchscope",
    "batched",
    "aiodataloader",
    "ray",
)
MAX_WAIT = 0.005


def reference(backend: str) -> str:
    """The reference of a backend: the floor where it runs, else the anyio.Event batcher."""
    return "anyio-event" if backend == "trio" else "floor"


async def identity(items: list[Any]) -> list[Any]:
    """The batch function: returns its input."""
    return items


async def measure(impl: Impl, items: int, callers: int, batch: int) -> float:
    """Microseconds per item for *items* pushed by *callers* concurrent callers."""
    share = max(1, items // callers)
    async with impl.open(identity, max_batch_size=batch, max_wait=MAX_WAIT) as submit:

        async def caller() -> None:
            for value in range(share):
                await submit(value)

        started = now()
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)
        elapsed = now() - started
    return elapsed / (share * callers) * 1e6


def run(settings: Settings) -> list[Record]:
    """Measure every implementation on every backend; ratios against the reference."""
    records: list[Record] = []
    for backend in settings.backends:
        missing = backend_available(backend)
        if missing:
            records.append(skipped(SCENARIO, "*", backend, missing))
            continue
        impls = measurable(settings, SCENARIO, backend, IMPLEMENTATIONS, records)
        backend_records: list[Record] = []
        for callers in settings.overhead_callers:
            for batch in settings.overhead_batches:
                params = {"items": settings.overhead_items, "callers": callers, "batch": batch}
                for run_index in range(settings.runs):
                    for impl in impls:
                        value, error = safe_run(
                            backend, measure, impl, settings.overhead_items, callers, batch
                        )
                        backend_records.append(
                            Record(
                                SCENARIO,
                                impl.name,
                                backend,
                                "per_item",
                                value,
                                "us/item",
                                dict(params),
                                run_index,
                                status="error" if error else "ok",
                                note=error or "",
                            )
                        )
        attach_ratios(backend_records, reference(backend))
        records.extend(backend_records)
    return records
