"""
Scenario (f): peak RSS growth while pushing many items through a batcher.

Each measurement runs in a fresh interpreter (``python -m benchmarks.memory ...``) so that
earlier scenarios' heaps do not blur it. The child imports everything, warms the batcher
up with a few thousand items, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``),
then pushes ``N`` items (identity fn, batch 32, ``max_queue_size=10_000`` where the
implementation has one) and reports ``VmHWM - VmRSS before`` in MB. Two ways in:

* ``callers`` — 1,000 concurrent callers, each submitting its share in turn;
* ``map`` — batchscope's streaming ``scope.map()`` over a generator (bounded window).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

from ._core import BACKENDS, Record, Settings, attach_ratios, backend_available, run_on, skipped
from .implementations import IMPLS
from .overhead import identity, reference

__all__ = ["measure_in_child", "run"]

SCENARIO = "memory"
CALLERS = 1_000
QUEUE = 10_000
VARIANTS = (
    ("floor", "callers"),
    ("anyio-event", "callers"),
    ("batchscope", "callers"),
    ("batchscope", "map"),
    ("batched", "callers"),
)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def _push(name: str, mode: str, items: int) -> float:
    if name == "batchscope":
        from batchscope import BatchScope

        async with BatchScope(identity, max_batch_size=32, max_queue_size=QUEUE) as scope:
            await _drive(scope.submit, scope, mode, 5_000)
            gc_and_reset()
            before = _status_kb("VmRSS")
            await _drive(scope.submit, scope, mode, items)
    else:
        async with IMPLS[name].open(identity, max_batch_size=32, max_wait=0.005) as submit:
            await _drive(submit, None, mode, 5_000)
            gc_and_reset()
            before = _status_kb("VmRSS")
            await _drive(submit, None, mode, items)
    return (_status_kb("VmHWM") - before) / 1024


def gc_and_reset() -> None:
    """Collect garbage, then reset the peak-RSS mark to the current RSS."""
    import gc

    gc.collect()
    _reset_peak()


async def _drive(submit: Any, scope: Any, mode: str, items: int) -> None:
    if mode == "map":
        count = 0
        async for _ in scope.map(iter(range(items))):
            count += 1
        return
    share = max(1, items // CALLERS)

    async def caller() -> None:
        for value in range(share):
            await submit(value)

    async with anyio.create_task_group() as tg:
        for _ in range(CALLERS):
            tg.start_soon(caller)


def measure_in_child(name: str, mode: str, backend: str, items: int) -> tuple[float | None, str]:
    """Run one measurement in a fresh interpreter; ``(MB, "")`` or ``(None, why)``."""
    command = [sys.executable, "-m", "benchmarks.memory", name, mode, backend, str(items)]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=root, check=False, timeout=600
    )
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["failed"])[-1][:300]
    return float(json.loads(done.stdout.strip().splitlines()[-1])["mb"]), ""


def run(settings: Settings) -> list[Record]:
    """Peak RSS growth of every variant, ratios against the backend's reference."""
    records: list[Record] = []
    params = {"items": settings.memory_items, "max_queue_size": QUEUE, "callers": CALLERS}
    for backend in settings.backends:
        missing = backend_available(backend)
        if missing:
            records.append(skipped(SCENARIO, "*", backend, missing))
            continue
        backend_records: list[Record] = []
        variants = []
        for name, mode in VARIANTS:
            if not settings.wants(name):
                continue
            why = IMPLS[name].unavailable(backend)
            if why:
                records.append(skipped(SCENARIO, f"{name}[{mode}]", backend, why))
            else:
                variants.append((name, mode))
        for run_index in range(settings.runs):
            for name, mode in variants:
                label = name if mode == "callers" else f"{name}[{mode}]"
                value, error = measure_in_child(name, mode, backend, settings.memory_items)
                backend_records.append(
                    Record(
                        SCENARIO,
                        label,
                        backend,
                        "peak_rss_growth",
                        value,
                        "MB",
                        dict(params),
                        run_index,
                        status="error" if error else "ok",
                        note=error,
                    )
                )
        attach_ratios(backend_records, reference(backend))
        records.extend(backend_records)
    return records


def main(argv: list[str] | None = None) -> None:
    """Child entry point: ``python -m benchmarks.memory NAME MODE BACKEND ITEMS``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("mode", choices=["callers", "map"])
    parser.add_argument("backend", choices=BACKENDS)
    parser.add_argument("items", type=int)
    args = parser.parse_args(argv)
    mb = run_on(args.backend, _push, args.name, args.mode, args.items)
    print(json.dumps({"mb": mb}))


if __name__ == "__main__":
    main()
