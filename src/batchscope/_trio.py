"""
The per-item completion under Trio: the one module of batchscope that imports Trio.

The core speaks AnyIO only. Here alone, and only once a scope has opened under Trio
(``_completion.loop_calls``), the caller's task parks with Trio's low-level
``wait_task_rescheduled`` and its item's end reschedules it: cheaper than an
``anyio.Event`` (the figures: the "Benchmarks" page). The clock is Trio's own function,
which is what AnyIO calls too (so ``MockClock`` drives it just the same).

The caller's deadline is the value of Trio's ``current_effective_deadline()``, read by
:func:`deadline_reader` with the same walk up the task's cancel statuses, iterative and
reading the fields behind the properties: cheaper on the per-item path (the figures:
docs/benchmarks.md, "Before and after"). Those fields are Trio's private ones; the
reader checks that they are where it reads them (and that it agrees with Trio) when a
scope opens, and is Trio's public function otherwise. ``tests/test_deadline_reader.py``
asserts that the fast path is found, and that it agrees with Trio under nested,
shielded, cancelled and moved deadlines.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from trio import current_effective_deadline, current_time
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    TrioToken,
    current_task,
    reschedule,
    wait_task_rescheduled,
)
from trio.lowlevel import checkpoint as _checkpoint

from ._items import DONE, WaitedItem

__all__ = ["TaskItem", "current_time", "deadline_reader", "is_trio_token"]

In = TypeVar("In")
Out = TypeVar("Out")

_INF = math.inf


def _deadline() -> float:
    """``trio.current_effective_deadline()``, reading Trio's cancel statuses directly."""
    status: Any = current_task()._cancel_status  # pyright: ignore[reportPrivateUsage]
    found = _INF
    while True:
        # Trio's CancelStatus.effective_deadline, unrolled: the soonest deadline up to the
        # first shield (or the root); -inf once a status on the way is cancelled.
        if status.effectively_cancelled:
            return -_INF
        scope = status._scope
        if scope._deadline < found:
            found = scope._deadline
        status = status._parent
        if status is None or scope._shield:
            return found


def deadline_reader() -> Callable[[], float]:
    """
    The calling task's effective deadline (call it in a Trio task): :func:`_deadline`, or
    Trio's ``current_effective_deadline`` if Trio's internals are not where it reads them.
    """
    try:
        if _deadline() == current_effective_deadline():
            return _deadline
    except AttributeError:  # a future Trio that moved them
        pass
    return current_effective_deadline


def is_trio_token(token: object) -> bool:
    """Whether *token* (``anyio.lowlevel.current_token().native_token``) is Trio's."""
    return isinstance(token, TrioToken)


class TaskItem(WaitedItem[In, Out]):
    """An item whose ``signal`` is its caller's task while that task is parked on it."""

    __slots__ = ()

    def park(self) -> Awaitable[object]:
        if self.state == DONE:  # ended before its caller parked: nothing to wait for
            return _checkpoint()  # noqa: ASYNC105 - park() returns what its caller awaits
        self.signal = current_task()
        return wait_task_rescheduled(self._abort)  # noqa: ASYNC105 - as above

    def _abort(self, raise_cancel: RaiseCancelT) -> Abort:
        self.signal = None  # cancelled: its task is no longer parked here
        return Abort.SUCCEEDED

    def _wake(self) -> None:
        task = self.signal
        if task is not None:
            self.signal = None
            reschedule(task)
