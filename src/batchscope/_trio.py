"""
The per-item completion under Trio: the one module of batchscope that imports Trio.

The core speaks AnyIO only. Here alone, and only once a scope has opened under Trio
(``_completion.loop_calls``), the caller's task parks with Trio's low-level
``wait_task_rescheduled`` and its item's end reschedules it: about half the cost of an
``anyio.Event`` (see the "Benchmarks" page). Clock and deadline are Trio's own functions,
which is what AnyIO calls too (so ``MockClock`` drives them just the same).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

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

__all__ = ["TaskItem", "current_time", "deadline", "is_trio_token"]

In = TypeVar("In")
Out = TypeVar("Out")

deadline = current_effective_deadline


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
