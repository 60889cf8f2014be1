"""
Exceptions raised by batchscope.

The tree::

    Exception
    └── BatchScopeError                 base of everything batchscope raises itself
        ├── ScopeClosedError            the scope is closed or closing (you closed it),
        │                               or it failed (then ``__cause__`` says why)
        ├── QueueFullError              ``on_full="reject"`` and the queue is at
        │                               ``max_queue_size`` (``retry_after``: seconds)
        ├── DeadlineUnmeetableError     ``admission="deadline"`` and the caller's
        │                               deadline cannot be met by the backlog ahead
        │                               (``retry_after``: seconds)
        ├── ItemTooLargeError           an item's own cost exceeds ``max_batch_cost``
        │                               and ``oversize="reject"`` (also a ValueError)
        ├── BatchSizeMismatchError      the batch function returned the wrong number
        │                               of results
        ├── CircuitOpenError            the circuit breaker is open (``retry_after``:
        │                               seconds until it lets a trial batch through)
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

from typing import Any

__all__ = [
    "BatchScopeError",
    "BatchSizeMismatchError",
    "CircuitOpenError",
    "DeadlineUnmeetableError",
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


class _RetryAfter(BatchScopeError):
    """A refusal that says when trying again may succeed (``retry_after`` seconds)."""

    #: Seconds after which a new submit may be admitted: an estimate (the time for the
    #: backlog ahead to drain), for a ``Retry-After`` header or a client's backoff.
    retry_after: float

    def __init__(self, message: str = "", retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.retry_after))


class QueueFullError(_RetryAfter):
    """
    The queue holds ``max_queue_size`` pending items and ``on_full="reject"`` is set.

    ``retry_after`` estimates, in seconds, how long the backlog takes to drain a batch's
    worth (by the scope's fitted model of batch run time).
    """


class DeadlineUnmeetableError(_RetryAfter):
    """
    ``admission="deadline"``: the caller's deadline cannot be met, so the item was refused
    at once instead of queued.

    The scope predicts the item's queue wait and run time from the backlog ahead of it
    and its fitted model of batch run time; ``retry_after`` estimates, in seconds, when
    that backlog will have drained.

    .. versionadded:: 0.2.0
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


class CircuitOpenError(_RetryAfter):
    """
    The circuit breaker is open: recent batches failed, so submits fail fast.

    ``retry_after`` is the time, in seconds, until the breaker lets a trial batch through
    (its ``reset_timeout`` counted from when it opened).
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
