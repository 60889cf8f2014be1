"""
Shared plumbing: records, settings, backends, statistics and ratios.

Every measurement becomes one :class:`Record` (one JSON line). A scenario measures each
implementation once per *run*, interleaving implementations inside a run so that slow
drift of a loaded machine hits them all alike, and every value is divided by the value
of the scenario's reference implementation measured in the same run (same backend, same
parameters, same run index).
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "BACKENDS",
    "Record",
    "Settings",
    "attach_ratios",
    "backend_available",
    "describe",
    "median",
    "now",
    "percentile",
    "run_on",
    "safe_run",
    "skipped",
]

#: Backends the suite knows, in report order.
BACKENDS = ("asyncio", "uvloop", "trio")


@dataclass
class Settings:
    """What to run and how big: ``quick`` and ``full`` presets, overridable in tests."""

    quick: bool = True
    backends: tuple[str, ...] = BACKENDS
    runs: int = 3
    #: (a) items per measurement, concurrent callers, batch sizes.
    overhead_items: int = 20_000
    overhead_callers: tuple[int, ...] = (1_000, 10_000)
    overhead_batches: tuple[int, ...] = (32, 256)
    #: (b) seconds of Poisson arrivals per point, and the loads (fractions of capacity).
    latency_seconds: float = 1.0
    latency_loads: tuple[float, ...] = (0.3, 0.7, 0.9)
    #: (b) at the knee (loads of 90 % and more, where the tail is noisy): at least this
    #: many repeats, each this many seconds long; the report gives their spread.
    latency_knee_runs: int = 5
    latency_knee_seconds: float = 3.0
    #: (c) items pushed through the NumPy model, and the numbers of concurrent callers.
    padding_items: int = 2_048
    padding_callers: tuple[int, ...] = (256, 512)
    #: (d) seconds of sustained load for fairness.
    fairness_seconds: float = 2.0
    #: (e) seconds of idleness observed.
    idle_seconds: float = 0.5
    #: (f) items pushed through a scope for peak RSS.
    memory_items: int = 100_000
    #: (g) sentences for the real model.
    model_sentences: int = 256
    #: (h) sequences pushed through the GPU model, and their feature width.
    gpu_items: int = 4_096
    gpu_features: int = 256
    #: Implementations to include (None: all available).
    only: tuple[str, ...] | None = None

    @classmethod
    def full(cls) -> Settings:
        """The full-size preset of the issue."""
        return cls(
            quick=False,
            runs=5,
            overhead_items=100_000,
            latency_seconds=6.0,
            latency_knee_runs=7,
            latency_knee_seconds=12.0,
            padding_items=8_192,
            padding_callers=(256, 512),
            fairness_seconds=10.0,
            idle_seconds=3.0,
            memory_items=1_000_000,
            model_sentences=512,
            gpu_items=16_384,
        )

    @classmethod
    def tiny(cls) -> Settings:
        """A smoke-test preset: every code path, no meaningful numbers."""
        return cls(
            runs=1,
            overhead_items=400,
            overhead_callers=(20,),
            overhead_batches=(8,),
            latency_seconds=0.15,
            latency_loads=(0.3,),
            latency_knee_runs=1,
            latency_knee_seconds=0.15,
            padding_items=96,
            padding_callers=(48,),
            fairness_seconds=0.3,
            idle_seconds=0.1,
            memory_items=2_000,
            model_sentences=8,
            gpu_items=48,
            gpu_features=32,
            only=("floor", "anyio-event", "unbatched", "batchscope", "batched"),
        )

    def wants(self, name: str) -> bool:
        """Whether implementation *name* is selected."""
        return self.only is None or name in self.only


@dataclass
class Record:
    """One measurement: one JSON line of ``benchmarks/results/*.jsonl``."""

    scenario: str
    implementation: str
    backend: str
    metric: str
    value: float | None
    unit: str
    params: dict[str, Any] = field(default_factory=dict)
    run: int = 0
    #: The implementation this record's ratio is taken against (same run).
    reference: str | None = None
    ratio: float | None = None
    #: ``ok``, ``skipped`` or ``error``; ``note`` says why.
    status: str = "ok"
    note: str = ""

    def key(self) -> tuple[str, str, str, str]:
        """Scenario, backend, metric and parameters: what must match for a ratio."""
        return (self.scenario, self.backend, self.metric, repr(sorted(self.params.items())))

    def as_json(self) -> dict[str, Any]:
        """A plain dict for ``json.dumps``; NaN and infinity become None/strings."""
        data = asdict(self)
        for name in ("value", "ratio"):
            number = data[name]
            if isinstance(number, float) and not math.isfinite(number):
                data[name] = str(number)
        return data


def skipped(
    scenario: str, implementation: str, backend: str, note: str, *, status: str = "skipped"
) -> Record:
    """A record saying that a measurement was not taken, and why."""
    return Record(scenario, implementation, backend, "-", None, "-", status=status, note=note)


def attach_ratios(records: Iterable[Record], reference: str) -> None:
    """Set ``ratio = value / value of *reference*`` for records of the same run and key."""
    records = list(records)
    refs = {
        (*r.key(), r.run): r.value
        for r in records
        if r.implementation == reference and r.value is not None
    }
    for record in records:
        ref = refs.get((*record.key(), record.run))
        if record.value is None or ref is None:
            continue
        record.reference = reference
        if ref == 0:
            record.ratio = 1.0 if record.value == 0 else math.inf
        else:
            record.ratio = record.value / ref


def median(values: Iterable[float]) -> float:
    """The median, or NaN when there is nothing."""
    data = list(values)
    return statistics.median(data) if data else math.nan


def percentile(values: list[float], q: float) -> float:
    """The *q*-th percentile (0-100, nearest rank) of *values*; NaN when empty."""
    if not values:
        return math.nan
    data = sorted(values)
    rank = max(0, min(len(data) - 1, math.ceil(q / 100 * len(data)) - 1))
    return data[rank]


def backend_available(backend: str) -> str | None:
    """None if *backend* can run here, else why not."""
    try:
        if backend == "uvloop":
            import uvloop  # noqa: F401
        elif backend == "trio":
            import trio  # noqa: F401
    except ImportError:
        return f"{backend} is not installed"
    return None


def run_on(backend: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh event loop of *backend*, after a full collection."""
    gc.collect()
    if backend == "uvloop":
        import uvloop

        return anyio.run(
            fn, *args, backend="asyncio", backend_options={"loop_factory": uvloop.new_event_loop}
        )
    if backend == "asyncio":
        return anyio.run(fn, *args, backend="asyncio")
    return anyio.run(fn, *args, backend="trio")


def describe(exc: BaseException) -> str:
    """One line for an exception; the first leaf of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]


def safe_run(backend: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> tuple[Any, str | None]:
    """:func:`run_on`, returning ``(result, None)`` or ``(None, why it failed)``.

    The library is being edited while the suite runs: a broken build is reported as an
    ``error`` record, never a crash of the whole suite.
    """
    try:
        return run_on(backend, fn, *args), None
    except Exception as exc:
        return None, describe(exc)


def now() -> float:
    """Wall-clock seconds for the harness's own timing (``time.perf_counter``)."""
    return time.perf_counter()
