"""
Scenario (e): idle cost — how often an open, idle batcher wakes the event loop.

Each implementation is opened, given one item (so that lazy workers, like ``batched``'s,
have started), left alone for a moment, and then watched for a window of idleness. Two
counts:

* ``loop_wakeups_per_s`` — from outside: event-loop iterations during the window. Under
  asyncio, calls of the loop's selector ``select()``; under Trio, an instrument's
  ``before_io_wait``. The harness's own ``sleep`` costs one or two; ``baseline`` (no
  batcher open) measures exactly that in the same run, and ``net_wakeups_per_s`` is the
  difference. uvloop's loop cannot be hooked from Python: only the library's own count.
* ``scheduler_wakeups_per_s`` — batchscope only: its scheduler's own counter
  (``statistics().scheduler_wakeups``).

The target is 0 for batchscope (``batched`` polls ≈ 200 times a second).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio

from ._core import Record, Settings, backend_available, safe_run, skipped
from .implementations import Impl, measurable
from .overhead import identity

__all__ = ["measure", "run"]

SCENARIO = "idle"
IMPLEMENTATIONS = ("floor", "anyio-event", "batchscope", "batched", "aiodataloader")


class _Counter:
    """Counts event-loop iterations of the running loop (asyncio or Trio)."""

    def __init__(self) -> None:
        self.count = 0
        self._undo: Callable[[], None] | None = None

    def before_io_wait(self, timeout: float) -> None:
        """Trio instrument hook: one loop iteration."""
        self.count += 1

    def install(self, backend: str) -> bool:
        """Start counting; False when the loop cannot be observed (uvloop)."""
        if backend == "trio":
            import trio

            trio.lowlevel.add_instrument(self)  # type: ignore[arg-type]
            self._undo = lambda: trio.lowlevel.remove_instrument(self)  # type: ignore[arg-type]
            return True
        loop: Any = asyncio.get_running_loop()
        selector = getattr(loop, "_selector", None)
        if selector is None:
            return False
        original = selector.select

        def select(timeout: float | None = None) -> Any:
            self.count += 1
            return original(timeout)

        selector.select = select
        self._undo = lambda: delattr(selector, "select")
        return True

    def remove(self) -> None:
        """Stop counting."""
        if self._undo is not None:
            self._undo()
            self._undo = None


async def measure(impl: Impl | None, backend: str, seconds: float) -> dict[str, float | None]:
    """Wake-ups per second while *impl* (None: nothing) sits open and idle."""
    counter = _Counter()
    if impl is None:
        await anyio.sleep(0.05)
        return await _watch(counter, backend, seconds, None)
    async with impl.open(identity, max_batch_size=32, max_wait=0.005) as submit:
        await submit(0)
        await anyio.sleep(0.05)
        scope = getattr(submit, "__self__", None)
        statistics = getattr(scope, "statistics", None)  # batchscope's, public
        return await _watch(counter, backend, seconds, statistics)


async def _watch(
    counter: _Counter, backend: str, seconds: float, statistics: Any
) -> dict[str, float | None]:
    def wakeups() -> int:
        return int(statistics().scheduler_wakeups)

    before = wakeups() if statistics is not None else 0
    observed = counter.install(backend)
    try:
        await anyio.sleep(seconds)
    finally:
        counter.remove()
    own = (wakeups() - before) / seconds if statistics is not None else None
    return {
        "loop_wakeups_per_s": counter.count / seconds if observed else None,
        "scheduler_wakeups_per_s": own,
    }


def run(settings: Settings) -> list[Record]:
    """Every implementation on every backend, against a baseline with nothing open."""
    records: list[Record] = []
    params = {"seconds": settings.idle_seconds}
    for backend in settings.backends:
        missing = backend_available(backend)
        if missing:
            records.append(skipped(SCENARIO, "*", backend, missing))
            continue
        impls = measurable(settings, SCENARIO, backend, IMPLEMENTATIONS, records)
        for run_index in range(settings.runs):
            baseline, error = safe_run(backend, measure, None, backend, settings.idle_seconds)
            base = baseline["loop_wakeups_per_s"] if baseline else None
            for impl in [None, *impls]:
                name = "baseline" if impl is None else impl.name
                result = baseline
                if impl is not None:
                    result, error = safe_run(backend, measure, impl, backend, settings.idle_seconds)
                if error or result is None:
                    records.append(
                        Record(
                            SCENARIO,
                            name,
                            backend,
                            "net_wakeups_per_s",
                            None,
                            "1/s",
                            dict(params),
                            run_index,
                            status="error",
                            note=error or "",
                        )
                    )
                    continue
                loop = result["loop_wakeups_per_s"]
                note = "" if loop is not None else "uvloop cannot be observed from Python"
                net = None if loop is None or base is None else max(0.0, loop - base)
                for metric, value in (
                    ("loop_wakeups_per_s", loop),
                    ("net_wakeups_per_s", net),
                    ("scheduler_wakeups_per_s", result["scheduler_wakeups_per_s"]),
                ):
                    if value is None and metric == "scheduler_wakeups_per_s":
                        continue
                    records.append(
                        Record(
                            SCENARIO,
                            name,
                            backend,
                            metric,
                            value,
                            "1/s",
                            dict(params),
                            run_index,
                            reference="baseline",
                            note=note,
                        )
                    )
    return records
