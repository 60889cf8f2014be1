"""
Profile batchscope's per-item path: ``python -m benchmarks.profile_path``.

Scenario (a)'s hot case (identity fn, asyncio, C=1000 callers, batch 32) under cProfile,
printed by own time (``tottime``) and by cumulative time. For a sampling view without
cProfile's per-call overhead, run the same workload under py-spy::

    py-spy record -o profile.svg -- python -m benchmarks.profile_path --no-cprofile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

from ._core import run_on
from .implementations import IMPLS
from .overhead import measure

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Run the workload (under cProfile unless ``--no-cprofile``) and print the profile."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_path")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--callers", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--impl", default="batchscope", choices=sorted(IMPLS))
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "uvloop", "trio"))
    parser.add_argument("--no-cprofile", action="store_true")
    args = parser.parse_args(argv)
    impl = IMPLS[args.impl]
    if args.no_cprofile:
        us = run_on(args.backend, measure, impl, args.items, args.callers, args.batch)
        print(f"{args.impl}: {us:.2f} us/item")
        return
    profiler = cProfile.Profile()
    profiler.enable()
    us = run_on(args.backend, measure, impl, args.items, args.callers, args.batch)
    profiler.disable()
    print(f"{args.impl}: {us:.2f} us/item under cProfile ({args.items} items)")
    for order in ("tottime", "cumulative"):
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats(order)
        stats.print_stats(args.top)
        print(stream.getvalue())


if __name__ == "__main__":
    main()
