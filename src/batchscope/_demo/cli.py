"""
The command line of ``python -m batchscope`` (``__main__`` only calls :func:`main`).

``python -m batchscope demo`` serves variable-length requests from many concurrent clients
with a model whose cost follows padded tokens, three ways: unbatched, FIFO-batched and
length-bucketed; it shows live progress and prints throughput, latency, batch sizes,
padding efficiency and why batches were released. ``--plot FILE`` draws the comparison.

``python -m batchscope demo --workload generate`` streams the outputs of a simulated
generator instead, with static batching and with continuous batching at the same
``max_active``, and prints throughput and time to first output side by side.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import attrs

from . import MODES, DemoConfig, Mode, format_header, run_demo
from .display import PLOT_FORMATS, have, make_progress, print_results, write_plot
from .generate import (
    GenerateConfig,
    format_generate_header,
    format_generate_table,
    run_generate,
    write_generate_plot,
)
from .models import (
    DemoModel,
    MissingDependencyError,
    load_model,
    minilm_hint,
    minilm_missing,
)

__all__ = ["main"]

#: The workload when the command line does not say: (clients, requests, max batch size).
_LOAD = {"minilm": (64, 192, 16)}
_DEFAULT_LOAD = (DemoConfig().clients, DemoConfig().requests, DemoConfig().max_batch_size)
_GENERATE_LOAD = (GenerateConfig().clients, GenerateConfig().requests, GenerateConfig().max_active)
#: Options of the embed workload only (``--workload generate`` refuses them).
_EMBED_ONLY = (("model", "auto"), ("policy", "both"), ("call_ms", None), ("progress", None))
#: The largest ``--max-batch-size`` (a padded batch of 512 tokens stays well under 1 GB).
_MAX_BATCH_SIZE = 1024
_POLICIES: dict[str, tuple[Mode, ...]] = {
    "both": MODES,
    "fifo": ("unbatched", "fifo"),
    "length": ("unbatched", "length"),
}


def _int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    return parse


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or value > 60_000:
        raise argparse.ArgumentTypeError(f"must be between 0 and 60000 ms, got {text}")
    return value


def _plot_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(f"the file name must end in .png or .svg, got {text!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {str(path.parent)!r}")
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batchscope", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="serve a model unbatched, FIFO-batched and length-bucketed, and compare",
        description=(
            "Serve variable-length requests from many concurrent clients three ways "
            "(unbatched, FIFO-batched, length-bucketed) and compare throughput, latency "
            "and padding."
        ),
    )
    defaults = DemoConfig()
    demo.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    demo.add_argument(
        "--workload",
        choices=["embed", "generate"],
        default="embed",
        help="embed: unbatched vs FIFO vs length-bucketed batching of an embedding model "
        "(default); generate: static vs continuous batching of a simulated generator "
        f"(default {_GENERATE_LOAD[1]} requests from {_GENERATE_LOAD[0]} clients, "
        f"--max-batch-size is max_active, default {_GENERATE_LOAD[2]})",
    )
    demo.add_argument(
        "--model",
        choices=["auto", "numpy", "simulated", "minilm"],
        default="auto",
        help="auto: the NumPy model when NumPy is installed, else the pure-Python simulated "
        "one; minilm: the real all-MiniLM-L6-v2 (needs torch and sentence-transformers)",
    )
    demo.add_argument(
        "--clients",
        type=_int_between(1, 100_000),
        help=f"concurrent clients (default {_DEFAULT_LOAD[0]}; {_LOAD['minilm'][0]} for minilm)",
    )
    demo.add_argument(
        "--requests",
        type=_int_between(1, 10_000_000),
        help=f"requests per mode (default {_DEFAULT_LOAD[1]}; {_LOAD['minilm'][1]} for minilm)",
    )
    demo.add_argument(
        "--max-batch-size",
        type=_int_between(1, _MAX_BATCH_SIZE),
        help=f"most requests per batch (default {_DEFAULT_LOAD[2]}; "
        f"{_LOAD['minilm'][2]} for minilm)",
    )
    demo.add_argument(
        "--max-wait-ms",
        type=_milliseconds,
        default=defaults.max_wait * 1000,
        help="how long the oldest pending request waits for companions (default %(default)g)",
    )
    demo.add_argument(
        "--policy",
        choices=list(_POLICIES),
        default="both",
        help="which batched modes to run after the unbatched baseline (default both)",
    )
    demo.add_argument(
        "--call-ms",
        type=_milliseconds,
        help="fixed latency of one model call (launch, transfer), numpy and simulated "
        "models (default 1; 0 leaves pure CPU compute)",
    )
    demo.add_argument(
        "--seed",
        type=_int_between(0),
        default=defaults.seed,
        help="seeds the request lengths and words (default %(default)s)",
    )
    demo.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live progress (default: on when the output is a terminal)",
    )
    demo.add_argument(
        "--plot",
        type=_plot_path,
        metavar="FILE",
        help="write a throughput/latency picture (.png or .svg; needs matplotlib)",
    )
    return parser


def _fail(message: str) -> int:
    print(f"python -m batchscope demo: {message}", file=sys.stderr)
    return 2


def _one_blas_thread() -> None:
    # The model is one device: one core computes, the event loop keeps the other. A
    # multi-threaded BLAS on a small shared machine spins and fights the event loop.
    if "numpy" not in sys.modules:
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, "1")


def _demo(args: argparse.Namespace) -> int:
    if args.backend == "trio" and not have("trio"):
        return _fail("--backend trio needs Trio: pip install 'batchscope[trio]'")
    if args.plot is not None and not have("matplotlib"):
        return _fail("--plot needs matplotlib: pip install matplotlib")
    if args.workload == "generate":
        return _generate(args)
    if args.model == "minilm" and args.call_ms is not None:
        return _fail("--call-ms applies to the numpy and simulated models, not minilm")
    if args.model == "minilm" and (missing := minilm_missing()) is not None:
        return _fail(minilm_hint(missing))
    clients, count, batch_size = _LOAD.get(args.model, _DEFAULT_LOAD)
    config = DemoConfig(
        clients=clients if args.clients is None else args.clients,
        requests=count if args.requests is None else args.requests,
        max_batch_size=batch_size if args.max_batch_size is None else args.max_batch_size,
        max_wait=args.max_wait_ms / 1000,
        seed=args.seed,
        modes=_POLICIES[args.policy],
    )
    if args.model in ("auto", "numpy"):
        _one_blas_thread()
    progress_on = sys.stdout.isatty() if args.progress is None else args.progress
    try:
        if args.model == "minilm":
            print("loading all-MiniLM-L6-v2 ...", file=sys.stderr, flush=True)
        call_ms = 1.0 if args.call_ms is None else args.call_ms
        model: DemoModel = load_model(args.model, call_latency=call_ms / 1000)
    except MissingDependencyError as exc:
        return _fail(str(exc))
    if model.name == "minilm":
        # It reads at most 256 word pieces: longer requests would only be truncated.
        config = attrs.evolve(config, max_tokens=256)
    header = format_header(config, model, args.backend)
    print(header, end="\n\n", flush=True)
    display = make_progress(sys.stdout) if progress_on else None
    try:
        results = anyio.run(run_demo, config, model, display, backend=args.backend)
    except KeyboardInterrupt:
        return _fail("interrupted")
    finally:
        if display is not None:
            display.close()
            print()
    print_results(results, sys.stdout, rich=have("rich") and sys.stdout.isatty())
    if args.plot is not None:
        lines = header.splitlines()
        try:
            write_plot(results, args.plot, f"{lines[0]}\n{lines[2]}")
        except OSError as exc:
            return _fail(f"could not write {args.plot}: {exc}")
        print(f"\nwrote {args.plot}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    for name, default in _EMBED_ONLY:
        if getattr(args, name) != default:
            option = "--" + name.replace("_", "-")
            return _fail(f"{option} applies to the embed workload, not --workload generate")
    clients, count, max_active = _GENERATE_LOAD
    config = GenerateConfig(
        clients=clients if args.clients is None else args.clients,
        requests=count if args.requests is None else args.requests,
        max_active=max_active if args.max_batch_size is None else args.max_batch_size,
        max_wait=args.max_wait_ms / 1000,
        seed=args.seed,
    )
    header = format_generate_header(config, args.backend)
    print(header, end="\n\n", flush=True)
    try:
        results = anyio.run(run_generate, config, backend=args.backend)
    except KeyboardInterrupt:
        return _fail("interrupted")
    print(format_generate_table(results))
    if args.plot is not None:
        try:
            write_generate_plot(results, args.plot, header.splitlines()[0])
        except OSError as exc:
            return _fail(f"could not write {args.plot}: {exc}")
        print(f"\nwrote {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return 2  # pragma: no cover - argparse requires a known command
