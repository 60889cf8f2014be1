"""
The scheduler: one task per scope that turns pending items into batches.

It receives items from the scope's memory channel into a pool (the batching policy) and,
whenever a slot (``_slots``: a persistent worker task) is free, hands it the batch the pool
says is due: a full batch at once, a partial one when its oldest item has waited
``max_wait``, everything when the scope is closing. Dispatch is pull-based: while every
slot is busy the scheduler does not look at the clock at all, items simply accumulate and
the next batch is larger; only once they fill a batch does it form that batch, ready for
the first slot that frees (device first: see ``_slots``).

It waits in exactly one place: receiving from the channel, under a cancel scope only when
a partial batch will come due (its timer). Arrivals that cannot change what is due (every
slot busy, or one more item for a partial batch already timed) only join the pool; it
looks again when one can. A running batch that frees a slot, or new options, wake it
with a poke through the same channel (:data:`POKE`, never a live item), which costs a
fraction of a cancellation. An idle scope waits in ``receive()`` with no
deadline, and nothing wakes it until an item arrives. Once the scope is closing (the
channel closed), it waits under a cancel scope that a freed slot cancels.

It also keeps :class:`RunTimeModel`, a least-squares fit of batch run time against batch
load over recent batches: callers' deadlines are judged against it, and
``max_wait="auto"`` waits as long as a full batch still meets ``target_latency``.

Deadlines hold on a real loop, whose timers fire late (by a millisecond on an idle
asyncio loop, by several when threads hold the GIL):

* A partial batch leaves ``lead`` before the soonest deadline: the estimated run time,
  plus the larger of half of it (its variance) and :data:`TIMER_SLACK`, plus how late
  this scheduler's own timers have been firing (a decaying maximum of the lateness it
  measures each time a timer wakes it, 0 on a virtual clock), and by ``DEADLINE_SHARE``
  of that caller's time (``_pending``), for the stalls nothing measured predicts.
* An item is left out of a batch only when its caller cannot be served in time even if
  dispatched now, judged by the run time the last two batches confirm
  (:meth:`RunTimeModel.confirmed`): the untimed default and one slow batch (a cold
  start) leave nobody out. The item whose deadline released the batch is in it, and
  items left out for the estimate still run when they are all there is (see
  ``_pending``). Items set aside go back to the pool as soon as the confirmed estimate
  says they can make it after all (a faster batch ran).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import attrs
from anyio import EndOfStream, WouldBlock

from ._items import EXPIRED, QUEUED, WITHDRAWN, Item
from ._pending import Limits, Pool, Release
from ._runtime import RunTimeModel
from ._slots import Slots

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._device import DeviceClient
    from ._engine import Engine
    from ._executor import Batch, Executor

__all__ = ["LATENESS_DECAY", "TIMER_SLACK", "Scheduler"]

In = TypeVar("In")
Out = TypeVar("Out")


class _Poke(Item[Any, Any]):
    """
    What :meth:`Scheduler.wake` sends through the channel: an item that is never live.

    Its state is WITHDRAWN from the start, so whoever takes it from the channel passes
    over it, as over any item withdrawn while queued.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(None, 0, 0.0, 0.0, math.inf, None)
        self.state = WITHDRAWN

    def notify(self) -> None:  # pragma: no cover - never live, never ended
        raise AssertionError("the scheduler's poke is not an item")


POKE = _Poke()

#: The least margin a deadline release leaves for the scheduler's timer firing late and the
#: result reaching its caller, on top of the measured lateness (1 ms: what an idle asyncio
#: loop adds by rounding its poll timeout up to the millisecond).
TIMER_SLACK = 0.001
#: Each measured timer lateness replaces the running maximum if larger; otherwise the
#: maximum shrinks by this factor: one spike (a GC pause) is forgotten over a few dozen
#: timers, a loop that stays slow keeps it.
LATENESS_DECAY = 0.9


class Scheduler(Generic[In, Out]):
    """Forms batches from the pool and hands them to the executor."""

    def __init__(
        self,
        engine: Engine[In, Out],
        send: MemoryObjectSendStream[Item[In, Out]],
        receive: MemoryObjectReceiveStream[Item[In, Out]],
        pool: Pool,
        executor: Executor[In, Out],
    ) -> None:
        self._engine = engine
        self._receive = receive
        self.pool = pool
        self._executor = executor
        self._send = send
        #: The batch workers, and the batch formed ahead for the first that frees.
        self.slots: Slots[In, Out] = Slots(engine)
        #: Whether the next arrival that fills a batch should wake it (to form it ahead).
        self._preform = False
        #: Whether this scope forms a full batch ahead at all: not with length buckets
        #: (a batch formed from the first full count of items pads more than one chosen
        #: when a slot frees from everything pooled by then), nor with partitions (the
        #: pool's live count spans every partition, so it says nothing of a full batch).
        config = engine.config
        self._preforms: bool = config.policy != "length" and config.partition is None
        #: The draining scheduler's wait (a poke cannot reach it: the channel is closed).
        self._wait_scope: anyio.CancelScope | None = None
        self._receiving = False
        self._poked = False
        self._waiting_for_slot = False
        #: Items set aside because their caller will give up before a batch could finish
        #: (see _pending), each with whether its deadline was already seen passed.
        self._limbo: dict[Item[In, Out], bool] = {}
        self.model: RunTimeModel = RunTimeModel()
        #: How late the scheduler's timers fire: a decaying maximum (see LATENESS_DECAY).
        self.lateness: float = 0.0

    def _full_load(self, mean_cost: float, size: int) -> float:
        """The load of a full batch of at most *size* items."""
        config = self._engine.config
        if config.cost is None:
            return float(size)
        return config.max_batch_cost or size * mean_cost

    def _limits(self) -> Limits:
        config = self._engine.config
        pool = self.pool
        model = self.model
        mean_cost = pool.pending_cost / pool.live if pool.live else 1.0
        # The adaptive size (or max_batch_size), within the largest preferred size.
        size = min(self._engine.sizer.size(config, model, mean_cost), config.batch_cap)
        self._engine.recorder.batch_size_cap = size
        if config.cost is None:
            next_load = float(min(pool.live, size) or 1)
        else:
            next_load = min(pool.live, size) * mean_cost or 1.0
        if config.max_wait == "auto":
            assert config.target_latency is not None
            wait = max(0.0, config.target_latency - model.predict(self._full_load(mean_cost, size)))
        else:
            wait = config.max_wait
        runtime = model.predict(next_load)
        lead = confirmed = 0.0
        if pool.earliest_deadline() != math.inf:
            lead = runtime + max(0.5 * runtime, TIMER_SLACK) + self.lateness
            confirmed = model.confirmed(next_load)
        return Limits(
            max_batch_size=size,
            wait=wait,
            max_batch_cost=config.max_batch_cost,
            padded=config.cost_mode == "padded",
            runtime=runtime,
            lead=lead,
            confirmed=confirmed,
            preferred=config.preferred_batch_sizes or (),
        )

    def wake(self) -> None:
        """Make the scheduler look again (the options changed)."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        elif self._receiving and not self._poked:
            # Waiting for items: a poke through the channel wakes it without the cost
            # of a cancellation (an exception through the whole wait).
            self._poked = True
            try:
                self._send.send_nowait(POKE)
            except anyio.ClosedResourceError:
                pass  # the scope is closing: the end of the stream wakes it

    def slot_freed(self) -> None:
        """A slot freed (or took the ready batch): wake the scheduler if it waits for one."""
        if self._waiting_for_slot:
            self.wake()

    # -- the shared device (only for scopes built with device=) ----------------------------

    def _next_load(self, limits: Limits, now: float, draining: bool) -> float:
        """The load of the batch due now, or 0.0 when none is (checked without taking it)."""
        pool = self.pool
        if not pool.live:
            return 0.0
        if not (draining or self._full(limits) or pool.due_at(limits) <= now):
            return 0.0
        return self._pending_load(limits)

    def _pending_load(self, limits: Limits) -> float:
        """The load of the batch the pool would release next (its pending items, capped)."""
        pool = self.pool
        size = min(pool.live, limits.max_batch_size)
        if self._engine.config.cost is None:
            return float(size)
        load = size * pool.pending_cost / pool.live
        if limits.max_batch_cost is not None:
            load = min(load, limits.max_batch_cost)
        return load or 1.0

    def _ask_device(self, device: DeviceClient, limits: Limits, now: float, draining: bool) -> bool:
        """No device slot: ask for one if a batch is due; True when it asked."""
        load = self._next_load(limits, now, draining)
        if load:
            device.ask(load, now)
        return bool(load)

    def device_due(self) -> float:
        """
        The load of the batch this scope would dispatch now if its device gave it a slot,
        or 0.0: asked by the device when a slot frees, so a batch whose timer fires in that
        instant (before this scheduler has run to ask) is not passed over.
        """
        if not self._could_run():
            return 0.0
        return self._next_load(self._limits(), self._engine.clock(), False)

    def device_upcoming(self) -> tuple[float, float]:
        """
        When the batch pending in this scope comes due (its timer or a caller's
        deadline; now, if it is due or full) and its load; ``(inf, 0.0)`` when none is
        pending or the scope could not run one now. Asked by the device when it grants a
        slot, to pull forward a batch that would come due while the granted one runs
        (lookahead, see ``_device``).
        """
        if not self._could_run():
            return math.inf, 0.0
        limits = self._limits()
        now = self._engine.clock()
        due = now if self._full(limits) else self.pool.due_at(limits)
        return due, self._pending_load(limits)

    def _could_run(self) -> bool:
        """Whether the scope has items pending and could dispatch a batch of them now."""
        engine = self._engine
        limit = engine.config.max_concurrent_batches
        if engine.breaker is not None and engine.breaker.half_open:
            limit = 1
        return not (
            not self.pool.live
            or engine.recorder.in_flight >= limit
            or engine.failure is not None
            or engine.task_group.cancel_scope.cancel_called
            or self._held()
        )

    def device_slot_freed(self, seconds: float) -> None:
        """
        A batch of this scope that held a device slot for *seconds* ended: if another
        batch is due, ask for a slot first (still backlogged, the scope takes its turn),
        then free the slot for the device to choose.
        """
        device = self._engine.device
        assert device is not None
        engine = self._engine
        ready = self.slots.ready
        if ready is not None and ready.live:
            # The batch formed ahead is next: the slot that frees starts it if chosen.
            device.ask(ready.load, engine.clock(), choose=False)
        elif self.pool.live and engine.recorder.in_flight < engine.config.max_concurrent_batches:
            now = engine.clock()
            load = self._next_load(self._limits(), now, False)
            if load:
                device.ask(load, now, choose=False)
        device.release(seconds)

    def may_start_ready(self) -> bool:
        """
        Whether a slot whose batch ended may start the batch formed ahead now: no pause
        ("slow down") holds dispatch, no half-open breaker's trial batch runs, and the
        shared device (if any) has a slot for this scope. Otherwise the scheduler starts
        it once it may.
        """
        engine = self._engine
        if self._held():
            return False
        breaker = engine.breaker
        if breaker is not None and breaker.half_open and engine.recorder.in_flight >= 1:
            return False
        return engine.device is None or engine.device.may_run()

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
        engine = self._engine
        pool = self.pool
        receive = self._receive
        recorder = engine.recorder
        draining = False
        limbo = self._limbo
        slots = self.slots
        with receive:
            while True:
                if engine.failure is not None or task_group.cancel_scope.cancel_called:
                    # The scope is failing (a crash, or the body raised): dispatch nothing
                    # more, whatever woke us; our own cancellation is on its way.
                    await anyio.sleep_forever()
                if not draining:
                    draining = self._pull()
                slots_wanted = engine.config.max_concurrent_batches
                if slots.target != slots_wanted:
                    slots.resize(task_group, slots_wanted)
                limit = slots_wanted
                half_open = engine.breaker is not None and engine.breaker.half_open
                if half_open:
                    limit = 1  # one trial batch at a time
                # Only a pool with items needs limits (an empty one is never due).
                limits = self._limits() if pool.live else None
                device = engine.device
                on_device = False  # waiting for a slot of the shared device
                held = (limits is not None or slots.ready is not None) and self._held()
                if held:
                    limit = 0  # an upstream said "slow down": dispatch nothing until then
                if (limits is not None or slots.ready is not None) and (
                    recorder.in_flight < limit and slots.idle
                ):
                    now = engine.clock()
                    while recorder.in_flight < limit and slots.idle:
                        # The batch formed ahead goes first (a slot freed that could not
                        # start it, one was added, or the device chose this scope since).
                        ready = slots.ready
                        if ready is not None and ready.live == 0:
                            slots.ready = None
                            slots.discard(ready)  # it never reaches fn
                            continue
                        if device is not None and not device.may_run():
                            if ready is not None:
                                device.ask(ready.load, now)
                                asked = True
                            else:
                                asked = limits is not None and self._ask_device(
                                    device, limits, now, draining
                                )
                            if not device.may_run():  # not chosen at once
                                on_device = asked
                                break
                        if ready is not None:
                            slots.hand(ready)
                            slots.ready = None
                            continue
                        if limits is None:
                            break
                        if device is not None and device.early:
                            # The device pulled this scope's pending batch forward: it
                            # would come due while another scope's batch runs (lookahead).
                            taken = self._take(now, attrs.evolve(limits, early=True), draining)
                        else:
                            taken = self._take(now, limits, draining)
                        if taken is None:
                            break
                        slots.hand(self._form(taken[0], taken[1], now))
                if device is not None and device.held:
                    device.decline()  # chosen, with nothing due after all (callers left)
                busy = recorder.in_flight >= limit or not slots.idle
                # Every slot busy: form a full batch now, for the first slot that frees (its
                # device slot, with a shared device, is claimed only when it starts).
                # Not while the batch size adapts (``"auto"``, the out-of-memory back-off):
                # the cap moves with each batch's outcome, so a batch formed before the
                # running one ends would be sized by the cap it ends with.
                config = engine.config
                preform = (
                    busy
                    and slots.ready is None
                    and not held
                    and not half_open
                    and self._preforms
                    and config.max_batch_size != "auto"
                    and not config.oom_errors
                )
                if preform and limits is not None and self._full(limits):
                    now = engine.clock()
                    if limits.confirmed:
                        # It starts when a running batch ends, not now: its callers'
                        # deadlines are judged from then.
                        limits = attrs.evolve(
                            limits, confirmed=limits.confirmed + self._until_slot_frees(now)
                        )
                    taken = self._take(now, limits, draining)
                    if taken is not None:
                        slots.hold(self._form(taken[0], taken[1], now))
                    preform = False
                    limits = self._limits() if pool.live else None
                if draining and not pool.live and not limbo and slots.ready is None:
                    slots.resize(None, 0)  # each worker ends once its batch has
                    return

                # While every slot is busy, a finished batch wakes us: no timer. So does
                # the shared device when it chooses us; a pause ("slow down") ends on its
                # own timer.
                if limits is None or busy or on_device:
                    due = math.inf if limit or on_device else engine.paused_until
                else:
                    due = pool.due_at(limits)
                if limbo:
                    due = min(due, min(item.deadline for item in limbo))
                self._waiting_for_slot = busy or on_device
                self._preform = preform
                # Measure how late the timer fires (one clock read before and one after a
                # timed wait; none when there is no timer).
                armed = engine.clock() if due != math.inf else math.inf
                try:
                    if draining:
                        with anyio.CancelScope(deadline=due) as wait_scope:
                            self._wait_scope = wait_scope
                            await anyio.sleep_forever()
                    else:
                        # Keep receiving even while every slot is busy, so withdrawn
                        # items never pile up in the channel. A poke (wake()) arrives
                        # the same way; a cancel scope is needed only for a timer.
                        self._receiving = True
                        if due == math.inf:
                            await self._gather()
                        else:
                            with anyio.CancelScope(deadline=due):
                                await self._gather()
                except EndOfStream:
                    draining = True
                finally:
                    self._wait_scope = None
                    self._receiving = self._poked = self._waiting_for_slot = False
                    self._preform = False
                recorder.scheduler_wakeups += 1
                if armed < due:
                    late = engine.clock() - due
                    if late >= 0.0:
                        self.lateness = max(late, self.lateness * LATENESS_DECAY)
                if limbo:
                    self._revive(limbo)

    def _held(self) -> bool:
        """Whether dispatch is held for an upstream's ``retry_after`` (see _admission)."""
        engine = self._engine
        until = engine.paused_until
        if until == -math.inf:
            return False
        if until > engine.clock():
            return True
        engine.paused_until = -math.inf
        return False

    async def _gather(self) -> None:
        """
        Receive arrivals into the pool until one may change what is due (or a poke).

        While every slot is busy nothing can be due: everything is gathered until a freed
        slot pokes, or until the pool fills a batch while none is formed ahead. Otherwise
        an arrival that starts a pool, fills a batch or carries a deadline sends the
        scheduler back to look, as does every arrival when items have a cost or a pooled
        caller has a deadline (the limits then move with each); any
        other only joins the pool, under the same timer. Per arrival that is one receive,
        not a pass of the scheduler and a new timer.
        """
        receive = self._receive
        pool = self.pool
        config = self._engine.config
        size = self._engine.recorder.batch_size_cap
        preform = self._preform
        max_cost = config.max_batch_cost
        # With a cost, or a caller's deadline in the pool, the limits (and the run time
        # a deadline is judged against) move with every arrival.
        every_arrival_counts = (
            config.cost is not None or not pool.live or pool.earliest_deadline() != math.inf
        )
        while True:
            item = await receive.receive()
            while True:
                if item is POKE:
                    return
                if item.state == QUEUED:  # not withdrawn while in the channel
                    pool.add(item)
                    if not self._waiting_for_slot:
                        if every_arrival_counts or pool.live >= size or item.deadline != math.inf:
                            return
                    elif preform and (
                        pool.live >= size
                        or (max_cost is not None and pool.pending_cost >= max_cost)
                    ):
                        return
                try:
                    item = receive.receive_nowait()
                except WouldBlock:
                    break

    def revive_now(self, item: Item[In, Out]) -> None:
        """A caller with a later deadline joined a set-aside item: back to the pool now."""
        if item.state == EXPIRED:
            self._limbo.pop(item, None)
            self.pool.add(item)
            self.wake()

    def _revive(self, limbo: dict[Item[In, Out], bool]) -> None:
        """
        Items set aside whose caller did not leave after all go back to the pool.

        A caller is given until its deadline, and then one more scheduler pass for its
        cancellation to arrive; still waiting after that, its deadline must have moved
        (or been shielded), so its item runs after all, with no deadline: nobody hangs.
        An item set aside for the estimate goes back, deadline and all, as soon as the
        confirmed run time of a full batch leaves it time (a faster batch ran since).
        """
        now = self._engine.clock()
        confirmed: float | None = None
        for item, seen_passed in list(limbo.items()):
            if item.state != EXPIRED:
                del limbo[item]  # withdrawn by its caller, as expected
            elif item.deadline <= now:
                if seen_passed:
                    del limbo[item]
                    item.deadline = math.inf
                    self.pool.add(item)
                else:
                    limbo[item] = True
            else:
                if confirmed is None:
                    pool = self.pool
                    mean_cost = pool.pending_cost / pool.live if pool.live else item.cost
                    size = self._engine.recorder.batch_size_cap
                    confirmed = self.model.confirmed(self._full_load(mean_cost, size))
                if item.deadline >= now + confirmed:
                    del limbo[item]
                    self.pool.add(item)

    def _until_slot_frees(self, now: float) -> float:
        """
        How long until the first running batch ends, by the run time recent batches
        confirm (0.0 if one is overdue): when a batch formed ahead now would start.
        """
        model = self.model
        ends = math.inf
        for batch in self._executor.running:
            if batch.began is not None:
                ends = min(ends, batch.began + model.confirmed(batch.load))
        return max(0.0, ends - now) if ends != math.inf else 0.0

    def _full(self, limits: Limits) -> bool:
        """Whether the pool holds at least a full batch (by size, or by cost)."""
        pool = self.pool
        if pool.live >= limits.max_batch_size:
            return True
        return limits.max_batch_cost is not None and pool.pending_cost >= limits.max_batch_cost

    def _take(
        self, now: float, limits: Limits, draining: bool
    ) -> tuple[list[Item[In, Out]], Release] | None:
        """The batch the pool says is due now, if any; items it set aside go to limbo."""
        pool = self.pool
        taken = pool.take(now, limits, draining)
        if pool.expired:
            self._limbo.update(dict.fromkeys(pool.expired, False))
            pool.expired.clear()
        return taken

    def _form(self, items: list[Item[In, Out]], reason: Release, now: float) -> Batch[In, Out]:
        """Make *items* a batch: out of the queue, their callers running."""
        engine = self._engine
        recorder = engine.recorder
        size = len(items)
        callers = size if engine.front is None else sum(item.waiters for item in items)
        recorder.pending -= callers
        recorder.running += callers
        real = 0.0
        highest = 0.0
        config = engine.config
        if config.cost is None:
            load = float(size)
        else:
            for item in items:
                cost = item.cost
                real += cost
                if cost > highest:
                    highest = cost
            load = size * highest if config.cost_mode == "padded" else real
            recorder.real_cost += real
            recorder.padded_cost += load
        engine.room.release(size)
        return self._executor.form(items, load, reason)

    def fail_waiting(self, error: BaseException) -> int:
        """End every item still queued or pooled with *error*; return how many."""
        failed = 0
        ready = self.slots.take_ready()
        if ready is not None:
            self._executor.running.discard(ready)
            self._executor.fail_all(ready.items, error)
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
            failed += item.waiters
        return failed
