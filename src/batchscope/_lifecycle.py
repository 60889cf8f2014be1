"""
The states of a scope's life, one enum for every object that is opened and closed.

:class:`BatchScope` and :class:`ContinuousScope` (through their engines),
:class:`BlockingBatchScope` and the Ray replica pool all move through these states, and
only forward; their reprs and messages show ``state.value``.
"""

from __future__ import annotations

import enum

__all__ = ["ScopeState"]


class ScopeState(enum.Enum):
    """Where a scope (or pool) is in its life; it only moves forward."""

    #: Constructed, not yet opened.
    NEW = "new"
    #: Open: takes items.
    OPEN = "open"
    #: Closed to new items (``close()``, the block ending, or a failure); pending items
    #: still run (or, after a failure, fail).
    CLOSING = "closing"
    #: The ``async with`` block has exited.
    CLOSED = "closed"
