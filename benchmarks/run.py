"""
The command line: ``python -m benchmarks`` or ``python benchmarks/run.py``.

Runs the selected scenarios on the selected backends, writes one JSON line per
measurement to ``benchmarks/results/<mode>-<time>.jsonl`` (and ``latest.jsonl``), the table
of medians and targets to ``benchmarks/results/latest.md`` and plots next to them. It is a
measurement, not a test: failing targets are reported and the exit status is 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import gpu, idle, latency, memory, overhead, padding, realmodel
from benchmarks._core import BACKENDS, Record, Settings
from benchmarks.report import check_targets, medians, plot, write_markdown

__all__ = ["SCENARIOS", "main", "run_suite"]

RESULTS = Path(__file__).resolve().parent / "results"

#: Scenario letter of the issue -> (name, runner).
SCENARIOS: dict[str, tuple[str, Callable[[Settings], list[Record]]]] = {
    "a": ("overhead", overhead.run),
    "b": ("latency", latency.run),
    "c": ("padding", padding.run_padding),
    "d": ("fairness", padding.run_fairness),
    "e": ("idle", idle.run),
    "f": ("memory", memory.run),
    "g": ("realmodel", realmodel.run_model),
    "h": ("gpu", gpu.run),
}


def run_suite(
    settings: Settings,
    scenarios: str = "abcdefgh",
    *,
    out: Path | None = RESULTS,
    log: Callable[[str], None] = print,
) -> list[Record]:
    """Run *scenarios*; write results under *out* (nothing when None); return the records."""
    records: list[Record] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    jsonl = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        jsonl = out / f"{'quick' if settings.quick else 'full'}-{stamp}.jsonl"
    for letter in scenarios:
        name, runner = SCENARIOS[letter]
        started = time.perf_counter()
        log(f"({letter}) {name} ...")
        new = runner(settings)
        log(f"({letter}) {name}: {len(new)} records in {time.perf_counter() - started:.1f} s")
        records.extend(new)
        if jsonl is not None:
            with jsonl.open("a") as stream:
                for record in new:
                    stream.write(json.dumps(record.as_json()) + "\n")
    cells = medians(records)
    targets = check_targets(cells, records)
    if out is not None and jsonl is not None:
        (out / "latest.jsonl").write_text(jsonl.read_text())
        import batchscope

        header = (
            f"{'quick' if settings.quick else 'full'} run of {time.strftime('%Y-%m-%d %H:%M')}, "
            f"batchscope {getattr(batchscope, '__version__', '?')} from "
            f"{Path(batchscope.__file__).parent}"
        )
        write_markdown(out / "latest.md", cells, targets, records, header)
        for path in plot(out, cells):
            log(f"plot: {path}")
        log(f"results: {jsonl} and {out / 'latest.md'}")
    for target in targets:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[target.passed]
        measured = "-" if target.measured is None else f"{target.measured:.3g}"
        log(f"  {verdict}  {target.name}: {measured} (limit {target.limit}) {target.note}")
    return records


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the suite; always 0 (a measurement, not a test)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, a few minutes (default)")
    mode.add_argument("--full", action="store_true", help="the issue's sizes (much longer)")
    mode.add_argument("--tiny", action="store_true", help="smoke-test sizes: no usable numbers")
    parser.add_argument(
        "--backend",
        action="append",
        choices=BACKENDS,
        help="backend to run (repeatable; default: all installed)",
    )
    parser.add_argument(
        "--scenario",
        default="abcdefgh",
        help="scenario letters of issue 7 to run, e.g. 'abe' (default: all)",
    )
    parser.add_argument("--only", action="append", help="implementation to include (repeatable)")
    parser.add_argument("--runs", type=int, help="repeated runs per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    settings = Settings.full() if args.full else Settings.tiny() if args.tiny else Settings()
    if args.backend:
        settings.backends = tuple(args.backend)
    if args.only:
        settings.only = tuple(args.only)
    if args.runs:
        settings.runs = args.runs
    unknown = set(args.scenario) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario letters: {''.join(sorted(unknown))}")
    run_suite(settings, args.scenario, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
