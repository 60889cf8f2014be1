"""
Exceptions raised by batchscope.

The tree::

    Exception
    └── BatchScopeError                 base of everything batchscope raises itself
        ├── ScopeClosedError            the scope is closed or closing (you closed it),
        │                               or it failed (then ``__cause__`` says why)
        ├── QueueFullError              ``on_full="reject"`` and the queue is at
        │                               ``max_queue_size``
        ├── ItemTooLargeError           an item's own cost exceeds ``max_batch_cost``
        │                               and ``oversize="reject"`` (also a ValueError)
        ├── BatchSizeMismatchError      the batch function returned the wrong number
        │                               of results
        ├── CircuitOpenError            the circuit breaker is open
        ├── WarmupError                 ``warmup=``: the batch function (or the
        │                               samples) failed before the scope opened
        ├── NoActiveScopeError          misuse: no open scope to submit to (also a
        │                               RuntimeError)
        └── ReplicaUnavailableError     ``batchscope.ray``: no Ray replica could run a
                                        batch (replicas died and could not be replaced,
                                        did not start in time, or failed in turn)

Timeouts raise the builtin :class:`TimeoutError`. Exceptions raised by the batch function
reach its callers unchanged (same type, so ``except ValueError`` works). Cancellation
exceptions are never caught, wrapped or created by batchscope.
"""

from __future__ import annotations

__all__ = [
    "BatchScopeError",
    "BatchSizeMismatchError",
    "CircuitOpenError",
    "ItemTooLargeError",
    "NoActiveScopeError",
    "QueueFullError",
    "ScopeClosedError",
    "WarmupError",
]


class BatchScopeError(Exception):
    """
    Base class of every exception batchscope raises itself.
    """


class ScopeClosedError(BatchScopeError):
    """
    The scope is closed or closing, so it takes no more items.

    Like Trio's ``ClosedResourceError``, this is what you get when *your* code closed the
    scope (``close()``, or leaving ``async with``) and somebody submits afterwards. Like
    Trio's ``BrokenResourceError``, it is also what every waiting caller gets when the scope
    *broke*: the ``async with`` body raised or was cancelled, or the batch function raised a
    ``BaseException``, or batchscope itself has a bug. In that case ``__cause__`` is the
    exception that broke it.
    """


class QueueFullError(BatchScopeError):
    """
    The queue holds ``max_queue_size`` pending items and ``on_full="reject"`` is set.
    """


class ItemTooLargeError(BatchScopeError, ValueError):
    """
    An item's own cost exceeds ``max_batch_cost`` and ``oversize="reject"`` is set.
    """


class BatchSizeMismatchError(BatchScopeError):
    """
    The batch function returned a different number of results than it was given items.

    Every item of that batch fails with this error; the scope keeps running.
    """


class CircuitOpenError(BatchScopeError):
    """
    The circuit breaker is open: recent batches failed, so submits fail fast.
    """


class NoActiveScopeError(BatchScopeError, RuntimeError):
    """
    There is no open scope to submit to: open one first with ``async with``.
    """


class WarmupError(BatchScopeError):
    """
    The scope's ``warmup=`` failed, so the scope did not open: the batch function raised
    (or returned an exception, or the wrong number of results) on the sample items, or
    the ``warmup`` callable (or ``cost``) raised. ``__cause__`` is the original error.

    .. versionadded:: 0.2.0
    """
