"""
What the demo shows a person: live progress, the results table, and the picture.

* Progress: a ``rich`` progress display when rich is installed, plain periodic lines
  otherwise; both are driven by the demo's own task on the event loop (no thread, no
  ``tqdm.asyncio``), so they work the same under asyncio and Trio.
* The table: rich's when rich is installed and the output is a terminal, plain text
  otherwise (logs, pipes, tests).
* ``--plot FILE``: matplotlib (PNG or SVG by extension), throughput and latency per mode.

Optional libraries are imported when used, never when this module is.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import COLUMNS, DemoResult, Phase, format_table, legend, summary, table_rows

__all__ = [
    "PLOT_FORMATS",
    "PlainProgress",
    "RichProgress",
    "have",
    "make_progress",
    "print_results",
    "write_plot",
]

#: File extensions ``--plot`` accepts.
PLOT_FORMATS = (".png", ".svg")

#: Colours of the three modes, in the table's order (the picture uses them).
_COLOURS = {"unbatched": "#7f7f7f", "fifo": "#d62728", "length": "#1f77b4"}


def have(module: str) -> bool:
    """Whether *module* imports (False also when it is blocked or broken)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _rate(phase: Phase, now: float) -> float:
    elapsed = now - phase.started
    return phase.done / elapsed if elapsed > 0 else 0.0


class PlainProgress:
    """Progress as plain text lines, one per phase per second or so."""

    interval = 1.0

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def _write(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()

    def begin(self, phase: Phase) -> None:
        """Say which way of serving starts."""
        self._write(f"{phase.label}: {phase.total:,} requests ...")

    def update(self, phase: Phase, now: float) -> None:
        """One line: requests done so far and the rate."""
        if 0 < phase.done < phase.total:
            self._write(
                f"  {phase.label}: {phase.done:,}/{phase.total:,} "
                f"({phase.done / phase.total:.0%}), {_rate(phase, now):,.0f} req/s"
            )

    def end(self, phase: Phase, now: float) -> None:
        """The phase's total time."""
        self._write(f"  {phase.label}: done in {now - phase.started:.1f} s")

    def close(self) -> None:
        """Nothing to tear down."""


class RichProgress:
    """A rich progress display: one bar per way of serving, refreshed by the demo's task."""

    interval = 0.1

    def __init__(self, stream: TextIO) -> None:
        console = importlib.import_module("rich.console")
        progress = importlib.import_module("rich.progress")
        self._progress: Any = progress.Progress(
            progress.TextColumn("{task.description:<16}"),
            progress.BarColumn(),
            progress.MofNCompleteColumn(),
            progress.TextColumn("{task.fields[rate]:>12}"),
            progress.TimeElapsedColumn(),
            console=console.Console(file=stream),
            auto_refresh=False,  # refreshed from update(): no thread of rich's own
        )
        self._tasks: dict[int, Any] = {}

    def begin(self, phase: Phase) -> None:
        """Add a bar for *phase* (starting the display on the first)."""
        if not self._tasks:
            self._progress.start()
        self._tasks[id(phase)] = self._progress.add_task(phase.label, total=phase.total, rate="")

    def update(self, phase: Phase, now: float) -> None:
        """Move *phase*'s bar and redraw."""
        self._progress.update(
            self._tasks[id(phase)], completed=phase.done, rate=f"{_rate(phase, now):,.0f} req/s"
        )
        self._progress.refresh()

    def end(self, phase: Phase, now: float) -> None:
        """Draw *phase* complete."""
        self.update(phase, now)

    def close(self) -> None:
        """Stop the live display (leaving the bars on screen)."""
        if self._tasks:
            self._progress.stop()


def make_progress(stream: TextIO) -> PlainProgress | RichProgress:
    """rich's display when rich is installed, plain lines otherwise."""
    return RichProgress(stream) if have("rich") else PlainProgress(stream)


def print_results(results: Sequence[DemoResult], stream: TextIO, *, rich: bool) -> None:
    """The table and the summary: with rich when *rich*, else plain text."""
    if not rich:
        stream.write(f"{format_table(results)}\n")
        stream.flush()
        return
    console: Any = importlib.import_module("rich.console").Console(file=stream)
    table: Any = importlib.import_module("rich.table").Table(header_style="bold")
    for index, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if index in (0, len(COLUMNS) - 1) else "right")
    for result, row in zip(results, table_rows(results), strict=True):
        table.add_row(*row, style="bold" if result.mode == "length" else None)
    console.print(table)
    for line in summary(results):
        console.print(line, highlight=False)
    console.print()
    for line in legend(results):
        console.print(line, style="dim", highlight=False)


def _cdf(latencies: Sequence[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(latencies)
    count = len(ordered)
    return [value * 1000 for value in ordered], [(i + 1) / count for i in range(count)]


def write_plot(results: Sequence[DemoResult], path: Path, title: str) -> None:
    """
    Write throughput (bars) and latency (distribution per mode) to *path*.

    The format follows the extension (:data:`PLOT_FORMATS`).

    Raises:
        ImportError: matplotlib is not installed.
    """
    figure_module = importlib.import_module("matplotlib.figure")
    figure: Any = figure_module.Figure(figsize=(11, 5.2), layout="constrained")
    bars_axes, cdf_axes = figure.subplots(1, 2, width_ratios=(1, 1.5))
    base = next((r for r in results if r.mode == "unbatched"), None)

    labels = [r.label for r in results]
    colours = [_COLOURS[r.mode] for r in results]
    bars = bars_axes.bar(labels, [r.throughput for r in results], color=colours)
    notes = [
        f"{r.throughput:,.0f}/s"
        + ("" if base is None or r is base else f"\n{r.throughput / base.throughput:.1f}x")
        for r in results
    ]
    bars_axes.bar_label(bars, notes, padding=3, fontsize=9)
    bars_axes.set_ylabel("throughput (requests/s)")
    bars_axes.set_title("throughput")
    bars_axes.margins(y=0.2)
    bars_axes.grid(axis="y", alpha=0.3)

    for result in results:
        if not result.latencies:
            continue
        xs, ys = _cdf(result.latencies)
        cdf_axes.step(
            xs,
            ys,
            where="post",
            color=_COLOURS[result.mode],
            label=(
                f"{result.label}: p50 {result.p50_ms:,.0f} ms, p99 {result.p99_ms:,.0f} ms, "
                f"padding eff. {result.padding_efficiency:.0%}"
            ),
        )
        if math.isfinite(result.p99_ms):
            cdf_axes.plot(
                [result.p99_ms], [0.99], marker="o", color=_COLOURS[result.mode], markersize=4
            )
    cdf_axes.axhline(0.99, color="black", linewidth=0.6, linestyle=":")
    cdf_axes.set_xscale("log")
    cdf_axes.set_xlabel("latency (ms, log scale)")
    cdf_axes.set_ylabel("fraction of requests done within")
    cdf_axes.set_ylim(0, 1.02)
    cdf_axes.set_title("latency distribution (dot: p99)")
    cdf_axes.grid(alpha=0.3, which="both")
    cdf_axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=110)
