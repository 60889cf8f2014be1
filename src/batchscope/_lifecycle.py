"""
The states of a scope's life, one enum for every object that is opened and closed, and
what a scope's engine does as it fails or refuses a caller.

:class:`BatchScope` and :class:`ContinuousScope` (through their engines),
:class:`BlockingBatchScope` and the Ray replica pool all move through these states, and
only forward; their reprs and messages show ``state.value``.

The two engines (``Engine`` of :class:`BatchScope`, ``Stepper`` of
:class:`ContinuousScope`) keep their failure, refuse callers and wait for room in the
queue alike: the functions below are that once, given the little state they read (the
differences, such as how a full queue estimates ``retry_after``, are their parameters).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio

from ._exceptions import NoActiveScopeError, QueueFullError, ScopeClosedError
from ._room import AdmissionCounts, Room, wait_counted

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from ._hooks import HookRunner, RejectReason

__all__ = [
    "Admitting",
    "ScopeState",
    "closed_error",
    "kept_failure",
    "not_open_error",
    "raise_single",
    "reject",
    "wait_or_refuse",
]


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


def kept_failure(failure: BaseException | None, exc: BaseException) -> BaseException | None:
    """What broke the scope: the first failure, *exc* if none yet and not a cancellation."""
    if failure is None and not isinstance(exc, anyio.get_cancelled_exc_class()):
        return exc
    return failure


def raise_single(group: BaseExceptionGroup[BaseException]) -> None:
    """
    A scope's task group failed (one of its own tasks raised): a single failure is
    raised as itself, not wrapped in a group of one, its own cause kept (the group is not
    shown as its context). With several, this returns: the caller re-raises the group.
    """
    if len(group.exceptions) == 1:
        failure = group.exceptions[0]
        raise failure from failure.__cause__


def closed_error(scope: str, failure: BaseException | None) -> ScopeClosedError:
    """The error for callers of a closed (or failed) scope, *scope* as messages name it."""
    if failure is None:
        return ScopeClosedError(f"{scope} is closed: it takes no more items")
    error = ScopeClosedError(f"{scope} failed: {type(failure).__name__}: {failure}")
    error.__cause__ = failure
    return error


def not_open_error(
    state: ScopeState, scope: str, failure: BaseException | None, opening: str
) -> Exception:
    """
    The error for a submit that finds the scope not open: NoActiveScopeError before it
    opened (*opening*, such as ``BatchScope(fn)``, is how to open it), else
    :func:`closed_error`.
    """
    if state is ScopeState.NEW:
        return NoActiveScopeError(
            f"{scope} is not open: use 'async with {opening} as scope:' and submit inside the block"
        )
    return closed_error(scope, failure)


def reject(recorder: AdmissionCounts, hooks: HookRunner | None, reason: RejectReason) -> None:
    """Count a refused submit and tell the hooks why."""
    recorder.rejected += 1
    if hooks is not None:
        hooks.call("item_rejected", reason)


class QueueOptions(Protocol):
    """The options a full queue reads (a scope's and a continuous scope's config)."""

    @property
    def on_full(self) -> str: ...
    @property
    def max_queue_size(self) -> int: ...


class Admitting(Protocol):
    """What a submit that finds the queue full reads of its engine (Engine, Stepper)."""

    state: ScopeState
    room: Room
    hooks: HookRunner | None

    @property
    def recorder(self) -> AdmissionCounts: ...
    @property
    def config(self) -> QueueOptions: ...
    def describe(self) -> str: ...
    def closed_now(self) -> Exception: ...


async def wait_or_refuse(engine: Admitting, retry_after: Callable[[], float], items: str) -> None:
    """
    The queue is full: reject (``on_full="reject"``: QueueFullError, its ``retry_after``
    from *retry_after*; *items* names what the queue holds), or wait for room, and refuse
    the caller if the scope stopped taking items meanwhile.
    """
    config = engine.config
    if config.on_full == "reject":
        reject(engine.recorder, engine.hooks, "queue_full")
        seconds = retry_after()
        raise QueueFullError(
            f"the queue of {engine.describe()} holds max_queue_size="
            f"{config.max_queue_size} {items} items: retry after {seconds:.3f} s",
            seconds,
        )
    await wait_counted(engine.room, engine.recorder, engine.hooks)
    if engine.state is not ScopeState.OPEN:
        engine.room.release()  # pass the wake-up on to the next waiter
        reject(engine.recorder, engine.hooks, "closed")
        raise engine.closed_now()
