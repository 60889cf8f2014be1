"""
The scheduler: one task per scope that turns pending items into batches.

It receives items from the scope's memory channel into a pool (the batching policy) and,
whenever an executor slot is free, dispatches the batch the pool says is due: a full batch
at once, a partial one when its oldest item has waited ``max_wait``, everything when the
scope is closing. Dispatch is pull-based: while every slot is busy the scheduler does not
look at the clock at all, items simply accumulate and the next batch is larger.

It waits in exactly one place, under a cancel scope that is its only timer and its only
wake-up call: a deadline when a partial batch will come due, cancellation when a running
batch frees a slot or the options change. An idle scope waits in ``receive()`` with no
deadline, and nothing wakes it until an item arrives.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
from anyio import EndOfStream, WouldBlock

from ._pending import EXPIRED, QUEUED, RUNNING, Item, Pool, Release

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from ._executor import Executor
    from ._scope import BatchScope

__all__ = ["Scheduler"]

In = TypeVar("In")
Out = TypeVar("Out")


class Scheduler(Generic[In, Out]):
    """Forms batches from the pool and hands them to the executor."""

    def __init__(
        self,
        scope: BatchScope[In, Out],
        receive: MemoryObjectReceiveStream[Item[In, Out]],
        pool: Pool,
        executor: Executor[In, Out],
    ) -> None:
        self._scope = scope
        self._receive = receive
        self.pool = pool
        self._executor = executor
        self._wait_scope: anyio.CancelScope | None = None
        self._waiting_for_slot = False
        #: How many times the scheduler has woken up (an idle scope must not).
        self.wakeups = 0
        #: Items set aside because their caller's deadline passed (see _pending).
        self._limbo: list[Item[In, Out]] = []

    def wake(self) -> None:
        """Make the scheduler look again (the options changed)."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    def slot_freed(self) -> None:
        """A batch ended: wake the scheduler if it was waiting for a free slot."""
        if self._waiting_for_slot and self._wait_scope is not None:
            self._wait_scope.cancel()

    def _pull(self) -> bool:
        """Move every item that has arrived into the pool; True at end of stream."""
        receive_nowait = self._receive.receive_nowait
        add = self.pool.add
        while True:
            try:
                item = receive_nowait()
            except WouldBlock:
                return False
            except EndOfStream:
                return True
            if item.state == QUEUED:  # not withdrawn while in the channel
                add(item)

    async def run(self, task_group: anyio.abc.TaskGroup) -> None:
        """Schedule until the scope is closed and every pending item has been dispatched."""
        scope = self._scope
        pool = self.pool
        receive = self._receive
        recorder = scope._recorder
        draining = False
        limbo = self._limbo
        with receive:
            while True:
                if scope._failure is not None or task_group.cancel_scope.cancel_called:
                    # The scope is failing (a crash, or the body raised): dispatch nothing
                    # more, whatever woke us; our own cancellation is on its way.
                    await anyio.sleep_forever()
                if not draining:
                    draining = self._pull()
                config = scope.config
                limit = config.max_concurrent_batches
                if pool.live and recorder.in_flight < limit:
                    now = anyio.current_time()
                    while recorder.in_flight < limit:
                        taken = pool.take(now, config, draining)
                        if pool.expired:
                            limbo.extend(pool.expired)
                            pool.expired.clear()
                        if taken is None:
                            break
                        self._dispatch(task_group, taken[0], taken[1], now)
                if draining and not pool.live and not limbo:
                    return

                if limbo:
                    due = anyio.current_time()  # look again after one tick
                elif recorder.in_flight >= limit:
                    due = math.inf  # a finished batch wakes us
                else:
                    due = pool.due_at(config)
                with anyio.CancelScope(deadline=due) as wait_scope:
                    self._wait_scope = wait_scope
                    self._waiting_for_slot = recorder.in_flight >= limit
                    try:
                        if draining:
                            await anyio.sleep_forever()
                        else:
                            # Keep receiving even while every slot is busy, so withdrawn
                            # items never pile up in the channel.
                            item = await receive.receive()
                            if item.state == QUEUED:
                                pool.add(item)
                    except EndOfStream:
                        draining = True
                    finally:
                        self._wait_scope = None
                        self._waiting_for_slot = False
                self.wakeups += 1
                if limbo:
                    self._revive(limbo)

    def _revive(self, limbo: list[Item[In, Out]]) -> None:
        """Items set aside whose caller did not leave after all: back to the pool."""
        for item in limbo:
            if item.state == EXPIRED:
                item.deadline = math.inf  # the caller's deadline evidently moved
                self.pool.add(item)
        limbo.clear()

    def _dispatch(
        self,
        task_group: anyio.abc.TaskGroup,
        items: list[Item[In, Out]],
        reason: Release,
        now: float,
    ) -> None:
        scope = self._scope
        recorder = scope._recorder
        size = len(items)
        recorder.pending -= size
        recorder.running += size
        recorder.in_flight += 1
        recorder.batches += 1
        recorder.batched_items += size
        recorder.sizes[size] += 1
        recorder.reasons[reason] += 1
        waits = recorder.queue_waits
        for item in items:
            item.state = RUNNING
            waits.append(now - item.arrival)
        scope._release_room(size)
        self._executor.start(task_group, items)

    def fail_waiting(self, error: BaseException) -> int:
        """End every item still queued or pooled with *error*; return how many."""
        failed = 0
        items: list[Item[Any, Any]] = self.pool.clear()
        items.extend(item for item in self._limbo if item.state == EXPIRED)
        self._limbo.clear()
        while True:
            try:
                item = self._receive.receive_nowait()
            except (WouldBlock, EndOfStream, anyio.ClosedResourceError):
                break
            if item.state == QUEUED:
                items.append(item)
        for item in items:
            item.fail(error)
            failed += 1
        return failed
