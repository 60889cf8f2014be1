"""
The GPU scenario (h) of the benchmark suite, run end to end on a fake ``cupy``.

The fake (``tests/fake_cupy.py``) computes with NumPy on the CPU, so nothing here asserts
on timings: only that every way is measured, batchscope on asyncio and Trio with one and
two batches in flight through ``PadCollator(xp="cupy")``, that the ratios against the
offline sorted run are wired, and that the report's GPU targets read them. Without CuPy
or a CUDA device the scenario is one skipped record, as on this machine.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("numpy")
pytest.importorskip("array_api_compat")
# The suite lives next to src/, not in the package: import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import gpu
from benchmarks._core import Record, Settings
from benchmarks.report import check_targets, medians

from fake_cupy import Device, FakeArray, fake_cupy

BACKENDS = ("asyncio", "trio") if importlib.util.find_spec("trio") else ("asyncio",)


def _tiny() -> Settings:
    settings = Settings.tiny()
    settings.backends = BACKENDS
    return settings


class Run:
    """Scenario (h)'s records on the fake, and what the model saw."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        #: (type of the model's input, its rows) for every call of the model.
        self.calls: list[tuple[type, int]] = []
        self.synchronized = 0


@pytest.fixture(scope="module")
def fake_run() -> Run:
    """Scenario (h) once at smoke size, with the fake installed and the model spied on."""
    result = Run()
    forward = gpu.Model.__call__

    def spy(model: Any, data: Any) -> Any:
        result.calls.append((type(data), int(data.shape[0])))
        return forward(model, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "cupy", fake_cupy())
        patch.setattr(gpu.Model, "__call__", spy)
        before = Device.synchronized
        result.records = gpu.run(_tiny())
        result.synchronized = Device.synchronized - before
    return result


def _throughput(records: list[Record]) -> dict[tuple[str, str, Any], Record]:
    return {
        (r.implementation, r.backend, r.params.get("in_flight")): r
        for r in records
        if r.metric == "throughput"
    }


def test_every_way_is_measured(fake_run: Run) -> None:
    """One at a time, offline sorted and batchscope (1 and 2 in flight, each backend)."""
    errors = [r.note for r in fake_run.records if r.status != "ok"]
    assert not errors
    online = {("batchscope", backend, n) for backend in BACKENDS for n in (1, 2)}
    expected = {("offline-sorted", "-", None), ("one-at-a-time", "-", None), *online}
    throughput = _throughput(fake_run.records)
    assert set(throughput) == expected
    for record in throughput.values():
        assert record.value is not None and math.isfinite(record.value) and record.value > 0
        assert record.unit == "items/s" and record.params["items"] == Settings.tiny().gpu_items


def test_ratios_are_against_offline_sorted(fake_run: Run) -> None:
    """Every throughput has its ratio to the offline sorted run of the same run index."""
    throughput = _throughput(fake_run.records)
    offline = throughput["offline-sorted", "-", None]
    assert offline.ratio == 1.0
    for record in throughput.values():
        assert record.reference == "offline-sorted"
        assert record.value is not None and offline.value is not None
        assert record.ratio == pytest.approx(record.value / offline.value)


def test_event_loop_blocking_is_recorded(fake_run: Run) -> None:
    """Each online run records the 1 ms ticker's total and worst lateness in ms."""
    loop = [r for r in fake_run.records if r.metric in ("loop_blocked", "loop_worst")]
    assert len(loop) == 2 * 2 * len(BACKENDS)
    assert all(r.unit == "ms" and r.value is not None and r.value >= 0 for r in loop)
    assert all(r.implementation == "batchscope" and r.ratio is None for r in loop)


def test_batches_reach_the_model_on_the_device(fake_run: Run) -> None:
    """The model gets device arrays, in batches of up to 32; offline synchronizes."""
    assert fake_run.calls and all(kind is FakeArray for kind, _ in fake_run.calls)
    assert max(rows for _, rows in fake_run.calls) == gpu.BATCH
    assert fake_run.synchronized >= 2  # warm-up and one offline pass


def test_targets_read_the_gpu_results(fake_run: Run) -> None:
    """The report has both GPU targets per backend, with a figure (not n/a)."""
    targets = check_targets(medians(fake_run.records), fake_run.records)
    mine = [t for t in targets if t.name.startswith("GPU online")]
    assert len(mine) == 2 * len(BACKENDS)
    assert all(t.measured is not None and t.passed is not None for t in mine)
    assert all("in flight" in t.note for t in mine)


def test_without_cupy_it_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CuPy: one skipped record, and the GPU targets are n/a with the reason."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    records = gpu.run(_tiny())
    assert [(r.scenario, r.implementation, r.status) for r in records] == [("gpu", "*", "skipped")]
    assert "CuPy not installed" in records[0].note
    targets = [t for t in check_targets([], records) if t.name.startswith("GPU")]
    assert len(targets) == 2
    assert all(t.passed is None and "CuPy not installed" in t.note for t in targets)


def test_without_a_device_it_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """CuPy without a CUDA device: one skipped record saying so."""
    module = fake_cupy()
    monkeypatch.setattr(module, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "cupy", module)
    records = gpu.run(_tiny())
    assert [(r.scenario, r.status, r.note) for r in records] == [
        ("gpu", "skipped", "no GPU on this machine")
    ]
