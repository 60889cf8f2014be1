"""
Every optional part of batchscope, imported or used without its package, raises an
ImportError that names the extra to install (a missing package is simulated by
``sys.modules[name] = None``, which makes its import fail as if it were not installed).
"""

from __future__ import annotations

import importlib
import sys

import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio


def _block(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Make *packages* fail to import, as if they were not installed."""
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


def _forget(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """Drop *prefix* and its submodules from sys.modules (restored afterwards), to reimport."""
    for name in list(sys.modules):
        if name == prefix or name.startswith(f"{prefix}."):
            monkeypatch.delitem(sys.modules, name)
    parent, _, child = prefix.rpartition(".")
    if parent and hasattr(sys.modules[parent], child):
        monkeypatch.delattr(sys.modules[parent], child)


def test_arrays_without_array_api_compat_names_the_numpy_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """import batchscope.arrays without array-api-compat says: pip install 'batchscope[numpy]'."""
    _forget(monkeypatch, "batchscope.arrays")
    _block(monkeypatch, "array_api_compat")
    with pytest.raises(ImportError, match=r"array-api-compat.*pip install 'batchscope\[numpy\]'"):
        importlib.import_module("batchscope.arrays")


def test_ray_without_ray_names_the_ray_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """import batchscope.ray without Ray says: pip install 'batchscope[ray]'."""
    _forget(monkeypatch, "batchscope.ray")
    _block(monkeypatch, "ray")
    with pytest.raises(ImportError, match=r"pip install 'batchscope\[ray\]'"):
        importlib.import_module("batchscope.ray")


def test_prometheus_hooks_without_prometheus_client_name_the_metrics_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PrometheusHooks without prometheus-client says: pip install 'batchscope[metrics]'."""
    from batchscope.metrics import PrometheusHooks

    _block(monkeypatch, "prometheus_client")
    with pytest.raises(ImportError, match=r"pip install 'batchscope\[metrics\]'"):
        PrometheusHooks(name="embed")


def test_opentelemetry_hooks_without_opentelemetry_name_the_metrics_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenTelemetryHooks without opentelemetry-api says: pip install 'batchscope[metrics]'."""
    from batchscope.metrics import OpenTelemetryHooks

    _block(monkeypatch, "opentelemetry", "opentelemetry.metrics")
    with pytest.raises(ImportError, match=r"pip install 'batchscope\[metrics\]'"):
        OpenTelemetryHooks(name="embed")


async def test_progress_bar_without_rich_names_the_progress_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """map(progress=True) without rich says: pip install 'batchscope[progress]'."""
    _block(monkeypatch, "rich", "rich.console", "rich.progress")
    async with bs.BatchScope(FakeBatchFunction[int, int]()) as scope:
        with pytest.raises(ImportError, match=r"pip install 'batchscope\[progress\]'"):
            scope.map(range(3), progress=True)
        assert await scope.submit(1) == 1  # the scope is unharmed


def test_cupy_pipeline_without_cupy_names_the_cupy_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """PadCollator(xp='cupy') without CuPy says to install 'batchscope[cupy]' and a CuPy build."""
    pytest.importorskip("array_api_compat")
    from batchscope.arrays._cupy import import_cupy

    _block(monkeypatch, "cupy")
    # A RuntimeError, as docs/arrays.md says: each batch fails with it.
    with pytest.raises(RuntimeError, match=r"install 'batchscope\[cupy\]'.*cupy-cuda12x"):
        import_cupy()
