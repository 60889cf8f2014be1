"""
batchscope's benchmark suite: the library against the floor, AnyIO references and peers.

Run it with ``python -m benchmarks`` (quick by default, ``--full`` for the issue's sizes);
see ``benchmarks/README.md``.
"""

from __future__ import annotations

import os

# One BLAS thread: on a shared 2-core machine a multithreaded matmul spins against the
# event loop and the other engineers' jobs, and the NumPy model's timings become noise.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
