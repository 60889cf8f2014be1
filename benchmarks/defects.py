"""
Issue 13's nine defects, reproduced and measured on whichever batchscope is imported.

    python -m benchmarks.defects [asyncio|uvloop|trio]

Prints one line per measurement (who was served, what fn saw, what the statistics said).
To compare two trees, run it with ``PYTHONPATH`` pointing at each one's ``src`` (for the
tree before issue 13: ``git archive 4b576fa src | tar -x -C /tmp/old``). The figures
of 2026-12-03 are in the issue's resolution note.
"""

from __future__ import annotations

import math
import random
import sys
import time
from typing import Any

import anyio

import batchscope as bs

BACKEND = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
out: dict[str, Any] = {}


def identity(items: list[int]) -> list[int]:
    return items


async def served(scope: Any, patience: float, x: int = 7) -> bool:
    try:
        with anyio.fail_after(patience):
            return await scope.submit(x) == x
    except TimeoutError:
        return False


async def d1() -> None:
    timeouts = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    async with bs.BatchScope(identity, max_wait=10) as scope:
        got = [await served(scope, t) for t in timeouts]
    out["1 one-after-another served"] = f"{sum(got)}/6 {got}"
    async with bs.BatchScope(identity, max_wait=10) as scope:
        out["1 lone fail_after(0.5) served"] = await served(scope, 0.5)


async def d2() -> None:
    calls: list[list[int]] = []

    def cold(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            time.sleep(0.6)
        return items

    async with bs.BatchScope(cold, max_wait=0.005) as scope:
        await scope.submit(0)
        got = [await served(scope, 0.3) for _ in range(3)]
    out["2 after 0.6s batch, 0.3s callers served"] = f"{sum(got)}/3, fn calls {len(calls)}"


TICK = 0.004


async def d3() -> None:
    """Callers cancelled exactly as their batch ends; ledger vs statistics."""
    seen = {"completed": 0, "failed": 0, "cancelled": 0}
    rng = random.Random(1)

    async def fn(items: list[int]) -> list[Any]:
        await anyio.sleep_until((math.floor(anyio.current_time() / TICK) + 1) * TICK)
        if rng.random() < 0.3:
            raise ValueError("batch failed")
        return items

    async def caller(i: int) -> None:
        await anyio.sleep(rng.uniform(0, 20 * TICK))
        deadline = (math.floor(anyio.current_time() / TICK) + rng.randint(1, 4)) * TICK
        with anyio.CancelScope(deadline=deadline):
            try:
                await scope.submit(i)
            except ValueError:
                seen["failed"] += 1
            else:
                seen["completed"] += 1
            return
        seen["cancelled"] += 1

    async with (
        bs.BatchScope(fn, max_batch_size=8, max_wait=TICK / 2) as scope,
        anyio.create_task_group() as tg,
    ):
        for i in range(400):
            tg.start_soon(caller, i)
    s = scope.statistics()
    stats = {"completed": s.completed, "failed": s.failed, "cancelled": s.cancelled}
    out["3 callers saw (c/f/x)"] = "/".join(str(seen[k]) for k in seen)
    out["3 statistics (c/f/x)"] = "/".join(str(stats[k]) for k in stats)
    out["3 items miscounted"] = sum(abs(seen[k] - stats[k]) for k in seen) // 2


async def d4() -> None:
    """on_full='wait': samples in which the invariant fails."""
    broken = samples = 0
    maxgap = 0

    async def fn(items: list[int]) -> list[int]:
        await anyio.sleep(0.005)
        return items

    async with bs.BatchScope(fn, max_batch_size=4, max_wait=0.001, max_queue_size=4) as scope:

        async def sampler() -> None:
            nonlocal broken, samples, maxgap
            while True:
                s = scope.statistics()
                ended = s.completed + s.failed + s.cancelled + s.rejected
                rest = getattr(s, "admitting", 0) + s.pending + s.running
                gap = s.submitted - ended - rest
                samples += 1
                if gap:
                    broken += 1
                    maxgap = max(maxgap, gap)
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            async with anyio.create_task_group() as callers:
                for i in range(100):
                    callers.start_soon(scope.submit, i)
            tg.cancel_scope.cancel()
    out["4 samples not adding up"] = f"{broken}/{samples} (largest gap {maxgap})"


async def d5() -> None:
    def as_dict(items: list[int]) -> Any:
        return {x: x * 10 for x in items}

    def as_set(items: list[int]) -> Any:
        return {x * 10 for x in items}

    for name, fn in (("dict", as_dict), ("set", as_set)):
        async with bs.BatchScope(fn, max_wait=0.01) as scope:
            got = await scope.submit_many([3, 1, 2], return_exceptions=True)
        out[f"5 fn returns {name}, submit_many([3,1,2]) ->"] = [
            type(g).__name__ if isinstance(g, BaseException) else g for g in got
        ]


async def d6() -> None:
    items: list[Any] = []

    def fn(batch: list[Any]) -> list[Any]:
        items.extend(batch)
        return batch

    async with bs.BatchScope(fn, key=lambda x: x, max_wait=0.01) as scope:
        await scope.submit_many([1, 1, 1, 2, 2])
    out["6 submit_many([1,1,1,2,2]) fn saw"] = sorted(items)

    items.clear()
    async with bs.BatchScope(fn, key=lambda x: x, max_wait=0.01) as scope:
        await scope.submit_many([None, None, 1])
    out["6 submit_many([None,None,1]) fn saw"] = items[:]

    items.clear()
    calls: list[list[int]] = []

    async def slow(batch: list[int]) -> list[int]:
        calls.append(list(batch))
        await anyio.sleep(0.3)
        return batch

    async with (
        bs.BatchScope(slow, key=lambda x: x, max_wait=0.01) as scope,
        anyio.create_task_group() as tg,
    ):

        async def other() -> None:
            await scope.submit(6)

        async def leaving() -> None:
            with anyio.move_on_after(0.1):
                await scope.submit(5)

        tg.start_soon(other)
        tg.start_soon(leaving)
        await anyio.sleep(0.2)
        await scope.submit(5)
    out["6 rejoin abandoned running key: fn calls"] = calls


async def d7() -> None:
    async with bs.BatchScope(lambda b: b, key=lambda d: d["k"], max_wait=0.01) as scope:
        try:
            got = await scope.submit_many([{"k": 1}, {}, {"k": 2}], return_exceptions=True)
            out["7 submit_many with failing key"] = [
                type(g).__name__ if isinstance(g, BaseException) else g for g in got
            ]
        except BaseException as exc:
            out["7 submit_many with failing key"] = f"call raised {type(exc).__name__}"
        try:
            got = [g async for g in scope.map([{"k": 1}, {}, {"k": 2}], return_exceptions=True)]
            out["7 map with failing key"] = [
                type(g).__name__ if isinstance(g, BaseException) else g for g in got
            ]
        except BaseException as exc:
            out["7 map with failing key"] = f"call raised {type(exc).__name__}"


async def d8() -> None:
    async with bs.BatchScope(identity, policy="priority", max_wait=0.01) as scope:
        try:
            with anyio.fail_after(1):
                await scope.submit(1, priority=float("nan"))
            out["8 priority=nan"] = "accepted"
        except ValueError as exc:
            out["8 priority=nan"] = f"ValueError: {exc}"
        except TimeoutError:
            out["8 priority=nan"] = "accepted, not served in 1 s"


def d9() -> None:
    sys.modules["array_api_compat"] = None  # type: ignore[assignment]
    for name in list(sys.modules):
        if name.startswith("batchscope.arrays"):
            del sys.modules[name]
    try:
        import batchscope.arrays  # noqa: F401

        out["9 import batchscope.arrays w/o array-api-compat"] = "imported"
    except ImportError as exc:
        out["9 import batchscope.arrays w/o array-api-compat"] = f"{type(exc).__name__}: {exc}"


async def main() -> None:
    for d in (d1, d2, d3, d4, d5, d6, d7, d8):
        try:
            await d()
        except BaseException as exc:  # noqa: PERF203 - one measurement at a time
            out[d.__name__] = f"crashed: {type(exc).__name__}: {exc}"


anyio.run(main, backend=BACKEND)
d9()
for k, v in out.items():
    print(f"{k}: {v}")
