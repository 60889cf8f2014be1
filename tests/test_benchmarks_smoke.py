"""
The benchmark suite runs end to end at a tiny size, so that it cannot rot.

Nothing here asserts on timings (a loaded machine must not fail it): only that every
scenario produces records of the right shape, that references and ratios are wired up,
and that the report, the targets and the plots are written.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")
# The suite lives next to src/, not in the package: import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchmarks.run as benchmarks_run
from benchmarks._core import Record, Settings
from benchmarks.implementations import IMPLS


def _tiny(backends: tuple[str, ...] = ("asyncio",)) -> Settings:
    settings = Settings.tiny()
    settings.backends = backends
    return settings


def _ok(records: list[Record], scenario: str) -> list[Record]:
    return [r for r in records if r.scenario == scenario and r.status == "ok"]


def test_every_scenario_runs_and_writes_results(tmp_path: Path) -> None:
    """Every scenario yields records; JSON lines, latest.md and plots are written."""
    records = benchmarks_run.run_suite(_tiny(), "abcdefgh", out=tmp_path, log=lambda _: None)
    for scenario in ("overhead", "latency", "padding", "fairness", "idle", "memory"):
        assert _ok(records, scenario), scenario
    assert {r.scenario for r in records} >= {"realmodel", "gpu"}  # skipped here, but reported
    lines = (tmp_path / "latest.jsonl").read_text().splitlines()
    assert len(lines) == len(records)
    first = json.loads(lines[0])
    assert {
        "scenario",
        "implementation",
        "backend",
        "params",
        "value",
        "unit",
        "ratio",
        "run",
    } <= set(first)
    report = (tmp_path / "latest.md").read_text()
    assert "## Targets" in report and "overhead" in report
    assert (tmp_path / "overhead.png").exists()


def test_references_and_ratios_are_wired() -> None:
    """The floor is its own reference (ratio 1) and batchscope gets a ratio against it."""
    records = benchmarks_run.run_suite(_tiny(), "a", out=None, log=lambda _: None)
    floor = [r for r in _ok(records, "overhead") if r.implementation == "floor"]
    mine = [r for r in _ok(records, "overhead") if r.implementation == "batchscope"]
    assert floor and all(r.ratio == 1.0 for r in floor)
    assert mine and all(r.reference == "floor" and r.ratio is not None for r in mine)
    assert all(r.value is not None and math.isfinite(r.value) and r.value > 0 for r in mine)


def test_trio_uses_the_anyio_event_reference() -> None:
    """Under Trio the floor is skipped and ratios are against the anyio.Event batcher."""
    pytest.importorskip("trio")
    records = benchmarks_run.run_suite(_tiny(("trio",)), "ae", out=None, log=lambda _: None)
    assert any(r.implementation == "floor" and r.status == "skipped" for r in records)
    mine = [r for r in _ok(records, "overhead") if r.implementation == "batchscope"]
    assert mine and all(r.reference == "anyio-event" for r in mine)
    assert any(r.metric == "scheduler_wakeups_per_s" for r in _ok(records, "idle"))


def test_unavailable_peers_are_reported_not_hidden() -> None:
    """A peer that cannot run on a backend says why instead of vanishing."""
    assert IMPLS["batched"].unavailable("trio")
    assert IMPLS["floor"].unavailable("trio")
    assert IMPLS["anyio-event"].unavailable("trio") is None


def test_command_line_exits_zero(tmp_path: Path) -> None:
    """The CLI parses its options and exits 0 (a measurement, not a test)."""
    code = benchmarks_run.main(
        ["--tiny", "--backend", "asyncio", "--scenario", "e", "--out", str(tmp_path)]
    )
    assert code == 0
    assert (tmp_path / "latest.md").exists()
