"""The demo: it runs, on both backends, and batching wins on its workload."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from batchscope._demo import DemoConfig, format_table, run_demo


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_demo_batching_beats_unbatched_on_a_virtual_clock() -> None:
    """On a virtual clock the comparison is exact: batches fill, throughput multiplies."""
    config = DemoConfig(requests=400, clients=32)
    unbatched, batched = await run_demo(config)
    assert unbatched.throughput == pytest.approx(1 / 0.00205, rel=1e-6)
    assert batched.mean_batch_size > 20
    assert batched.throughput > 10 * unbatched.throughput
    assert batched.p99_ms < unbatched.p99_ms
    table = format_table(config, "test", [unbatched, batched])
    assert "unbatched" in table and "batchscope" in table


INSTALLED = ["asyncio"] + (["trio"] if importlib.util.find_spec("trio") else [])


@pytest.mark.parametrize("backend", INSTALLED)
def test_demo_command_line_runs(backend: str) -> None:
    """`python -m batchscope demo` runs to completion and prints the comparison."""
    command = [sys.executable, "-m", "batchscope", "demo", "--backend", backend]
    done = subprocess.run(
        [*command, "--requests", "60", "--clients", "6"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "batchscope" in done.stdout and "requests/s" in done.stdout


def test_demo_command_line_rejects_bad_numbers() -> None:
    """Invalid arguments give a usage error, not a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "batchscope", "demo", "--requests", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "must be >= 1" in done.stderr
