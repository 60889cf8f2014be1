"""
The slots: one persistent worker task per ``max_concurrent_batches``, fed by the scheduler.

A worker lives as long as the scope (or until ``configure()`` removes its slot); it runs
batch after batch, so no task is spawned per batch. The scheduler hands a batch to an
idle worker through that worker's own memory-object channel (:meth:`Slots.hand`).

Device first: while every slot is busy and the pool already holds a full batch, the
scheduler forms that batch then (:meth:`Slots.hold`, the *ready* batch). The first
worker whose batch ends takes it at once: its batch's results are routed (the callers'
completions are set), and the ready batch reaches fn before the worker's next
checkpoint, so the callers of the ended batch resume only once the device has its next
batch. Only a full batch is formed ahead: a partial one is formed when a slot frees, so
items arriving meanwhile can still join it. A ready batch whose callers have all left
never reaches fn; one whose callers left in part runs without their items.

With an async fn the next batch reaches fn before any caller of the ended batch runs (on
asyncio and Trio alike: setting a completion only schedules its caller). A sync fn runs
in a worker thread through ``anyio.to_thread``, which takes a checkpoint before it hands
the call to the thread; the hand-over still saves the trip through the scheduler.

A ready batch holds nothing it was not granted: with a shared device (``bs.Device``) it
claims a device slot only when it starts (:meth:`Slots.begin`). When a batch ends, its
scope asks the device for the ready batch's slot before it frees its own (still
backlogged, it takes its turn); the worker starts the ready batch only if the device chose
this scope, and only if no upstream pause holds dispatch and no half-open breaker's trial
batch runs (``Scheduler.may_start_ready``). Otherwise the worker goes idle and the
scheduler starts the ready batch once it may (the device wakes it when it chooses it).
The scheduler forms no batch ahead under a pause or a half-open breaker, with
``policy="length"`` (a batch chosen from the first full count of items pads more than
one chosen from everything pooled when a slot frees), or with ``partition=``.
"""

from __future__ import annotations

from contextvars import Context
from typing import TYPE_CHECKING, Generic, TypeVar, cast

import anyio
from anyio import EndOfStream

from ._hooks import BatchStarted

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._engine import Engine
    from ._executor import Batch

__all__ = ["Slots"]

In = TypeVar("In")
Out = TypeVar("Out")


class Slots(Generic[In, Out]):
    """The scope's batch workers, the idle ones' hand-over ends, and the ready batch."""

    def __init__(self, engine: Engine[In, Out]) -> None:
        self._engine = engine
        #: The hand-over ends of the idle workers (the most recently idle last).
        self._idle: list[MemoryObjectSendStream[Batch[In, Out]]] = []
        #: Workers alive, and how many the scope wants.
        self.workers: int = 0
        self.target: int = 0
        #: A full batch formed while every slot was busy, for the first one that frees.
        self.ready: Batch[In, Out] | None = None
        #: Workers started so far (their tasks' names number them).
        self._started = 0

    @property
    def idle(self) -> int:
        """Workers waiting for a batch."""
        return len(self._idle)

    def resize(self, task_group: TaskGroup | None, target: int) -> None:
        """
        Have *target* workers: start the missing ones in *task_group*, end idle ones
        beyond it (a busy one beyond it ends when its batch does).
        """
        self.target = target
        while self.workers < target and task_group is not None:
            send, receive = anyio.create_memory_object_stream["Batch[In, Out]"](1)
            self.workers += 1
            self._started += 1
            self._idle.append(send)
            task_group.start_soon(
                self._work, send, receive, name=f"batchscope slot {self._started}"
            )
        while self.workers > target and self._idle:
            self.workers -= 1
            self._idle.pop(0).close()

    def hand(self, batch: Batch[In, Out]) -> None:
        """Start *batch* now on an idle worker (the caller checked :attr:`idle`)."""
        self.begin(batch, self._engine.clock())
        self._idle.pop().send_nowait(batch)

    def hold(self, batch: Batch[In, Out]) -> None:
        """Keep the full *batch* for the first slot that frees."""
        assert self.ready is None
        self.ready = batch

    def take_ready(self) -> Batch[In, Out] | None:
        """The ready batch, taken (None if there is none)."""
        batch = self.ready
        self.ready = None
        return batch

    def discard(self, batch: Batch[In, Out]) -> None:
        """Drop a formed batch whose callers have all left: it never reaches fn."""
        self._engine.executor.running.discard(batch)

    def begin(self, batch: Batch[In, Out], now: float) -> None:
        """
        Count *batch* as started at *now*: in flight, its queue waits, the hooks. (A batch
        formed ahead left the queue when it was formed: its callers count as running.)
        """
        engine = self._engine
        recorder = engine.recorder
        items = batch.items
        size = len(items)
        batch.began = now
        if not recorder.in_flight:
            recorder.busy_since = now  # busy from now (busy_seconds, busy_fraction)
        recorder.in_flight += 1
        recorder.batches += 1
        recorder.batched_items += size
        recorder.sizes[size] += 1
        recorder.reasons[batch.reason] += 1
        if engine.device is not None:
            engine.device.claim(batch.load, now)  # the slot it was granted, taken now
        waits = recorder.queue_waits
        for item in items:
            waits.append(now - item.arrival)
        if engine.hooks is not None:
            load = batch.load
            padding = 1.0
            if engine.config.cost is not None and load:
                padding = sum(item.cost for item in items) / load
            started = BatchStarted(
                size,
                load,
                batch.reason,
                tuple(now - item.arrival for item in items),
                padding,
                cast("tuple[Context, ...]", tuple(item.context for item in items))
                if engine.capture
                else None,
            )
            batch.started = started
            engine.hooks.call("batch_started", started)

    async def _work(
        self,
        send: MemoryObjectSendStream[Batch[In, Out]],
        receive: MemoryObjectReceiveStream[Batch[In, Out]],
    ) -> None:
        """One slot: run each batch handed over, then the ready batch if there is one."""
        engine = self._engine
        run = engine.executor.run
        with send, receive:
            while True:
                try:
                    batch = await receive.receive()
                except EndOfStream:
                    return
                while True:
                    await run(batch)
                    if self.workers > self.target:
                        # configure() removed a slot: this one goes.
                        self.workers -= 1
                        engine.scheduler.slot_freed()
                        return
                    ready = self.ready
                    if ready is None:
                        break
                    if ready.live == 0:
                        self.ready = None
                        self.discard(ready)  # every caller left while it waited
                        break
                    if not engine.scheduler.may_start_ready():
                        break  # held, a trial batch, or no device slot: the scheduler starts it
                    self.ready = None
                    engine.scheduler.slot_freed()  # it may form the next one now
                    self.begin(ready, engine.clock())
                    batch = ready
                self._idle.append(send)
                engine.scheduler.slot_freed()
