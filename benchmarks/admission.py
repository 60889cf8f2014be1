"""
Deadline-aware admission under overload: goodput with ``admission="deadline"`` vs without.

A batch function that costs ``CALL + PER_ITEM * n`` seconds (a model call: fixed overhead
plus a little per row) serves ``max_batch_size=16`` rows a batch, so its capacity is
about ``16 / (CALL + 16 * PER_ITEM)`` items a second. Callers arrive at a steady
``OVERLOAD`` times that rate, each with a client deadline (``anyio.fail_after``) of
``DEADLINE`` seconds. Goodput is the results delivered within their deadline, per second
of offered load; also shown: refused at once (``DeadlineUnmeetableError``), timed out,
and the p99 latency of the served.

Both modes run in the same process, alternating, ``--repeats`` times; medians are shown.

Run: ``python -m benchmarks.admission [--backend asyncio|trio] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import anyio

import batchscope as bs

__all__ = ["measure"]

CALL = 0.020
PER_ITEM = 0.001
BATCH = 16
DEADLINE = 0.200
OVERLOAD = 3.0


async def _model(items: list[int]) -> list[int]:
    await anyio.sleep(CALL + PER_ITEM * len(items))
    return items


async def measure(admission: str, seconds: float) -> dict[str, float]:
    """One run: offer OVERLOAD x capacity for *seconds*; return goodput and outcomes."""
    capacity = BATCH / (CALL + BATCH * PER_ITEM)
    rate = OVERLOAD * capacity
    tick = 0.010
    per_tick = max(1, round(rate * tick))
    served: list[float] = []
    counts = {"refused": 0, "timed_out": 0, "offered": 0}

    async def caller(i: int) -> None:
        start = anyio.current_time()
        try:
            with anyio.fail_after(DEADLINE):
                await scope.submit(i)
        except bs.DeadlineUnmeetableError:
            counts["refused"] += 1
        except TimeoutError:
            counts["timed_out"] += 1
        else:
            served.append(anyio.current_time() - start)

    async with (
        bs.BatchScope(
            _model,
            max_batch_size=BATCH,
            max_wait=0.005,
            admission=admission,  # type: ignore[arg-type]
        ) as scope,
        anyio.create_task_group() as task_group,
    ):
        started = anyio.current_time()
        i = 0
        while anyio.current_time() - started < seconds:
            for _ in range(per_tick):
                task_group.start_soon(caller, i)
                i += 1
            await anyio.sleep(tick)
        counts["offered"] = i
        offered_for = anyio.current_time() - started
    within = sum(1 for latency in served if latency <= DEADLINE)
    served.sort()
    p99 = served[min(len(served) - 1, int(0.99 * len(served)))] if served else float("nan")
    return {
        "offered_per_s": counts["offered"] / offered_for,
        "capacity_per_s": capacity,
        "goodput_per_s": within / offered_for,
        "served": float(len(served)),
        "refused": float(counts["refused"]),
        "timed_out": float(counts["timed_out"]),
        "served_p99_ms": p99 * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"queue": [], "deadline": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(anyio.run(measure, mode, args.seconds, backend=args.backend))
    keys = list(runs["queue"][0])
    print(
        f"# admission under {OVERLOAD:g}x overload, {DEADLINE * 1000:.0f} ms client deadlines "
        f"({args.backend}, median of {args.repeats} runs of {args.seconds:g} s)\n"
    )
    print("| metric | admission='queue' | admission='deadline' |")
    print("|---|---|---|")
    medians: dict[str, dict[str, Any]] = {
        mode: {key: statistics.median(run[key] for run in found) for key in keys}
        for mode, found in runs.items()
    }
    for key in keys:
        print(f"| {key} | {medians['queue'][key]:.1f} | {medians['deadline'][key]:.1f} |")
    ratio = medians["deadline"]["goodput_per_s"] / max(medians["queue"]["goodput_per_s"], 1e-9)
    print(f"\ngoodput ratio deadline/queue: {ratio:.2f}")


if __name__ == "__main__":
    main()
