"""
``python -m batchscope``: the command line.

``python -m batchscope demo`` runs a simulated model service under concurrent load,
unbatched and batched, and prints throughput and latency for each.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

import anyio

from ._demo import DemoConfig, format_table, run_demo


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batchscope", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="serve a simulated model, unbatched and batched, and compare"
    )
    defaults = DemoConfig()
    demo.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    demo.add_argument("--clients", type=_positive_int, default=defaults.clients)
    demo.add_argument("--requests", type=_positive_int, default=defaults.requests)
    demo.add_argument("--max-batch-size", type=_positive_int, default=defaults.max_batch_size)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    config = DemoConfig(
        clients=args.clients, requests=args.requests, max_batch_size=args.max_batch_size
    )
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        print("--backend trio needs Trio: pip install 'batchscope[trio]'", file=sys.stderr)
        return 2
    results = anyio.run(run_demo, config, backend=args.backend)
    print(format_table(config, args.backend, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
