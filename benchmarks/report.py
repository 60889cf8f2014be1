"""
From records to results: medians, the Markdown table, the targets and the plots.

A cell of the table is the median over runs of a value, and the median over runs of its
ratio to the reference measured in the same run (not the ratio of medians, so that a
slow run slows the reference too). Targets are read off those medians.
"""

from __future__ import annotations

import math
import platform
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._core import BACKENDS, Record, median

__all__ = [
    "Cell",
    "Target",
    "check_targets",
    "medians",
    "paired_ratio",
    "plot",
    "write_markdown",
]


@dataclass
class Cell:
    """Median of one (scenario, implementation, backend, metric, parameters) over runs."""

    scenario: str
    implementation: str
    backend: str
    metric: str
    params: dict[str, Any]
    value: float
    ratio: float | None
    reference: str | None
    unit: str
    runs: int
    note: str
    #: The spread over runs: the lowest and the highest value.
    low: float = math.nan
    high: float = math.nan


@dataclass
class Target:
    """One target of the issue: what, the measured figure, the limit, pass or fail."""

    name: str
    measured: float | None
    limit: str
    passed: bool | None
    note: str = ""


def medians(records: Iterable[Record]) -> list[Cell]:
    """Group records over runs; median value and median ratio per group."""
    groups: dict[tuple[Any, ...], list[Record]] = defaultdict(list)
    for record in records:
        if record.status == "ok" and record.value is not None:
            key = (record.implementation, *record.key())
            groups[key].append(record)
    cells = []
    for group in groups.values():
        first = group[0]
        ratios = [r.ratio for r in group if r.ratio is not None]
        notes = sorted({r.note for r in group if r.note})
        cells.append(
            Cell(
                first.scenario,
                first.implementation,
                first.backend,
                first.metric,
                first.params,
                median(r.value for r in group if r.value is not None),
                median(ratios) if ratios else None,
                first.reference,
                first.unit,
                len(group),
                "; ".join(notes)[:120],
                min(r.value for r in group if r.value is not None),
                max(r.value for r in group if r.value is not None),
            )
        )
    return cells


def _find(
    cells: list[Cell], scenario: str, implementation: str, backend: str, metric: str, **params: Any
) -> Cell | None:
    for cell in cells:
        if (cell.scenario, cell.implementation, cell.backend, cell.metric) != (
            scenario,
            implementation,
            backend,
            metric,
        ):
            continue
        if all(cell.params.get(key) == value for key, value in params.items()):
            return cell
    return None


def _target(
    name: str,
    cell: Cell | None,
    limit: float,
    *,
    use_ratio: bool,
    at_most: bool = True,
    limit_text: str = "",
    note: str = "",
) -> Target:
    if cell is None:
        return Target(name, None, limit_text or str(limit), None, note or "not measured")
    measured = cell.ratio if use_ratio else cell.value
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        return Target(name, None, limit_text or str(limit), None, note or "no figure")
    if math.isinf(limit):  # reported beside the targets, no limit of its own
        return Target(name, measured, limit_text, None, note)
    passed = measured <= limit if at_most else measured >= limit
    return Target(name, measured, limit_text or str(limit), passed, note)


def paired_ratio(
    records: Iterable[Record],
    scenario: str,
    implementation: str,
    reference: str,
    backend: str,
    metric: str,
    **params: Any,
) -> Cell | None:
    """
    The median over runs of *implementation*'s value / *reference*'s in the same run
    (same backend, metric and parameters), as a cell; None if no run measured both.
    """
    values: dict[tuple[Any, ...], dict[str, float]] = defaultdict(dict)
    first: Record | None = None
    for r in records:
        if (
            r.status != "ok"
            or r.value is None
            or (r.scenario, r.backend, r.metric)
            != (
                scenario,
                backend,
                metric,
            )
        ):
            continue
        if r.implementation not in (implementation, reference):
            continue
        if any(r.params.get(key) != value for key, value in params.items()):
            continue
        values[(repr(sorted(r.params.items())), r.run)][r.implementation] = r.value
        if r.implementation == implementation:
            first = r
    ratios = [
        pair[implementation] / pair[reference]
        for pair in values.values()
        if implementation in pair and reference in pair and pair[reference] != 0
    ]
    if first is None or not ratios:
        return None
    return Cell(
        scenario,
        implementation,
        backend,
        metric,
        first.params,
        median(pair[implementation] for pair in values.values() if implementation in pair),
        median(ratios),
        reference,
        first.unit,
        len(ratios),
        "",
        min(ratios),
        max(ratios),
    )


def _spread(cell: Cell | None) -> str:
    """``ratio spread lo to hi over N runs`` of a paired cell, for a target's note."""
    if cell is None or math.isnan(cell.low):
        return ""
    return f"spread {_fmt(cell.low)} to {_fmt(cell.high)} over {cell.runs} runs"


def check_targets(cells: list[Cell], records: list[Record]) -> list[Target]:
    """
    Every target of issue 15 that this run measured, pass or fail: each a median of
    per-run ratios against a reference measured in the same run.
    """
    records = list(records)
    targets: list[Target] = []
    c1000 = {"callers": 1000, "batch": 32}
    for backend in ("asyncio", "uvloop"):
        lean = paired_ratio(
            records, "overhead", "batchscope", "lean-floor", backend, "per_item", **c1000
        )
        targets.append(
            _target(
                f"overhead {backend} C=1000 b=32 vs lean floor",
                lean,
                2.5,
                use_ratio=True,
                limit_text="≤ 2.5x",
                note=_spread(lean),
            )
        )
        floor = paired_ratio(
            records, "overhead", "batchscope", "floor", backend, "per_item", **c1000
        )
        targets.append(
            _target(
                f"overhead {backend} C=1000 b=32 vs floor (async submit)",
                floor,
                math.inf,
                use_ratio=True,
                limit_text="reported",
                note=_spread(floor),
            )
        )
        batched = paired_ratio(
            records, "overhead", "batched", "batchscope", backend, "per_item", **c1000
        )
        targets.append(
            _target(
                f"overhead {backend} C=1000 b=32: batched / batchscope",
                batched,
                2.5,
                use_ratio=True,
                at_most=False,
                limit_text="≥ 2.5x faster",
                note=_spread(batched),
            )
        )
    cell = paired_ratio(
        records, "overhead", "batchscope", "anyio-event", "trio", "per_item", **c1000
    )
    targets.append(
        _target(
            "overhead trio C=1000 b=32 vs anyio-event",
            cell,
            1.0,
            use_ratio=True,
            limit_text="≤ 1.0x",
            note=_spread(cell),
        )
    )
    for load in (0.3, 0.7, 0.9):
        limit = 1.2 if load >= 0.9 else 1.1
        for backend in ("asyncio", "uvloop", "trio"):
            reference = "anyio-event" if backend == "trio" else "floor"
            mine = paired_ratio(
                records, "latency", "batchscope", reference, backend, "p99", load=load
            )
            targets.append(
                _target(
                    f"latency p99 {backend} at {load:.0%} vs {reference}",
                    mine,
                    limit,
                    use_ratio=True,
                    limit_text=f"≤ {limit}x",
                    note=_spread(mine),
                )
            )
            if load >= 0.9:
                done = paired_ratio(
                    records, "latency", "batchscope", reference, backend, "achieved", load=load
                )
                targets.append(
                    _target(
                        f"latency achieved {backend} at {load:.0%} vs {reference}",
                        done,
                        0.99,
                        use_ratio=True,
                        at_most=False,
                        limit_text="≥ 0.99x",
                        note=_spread(done),
                    )
                )
    variant = "batchscope[length]"
    callers_measured = sorted(
        {c.params.get("callers") for c in cells if c.scenario == "padding"} - {None}
    ) or [256, 512]
    for backend in ("asyncio", "trio"):
        for callers in callers_measured:
            cell = _find(cells, "padding", variant, backend, "padding", callers=callers)
            targets.append(
                _target(
                    f"padding {backend} C={callers} padded/real",
                    cell,
                    1.10,
                    use_ratio=False,
                    limit_text="≤ 1.10",
                )
            )
            cell = _find(cells, "padding", variant, backend, "throughput", callers=callers)
            targets.append(
                _target(
                    f"padding {backend} C={callers} throughput vs offline sorted",
                    cell,
                    0.9,
                    use_ratio=True,
                    at_most=False,
                    limit_text="≥ 0.9x",
                )
            )
        cell = _find(cells, "fairness", variant, backend, "long_short")
        targets.append(
            _target(
                f"fairness {backend} long/short p99 wait",
                cell,
                2.0,
                use_ratio=False,
                limit_text="≤ 2x",
            )
        )
    for backend in ("asyncio", "uvloop", "trio"):
        own = _find(cells, "idle", "batchscope", backend, "scheduler_wakeups_per_s")
        targets.append(
            _target(
                f"idle {backend} scheduler wake-ups/s", own, 0.0, use_ratio=False, limit_text="0"
            )
        )
        net = _find(cells, "idle", "batchscope", backend, "net_wakeups_per_s")
        if net is not None:
            targets.append(
                _target(
                    f"idle {backend} loop wake-ups/s above baseline",
                    net,
                    0.5,
                    use_ratio=False,
                    limit_text="0 (< 0.5)",
                )
            )
    targets.extend(
        _target(
            f"memory {cell.backend} {cell.implementation} peak RSS growth",
            cell,
            50.0,
            use_ratio=False,
            limit_text=f"≤ 50 MB ({cell.params.get('items')} items)",
        )
        for cell in cells
        if cell.scenario == "memory" and cell.implementation.startswith("batchscope")
    )
    targets.extend(_online_targets("realmodel", "real model", cells, records))
    targets.extend(_online_targets("gpu", "GPU online", cells, records))
    return targets


def _online_targets(
    scenario: str, label: str, cells: list[Cell], records: list[Record]
) -> list[Target]:
    """
    (g) and (h): batchscope online against the offline sorted run (≥ 0.9x, its ratio)
    and against one item at a time (≥ 1.6x), per backend; with several variants (the
    GPU's batches in flight), the best one. n/a targets, with why, when it did not run.
    """
    throughput = [c for c in cells if c.scenario == scenario and c.metric == "throughput"]
    one = next((c for c in throughput if c.implementation == "one-at-a-time"), None)
    best: dict[str, Cell] = {}
    for cell in throughput:
        if cell.implementation != "batchscope" or cell.ratio is None:
            continue
        if cell.backend not in best or cell.value > best[cell.backend].value:
            best[cell.backend] = cell
    if not best:
        why = next((r.note for r in records if r.scenario == scenario and r.status != "ok"), "")
        note = f"not measured: {why}" if why else "not measured"
        return [
            _target(name, None, limit, use_ratio=True, limit_text=text, note=note)
            for name, limit, text in (
                (f"{label} vs offline sorted", 0.9, "≥ 0.9x"),
                (f"{label} vs one at a time", 1.6, "≥ 1.6x"),
            )
        ]
    targets: list[Target] = []
    for backend in [b for b in BACKENDS if b in best]:
        cell = best[backend]
        in_flight = cell.params.get("in_flight")
        note = f"best: {in_flight} in flight" if in_flight is not None else ""
        vs_one = None if one is None else Cell(**{**cell.__dict__, "ratio": cell.value / one.value})
        for name, measured, limit, text in (
            (f"{label} {backend} vs offline sorted", cell, 0.9, "≥ 0.9x"),
            (f"{label} {backend} vs one at a time", vs_one, 1.6, "≥ 1.6x"),
        ):
            targets.append(
                _target(
                    name,
                    measured,
                    limit,
                    use_ratio=True,
                    at_most=False,
                    limit_text=text,
                    note=note,
                )
            )
    return targets


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _range(cell: Cell) -> str:
    """The spread of a cell over its runs, ``low to high`` (blank for a single run)."""
    if cell.runs < 2 or math.isnan(cell.low):
        return ""
    return f"{_fmt(cell.low)} to {_fmt(cell.high)}"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def write_markdown(
    path: Path, cells: list[Cell], targets: list[Target], records: list[Record], header: str
) -> None:
    """The results page: machine, targets, one table per scenario, what was skipped."""
    lines = [f"# batchscope benchmarks — {header}", ""]
    lines += [
        f"Machine: {platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}. Values are medians over runs; ratios are "
        "medians of per-run ratios against the reference measured in the same run.",
        "",
        "## Targets",
        "",
        "| target | measured | limit | result | note |",
        "|---|---|---|---|---|",
    ]
    for t in targets:
        result = {True: "PASS", False: "**FAIL**", None: "n/a"}[t.passed]
        lines.append(f"| {t.name} | {_fmt(t.measured)} | {t.limit} | {result} | {t.note} |")
    order = ["overhead", "latency", "padding", "fairness", "idle", "memory", "realmodel", "gpu"]
    for scenario in order:
        rows = [c for c in cells if c.scenario == scenario]
        if not rows:
            continue
        lines += [
            "",
            f"## {scenario}",
            "",
            "| parameters | backend | implementation | metric | median | spread | unit | ratio "
            "| vs | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows.sort(key=lambda c: (_params(c.params), c.backend, c.metric, c.implementation))
        for c in rows:
            lines.append(
                f"| {_params(c.params)} | {c.backend} | {c.implementation} | {c.metric} | "
                f"{_fmt(c.value)} | {_range(c)} | {c.unit} | {_fmt(c.ratio)} | "
                f"{c.reference or ''} | {c.note} |"
            )
    missing = [r for r in records if r.status != "ok"]
    if missing:
        lines += [
            "",
            "## Not measured",
            "",
            "| scenario | implementation | backend | status | why |",
            "|---|---|---|---|---|",
        ]
        seen = set()
        for r in missing:
            key = (r.scenario, r.implementation, r.backend, r.status, r.note)
            if key not in seen:
                seen.add(key)
                lines.append(
                    f"| {r.scenario} | {r.implementation} | {r.backend} | {r.status} | "
                    f"{r.note.replace('|', '/')} |"
                )
    path.write_text("\n".join(lines) + "\n")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def plot(directory: Path, cells: list[Cell]) -> list[Path]:
    """PNG plots of overhead, latency, padding and idle cost; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []

    def bars(name: str, title: str, ylabel: str, data: dict[str, dict[str, float]]) -> None:
        if not data:
            return
        fig, ax = plt.subplots(figsize=(8, 4))
        series = sorted({impl for per in data.values() for impl in per})
        width = 0.8 / max(1, len(data))
        for index, (backend, per) in enumerate(sorted(data.items())):
            xs = [i + index * width for i in range(len(series))]
            ax.bar(xs, [per.get(s, 0.0) for s in series], width, label=backend)
        ax.set_xticks([i + width * (len(data) - 1) / 2 for i in range(len(series))])
        ax.set_xticklabels(series, rotation=20, ha="right")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend()
        fig.tight_layout()
        target = directory / name
        fig.savefig(target, dpi=100)
        plt.close(fig)
        written.append(target)

    overhead: dict[str, dict[str, float]] = defaultdict(dict)
    idle: dict[str, dict[str, float]] = defaultdict(dict)
    pad: dict[str, dict[str, float]] = defaultdict(dict)
    # The headline overhead point: C=1000, batch 32, or the smallest one measured.
    points = sorted(
        (c.params.get("callers") != 1000, c.params.get("batch") != 32, _params(c.params))
        for c in cells
        if c.scenario == "overhead"
    )
    headline = points[0][2] if points else None
    for c in cells:
        if c.scenario == "overhead" and _params(c.params) == headline:
            overhead[c.backend][c.implementation] = c.value
        if c.scenario == "idle" and c.metric == "loop_wakeups_per_s":
            idle[c.backend][c.implementation] = c.value
        if c.scenario == "padding" and c.metric == "throughput" and c.ratio is not None:
            pad[c.backend][c.implementation] = c.ratio
    bars("overhead.png", f"Per-item overhead, identity fn ({headline})", "µs per item", overhead)
    bars("idle.png", "Event-loop wake-ups per second while idle", "wake-ups/s", idle)
    bars("padding.png", "NumPy model throughput vs offline sorted batches", "ratio", pad)

    lat = [
        c for c in cells if c.scenario == "latency" and c.metric == "p99" and math.isfinite(c.value)
    ]
    backends = sorted({c.backend for c in lat})
    if backends:
        fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 4), squeeze=False)
        for ax, backend in zip(axes[0], backends, strict=True):
            for impl in sorted({c.implementation for c in lat if c.backend == backend}):
                curve = sorted(
                    (c.params["load"], c.value)
                    for c in lat
                    if c.backend == backend and c.implementation == impl
                )
                ax.plot([p[0] for p in curve], [p[1] for p in curve], marker="o", label=impl)
            ax.set_yscale("log")
            ax.set_title(f"p99 latency, Poisson arrivals ({backend})")
            ax.set_xlabel("load (fraction of capacity)")
            ax.set_ylabel("ms")
            ax.legend(fontsize=8)
        fig.tight_layout()
        target = directory / "latency.png"
        fig.savefig(target, dpi=100)
        plt.close(fig)
        written.append(target)
    return written
