"""
``python -m batchscope``: the command line.

``python -m batchscope demo`` serves variable-length requests from many concurrent clients
with a model whose cost follows padded tokens, three ways: unbatched, FIFO-batched and
length-bucketed; it shows live progress and prints throughput, latency, batch sizes,
padding efficiency and why batches were released. ``--plot FILE`` draws the comparison.
The demo lives in the private ``_demo`` package; this module is only its entry point.
"""

from __future__ import annotations

import sys

from ._demo.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
