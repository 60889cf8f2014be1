"""
The per-batch view: what a running batch function can learn about its batch.

The executor sets it around every call of fn (in the batch's task; a sync fn's worker
thread sees it too, since AnyIO runs it in a copy of the caller's context), so fn, a
collator, or anything they call can ask :func:`current_batch`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, cast, final, overload

import attrs

from ._hooks import ReleaseReason
from ._items import RUNNING, Item

__all__ = ["BatchInfo", "current_batch", "using", "warming"]


@final
class _Alive(Sequence[bool]):
    """A live, read-only view: whether each row's caller still waits for it."""

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[Item[Any, Any]]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> bool: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[bool]: ...

    def __getitem__(self, index: int | slice) -> bool | Sequence[bool]:
        if isinstance(index, slice):
            return [item.state == RUNNING for item in self._items[index]]
        return self._items[index].state == RUNNING

    def __iter__(self) -> Iterator[bool]:
        return (item.state == RUNNING for item in self._items)

    def __repr__(self) -> str:
        return f"alive({list(self)})"


@final
@attrs.frozen
class BatchInfo:
    """
    The batch a batch function is running, from :func:`current_batch`.

    Row *i* is the *i*-th item of fn's input (of this call: a retry or an isolation
    call covers the rows still to be served).

    .. versionadded:: 0.2.0
    """

    #: Rows in this call of fn.
    size: int
    #: Why the batch left the queue: ``size``, ``cost``, ``timer``, ``deadline``, ``drain``,
    #: ``early``.
    reason: ReleaseReason
    #: Per row, whether its caller still waits for it: a live view, False once the caller
    #: left (cancelled, timed out). fn may skip work for rows nobody wants.
    alive: Sequence[bool] = attrs.field(repr=False)
    #: The batch's partition key (None when the scope has no ``partition``).
    partition: Hashable | None = None
    #: Per row, the caller's context, copied when its item was queued: run code in it
    #: with ``contexts[i].run(f)`` (its contextvars, and the OpenTelemetry context, are
    #: the caller's). None unless the scope captures contexts (``capture_context=True``,
    #: or a hook whose ``captures_context`` is true).
    contexts: Sequence[contextvars.Context] | None = attrs.field(default=None, repr=False)


_CURRENT: contextvars.ContextVar[BatchInfo] = contextvars.ContextVar("batchscope.current_batch")


def current_batch() -> BatchInfo:
    """
    The batch that the calling batch function (or its collator) is running.

    Returns:
        Its :class:`BatchInfo`.

    Raises:
        RuntimeError: Not called from inside a batch function of a batchscope scope.

    .. versionadded:: 0.2.0
    """
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError(
            "batchscope.current_batch() is only available inside a batch function "
            "(or its collator) while batchscope runs it"
        ) from None


def using(items: Sequence[Item[Any, Any]], reason: ReleaseReason) -> contextvars.Token[BatchInfo]:
    """Make *items* the current batch (the executor resets the returned token after)."""
    contexts = None
    if items[0].context is not None:
        contexts = tuple(cast(contextvars.Context, item.context) for item in items)
    return _CURRENT.set(BatchInfo(len(items), reason, _Alive(items), items[0].partition, contexts))


def warming(size: int) -> contextvars.Token[BatchInfo]:
    """Make a warmup call of *size* rows the current batch: every row alive, no partition."""
    return _CURRENT.set(BatchInfo(size, "size", (True,) * size))


def reset(token: contextvars.Token[BatchInfo]) -> None:
    """Restore what was current before :func:`using`."""
    _CURRENT.reset(token)
