"""
The continuous-batching benchmark (``benchmarks/continuous.py``) runs at a tiny size.

On Trio's virtual clock the simulated device is exact, so beside the shape of the output
this checks the short-during-long outcome with its exact times: under static batching
the short request waits for the long one's batch, under continuous batching it joins at
the next step and finishes first.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("trio")
# The benchmarks live next to src/, not in the package: import them from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import continuous


def test_short_during_long_continuous_short_finishes_first() -> None:
    """Continuous: the short row joins 0.033 s in and ends after 5 outputs and END."""
    long_done, short_done = continuous.short_during_long("continuous", long=200, short=5)
    # Steps of 11 ms (one row) until the short one joins at the 4th step (t=0.033), then
    # 12 ms; its END comes with the 6th step it is in.
    assert short_done == pytest.approx(0.033 + 6 * 0.012)
    assert long_done == pytest.approx(0.033 + 6 * 0.012 + (201 - 3 - 6) * 0.011)
    assert short_done < long_done


def test_short_during_long_static_short_waits_for_the_long_batch() -> None:
    """Static: the short item waits for the long batch to end, then runs its own."""
    long_done, short_done = continuous.short_during_long("static", long=200, short=5)
    assert long_done == pytest.approx(0.005 + 200 * 0.011)  # max_wait, then 200 steps
    assert short_done == pytest.approx(long_done + 5 * 0.011)
    assert long_done < short_done


def test_measure_reads_the_scopes_statistics() -> None:
    """Each server's figures: throughput, p99 TTFT, between-output and wait percentiles."""
    load = continuous.workload(0, 12, 12.0)
    for name in continuous.SERVERS:
        served = continuous.serve(name, load, 4, "virtual")
        assert sorted(served.done) == list(range(len(load)))
        figures = continuous.measure(load, served)
        assert figures.throughput > 0 and figures.ttft_p99 > 0
        for percentiles in (figures.between_outputs, figures.wait):
            assert all(
                math.isfinite(p) for p in (percentiles.p50, percentiles.p90, percentiles.p99)
            )
        # A step over r <= 4 rows takes 10 + r ms: every gap between outputs is one step.
        assert 10.99 < figures.between_outputs.p50 <= figures.between_outputs.p99 < 14.01


def test_main_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    """The default output: the main table with the new columns and the short-during-long one."""
    assert continuous.main(["--runs", "1", "--requests", "12", "--max-active", "4"]) == 0
    out = capsys.readouterr().out
    assert "between outputs p50/p90/p99" in out and "wait p50/p99" in out
    assert "throughput: continuous / static" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[-2:]}
    assert rows["static"][-1] == "no"
    assert rows["continuous"][-1] == "yes"
