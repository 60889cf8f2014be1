"""
Two versions of batchscope side by side, in one run: ``python -m benchmarks.compare``.

What a refactor or an optimisation is judged by: scenario (a)'s hot case (identity fn,
``C`` callers, batch ``B``) measured for the working tree and for a git revision
(``--base``, default ``HEAD``), alternating between them in fresh processes so that the
drift of a loaded machine hits both alike, on each backend. Prints the medians and the
ratio working tree / base per backend::

    python -m benchmarks.compare --base main~3 --runs 5 --backends asyncio trio
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys
from benchmarks._core import run_on
from benchmarks.implementations import IMPLS
from benchmarks.overhead import measure
import batchscope
backend, items, callers, batch = sys.argv[1], *map(int, sys.argv[2:5])
us = run_on(backend, measure, IMPLS["batchscope"], items, callers, batch)
print(json.dumps({"us": us, "from": batchscope.__file__}))
"""


def _export(rev: str, into: Path) -> Path:
    """The ``src`` folder of *rev*, written under *into*."""
    archive = subprocess.run(
        ["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _measure(src: Path, backend: str, items: int, callers: int, batch: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, backend, str(items), str(callers), str(batch)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if not str(answer["from"]).startswith(str(src)):
        raise RuntimeError(f"imported batchscope from {answer['from']}, not {src}")
    return float(answer["us"])


def main(argv: list[str] | None = None) -> None:
    """Measure the working tree against ``--base``; print medians and ratios."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare")
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--callers", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--backends", nargs="+", default=["asyncio", "trio"], choices=("asyncio", "uvloop", "trio")
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="batchscope-base-") as tmp:
        sides = {"base": _export(args.base, Path(tmp)), "tree": ROOT / "src"}
        for backend in args.backends:
            values: dict[str, list[float]] = {"base": [], "tree": []}
            for _ in range(args.runs):
                for side, src in sides.items():
                    values[side].append(
                        _measure(src, backend, args.items, args.callers, args.batch)
                    )
            base = statistics.median(values["base"])
            tree = statistics.median(values["tree"])
            print(
                f"{backend:8} C={args.callers} b={args.batch}: base ({args.base}) "
                f"{base:.2f} us/item, working tree {tree:.2f} us/item, "
                f"ratio {tree / base:.3f} (medians of {args.runs}; "
                f"base {sorted(round(v, 2) for v in values['base'])}, "
                f"tree {sorted(round(v, 2) for v in values['tree'])})"
            )


if __name__ == "__main__":
    main()
