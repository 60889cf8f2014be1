"""
Array collators: pad variable-length arrays into batches for NumPy, CuPy and PyTorch.

Pass a :class:`PadCollator` as ``collate=`` and the batch function receives one padded
array per batch instead of a list of items; its output is split back per caller::

    from batchscope import BatchScope
    from batchscope.arrays import PadCollator

    async with BatchScope(model, collate=PadCollator(pad_value=0)) as scope:
        hidden = await scope.submit(token_ids)  # (L,) in, (L, hidden) out

Needs the ``numpy`` extra (``array-api-compat``); CuPy (``cupy`` extra) and PyTorch are
used when the items or ``xp=`` ask for them, and never imported before.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

try:
    import array_api_compat as _array_api_compat
except ImportError as _missing:
    raise ImportError(
        "batchscope.arrays needs array-api-compat, which is not installed: "
        "pip install 'batchscope[numpy]'"
    ) from _missing

from ._pad import PadCollator as PadCollator
from ._pad import PaddedBatch as PaddedBatch
from ._pad import PaddedDict as PaddedDict
from ._pad import PadOptions as PadOptions

__all__ = ["PadCollator", "PadOptions", "PaddedBatch", "PaddedDict"]


from .._durations import fix_module_names as _fix_module_names

_fix_module_names(__name__, globals(), __all__)
del _fix_module_names, _array_api_compat
