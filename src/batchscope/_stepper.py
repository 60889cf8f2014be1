"""
Continuous batching's engine: the rows, and the task that steps them.

One :class:`Stepper` task per :class:`~batchscope.ContinuousScope` calls the step function
over the *active* rows again and again. Between two steps it takes in arrivals from the
scope's channel, lets waiting items join (the pools of ``_pending``/``_bucketing`` choose
which, under ``max_active`` and the cost budget on active rows) and drops the rows that
ended or whose caller left. A row's life, as its :class:`RowItem` state::

    QUEUED ──► POOLED ──► RUNNING ──► DONE        (END, or an exception)
       │        │  │         └──────► ABANDONED   (its caller left)
       │        │  └─► HELD ─┘                    (next in line, waiting for cost budget)
       └────────┴─────────────────► WITHDRAWN     (its caller left before joining)

(EXPIRED, as in ``_pending``: set aside by the pool because its caller cannot see even its
first output in time, its deadline being past or nearer than the step time recent steps
confirm; withdrawn by that caller's cancellation, or back in the pool a round later: with
no deadline once it has passed, as its caller is still there.)

Each row's outputs go to its caller through a bounded memory-object channel of its own.
A row whose buffer is full sits out the steps (it keeps its place and state) until its
caller reads. When nothing is to be stepped the task parks on the scope's channel: an
arrival, or a ``None`` token that :meth:`Stepper.wake` sends only while it is parked (a
caller left, a paused row was read, the scope closes), wakes it. It never polls.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Awaitable, Callable, MutableSequence, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, final

import anyio
import anyio.lowlevel

from ._continuous_values import ContinuousConfig, ContinuousRecorder
from ._durations import check_priority, checked_cost
from ._exceptions import BatchSizeMismatchError
from ._hooks import HookRunner, StepFinished, StepStarted
from ._items import ABANDONED, EXPIRED, POOLED, QUEUED, RUNNING, WITHDRAWN, Item
from ._lifecycle import ScopeState, not_open_error, reject, wait_or_refuse
from ._markers import End
from ._pending import Limits, Pool
from ._room import Room
from ._runtime import RunTimeModel

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["HELD", "Row", "RowItem", "StepFunction", "Stepper"]

In = TypeVar("In")
Out = TypeVar("Out")

#: A row state of continuous batching only: taken from the pool as next in line, it waits
#: for room in the cost budget of the active rows (nothing overtakes it).
HELD = 8
#: Join waits a full queue's ``retry_after`` is the median of (the most recent ones).
JOIN_ESTIMATE_SAMPLES = 16


@final
class Row(Generic[In]):
    """
    The step function's handle on one active row.

    The same object is passed to every step the row takes, so ``state`` carries whatever
    the step function keeps for it (a KV-cache slot, the tokens so far).

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_record", "index", "item", "new", "state", "steps")

    def __init__(self, item: In, index: int, record: RowItem[In, Any]) -> None:
        #: The submitted item (say, the prompt).
        self.item: In = item
        #: True on the row's first step (prefill), False after (decode).
        self.new: bool = True
        #: Free for the step function: starts as None, kept between steps.
        self.state: Any = None
        #: Join order: 0 for the first row to join the scope, then 1, 2, ...
        self.index: int = index
        #: Steps this row has taken before the current one.
        self.steps: int = 0
        self._record = record

    @property
    def alive(self) -> bool:
        """Whether the row's caller still waits for it (False once it left)."""
        return self._record.state == RUNNING

    def __repr__(self) -> str:
        return f"<Row {self.index} steps={self.steps} new={self.new} item={self.item!r}>"


class RowItem(Item[In, Out]):
    """
    One submitted item of a continuous scope: the pools' record, the row, its channel.

    Ending it (``succeed``/``fail``) closes its output channel: the caller reads what is
    buffered, then sees the end (or the error).
    """

    __slots__ = ("last_output", "row", "send")

    def __init__(
        self,
        value: In,
        priority: float,
        cost: float,
        arrival: float,
        deadline: float,
        send: MemoryObjectSendStream[Out],
    ) -> None:
        super().__init__(value, priority, cost, arrival, deadline, None)
        #: The send end of this row's output channel.
        self.send: MemoryObjectSendStream[Out] = send
        #: The handle steps get (made when the row joins).
        self.row: Row[In] | None = None
        #: When the row's last output was sent (``nan`` before the first).
        self.last_output: float = math.nan

    def notify(self) -> None:
        self.send.close()


#: ``step(rows) -> one output per row``: a value, ``bs.END``, or an exception instance.
StepFunction = Callable[[list[Row[In]]], Awaitable[Sequence[Out | End | Exception]]]


class Stepper(Generic[In, Out]):
    """The task stepping one scope's active rows, and the rows' bookkeeping."""

    def __init__(
        self,
        step: StepFunction[In, Out],
        config: ContinuousConfig,
        pool: Pool,
        hooks: HookRunner | None = None,
    ) -> None:
        self.step = step
        self.config = config
        self.pool = pool
        #: The hooks, or None: then no event is built (one ``if`` per step).
        self.hooks: HookRunner | None = hooks
        #: With hooks: the join waits of the rows that joined since the last step.
        self.join_waits: list[float] = []
        #: The step function's name, for messages.
        self.name: str = getattr(step, "__qualname__", None) or type(step).__name__
        self.recorder: ContinuousRecorder = ContinuousRecorder()
        self.state: ScopeState = ScopeState.NEW
        #: What broke the scope (a crash, or the body's exception), or None.
        self.failure: BaseException | None = None
        # -- set by open(): they belong to the running event loop --------------------------
        self.room: Room
        self.send: MemoryObjectSendStream[RowItem[In, Out] | None]
        self.receive: MemoryObjectReceiveStream[RowItem[In, Out] | None]
        #: Rows in the running batch, in join order (ended ones leave at the next round).
        self.active: list[RowItem[In, Out]] = []
        self.active_cost: float = 0.0
        #: The next row in line, waiting for cost budget (state HELD), or None.
        self.held: RowItem[In, Out] | None = None
        #: Items the pool set aside as EXPIRED.
        self.expired: list[Item[Any, Any]] = []
        self._parked = False
        self._woken = False
        self._joined = 0
        #: Step time against active rows, fitted as the scheduler fits batch run time:
        #: the joining judges callers' deadlines by the step time it confirms.
        self._model = RunTimeModel()

    def open(self) -> None:
        """Make the room in the queue and the channel (the scope is opening)."""
        self.room = Room(self.config.max_queue_size)
        self.send, self.receive = anyio.create_memory_object_stream[RowItem[In, Out] | None](
            math.inf
        )
        self.state = ScopeState.OPEN

    def describe(self) -> str:
        """How messages name the scope: ``<ContinuousScope step state>``."""
        return f"<ContinuousScope {self.name} {self.state.value}>"

    def closed_now(self) -> Exception:
        """The error for callers of a closed (or failed, or never opened) scope."""
        return not_open_error(self.state, self.describe(), self.failure, "ContinuousScope(step)")

    # -- the callers' side ---------------------------------------------------------------

    async def admit(
        self, value: In, priority: float
    ) -> tuple[RowItem[In, Out], MemoryObjectReceiveStream[Out]]:
        """Count a submit, price it, take room in the queue, queue it; its output channel."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        check_priority(priority)
        if self.state is not ScopeState.OPEN:
            raise self.closed_now()
        recorder = self.recorder
        recorder.submitted += 1
        cost = 1.0 if self.config.cost is None else self._cost_of(value, self.config.cost)
        if not self.room.take_nowait():
            await wait_or_refuse(self, self._join_estimate, "waiting")
        send, receive = anyio.create_memory_object_stream[Out](self.config.max_buffered)
        item = RowItem(
            value, priority, cost, anyio.current_time(), anyio.current_effective_deadline(), send
        )
        recorder.pending += 1
        self.send.send_nowait(item)
        return item, receive

    def _join_estimate(self) -> float:
        """
        A full queue's ``retry_after``: how long recent items waited to join (the median
        of the last few join waits), 0.0 before any joined.
        """
        waits = self.recorder.join_waits
        if not waits:
            return 0.0
        return statistics.median_high(itertools.islice(reversed(waits), JOIN_ESTIMATE_SAMPLES))

    def _cost_of(self, value: In, cost_fn: Callable[[In], float]) -> float:
        try:
            return checked_cost(value, cost_fn)
        except Exception:
            reject(self.recorder, self.hooks, "bad_cost")
            raise

    # -- synchronous, from the callers' tasks ----------------------------------------------

    def wake(self) -> None:
        """Wake the task if it is parked (at most one token in the channel)."""
        if self._parked and not self._woken and self.state is not ScopeState.CLOSED:
            self._woken = True
            self.send.send_nowait(None)

    def leave(self, item: RowItem[In, Out]) -> None:
        """The caller of *item* left: withdraw it, or free its row before the next step."""
        state = item.state
        recorder = self.recorder
        if state in (QUEUED, POOLED, EXPIRED, HELD):
            recorder.pending -= 1
            recorder.cancelled += 1
            if state == POOLED:
                self.pool.discard(item)
            elif state == HELD:
                self.held = None
            item.state = WITHDRAWN
            self.room.release()
        elif state == RUNNING:
            recorder.active -= 1
            recorder.cancelled += 1
            recorder.rows_abandoned += 1
            item.state = ABANDONED
        else:
            return
        item.send.close()
        if self.hooks is not None:
            self.hooks.call("item_cancelled", state == RUNNING)
        self.wake()

    # -- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        """Step the active rows while there are any; park when there are none; drain."""
        receive = self.receive
        while True:
            self._pull()
            self._reinstate()
            self._round()
            rows = self._ready()
            if rows:
                await self._step(rows)
                continue
            if self.state is not ScopeState.OPEN and self._drained():
                return
            self._parked = True
            token: RowItem[In, Out] | None = None
            try:
                if self.expired:
                    # Their callers cannot be served in time: give the cancellations
                    # until the soonest deadline (and a moment) to withdraw them, then
                    # put back whoever is still there.
                    soonest = min(item.deadline for item in self.expired)
                    with anyio.move_on_after(max(0.001, soonest - anyio.current_time())):
                        token = await receive.receive()
                else:
                    token = await receive.receive()
            finally:
                self._parked = False
                self._woken = False
            if token is not None:
                self._arrive(token)

    def _drained(self) -> bool:
        return not (self.active or self.held or self.pool.live or self.expired)

    def _pull(self) -> None:
        """Take every arrival waiting in the channel into the pool."""
        receive = self.receive
        while True:
            try:
                item = receive.receive_nowait()
            except anyio.WouldBlock:
                return
            if item is not None:
                self._arrive(item)

    def _arrive(self, item: RowItem[In, Out]) -> None:
        if item.state == QUEUED:  # else withdrawn by its caller on the way
            self.pool.add(item)

    def _reinstate(self) -> None:
        """
        Put back expired items whose callers are still there: with no deadline once it
        has passed (it was moved), else with it (judged again: the steps may be faster).
        """
        if self.expired:
            expired, self.expired = self.expired, []
            now = anyio.current_time()
            for item in expired:
                if item.state == EXPIRED:
                    if item.deadline <= now:
                        item.deadline = math.inf
                    self.pool.add(item)

    def _round(self) -> None:
        """Between two steps: ended rows leave, waiting items join."""
        active = self.active
        if any(item.state != RUNNING for item in active):
            self.active = active = [item for item in active if item.state == RUNNING]
            self.active_cost = math.fsum(item.cost for item in active)
        config = self.config
        budget = config.max_active_cost
        free = config.max_active - len(active)
        now = anyio.current_time()
        pool = self.pool
        # A caller whose deadline comes before one step could give it its first output
        # takes no place while others wait (``PoolBase._fill``): judged by the least step
        # it could join (the active rows and itself); 0 until two steps ran.
        confirmed = self._model.confirmed(len(active) + 1)
        while free > 0:
            held = self.held
            if held is not None:
                if budget is not None and active and self.active_cost + held.cost > budget:
                    return
                self.held = None
                self._join(held, now)
                free -= 1
                continue
            if not pool.live:
                return
            remaining = None if budget is None else budget - self.active_cost
            limits = Limits(
                max_batch_size=free,
                wait=0.0,
                max_batch_cost=remaining,
                padded=False,
                runtime=0.0,
                confirmed=confirmed,
            )
            taken = pool.take(now, limits, False)
            if pool.expired:
                self.expired.extend(pool.expired)
                pool.expired.clear()
            if taken is None:
                return
            for item in taken[0]:
                row_item: RowItem[In, Out] = item  # type: ignore[assignment]
                if budget is not None and active and self.active_cost + item.cost > budget:
                    row_item.state = HELD  # the budget's first item: next in line
                    self.held = row_item
                else:
                    self._join(row_item, now)
                    free -= 1

    def _join(self, item: RowItem[In, Out], now: float) -> None:
        item.state = RUNNING
        item.row = Row(item.value, self._joined, item)
        self._joined += 1
        self.active.append(item)
        self.active_cost += item.cost
        self.room.release()
        recorder = self.recorder
        recorder.pending -= 1
        recorder.active += 1
        recorder.join_waits.append(now - item.arrival)
        if self.hooks is not None:
            self.join_waits.append(now - item.arrival)

    def _ready(self) -> list[RowItem[In, Out]]:
        """The active rows whose callers have room for one more output."""
        limit = self.config.max_buffered
        return [
            item
            for item in self.active
            if item.state == RUNNING and item.send.statistics().current_buffer_used < limit
        ]

    async def _step(self, items: list[RowItem[In, Out]]) -> None:
        """Call the step function once over *items* and route its outputs."""
        hooks = self.hooks
        if hooks is None:
            raised, outputs = await self._call(items)
            self._route(
                items, raised, outputs, self.recorder.first_outputs, self.recorder.between_outputs
            )
        else:
            await self._observed(items, hooks)

    async def _observed(self, items: list[RowItem[In, Out]], hooks: HookRunner) -> None:
        """:meth:`_step` with ``step_started`` and ``step_finished`` around it."""
        recorder = self.recorder
        started = StepStarted(
            rows=len(items),
            new_rows=sum(1 for item in items if item.row is not None and item.row.new),
            active=len(self.active),
            active_cost=self.active_cost,
            pending=recorder.pending,
            join_waits=tuple(self.join_waits),
        )
        self.join_waits.clear()
        hooks.call("step_started", started)
        begun = anyio.current_time()
        raised, outputs = await self._call(items)
        seconds = anyio.current_time() - begun
        before = (recorder.outputs, recorder.rows_finished, recorder.rows_failed)
        first: list[float] = []
        between: list[float] = []
        self._route(items, raised, outputs, first, between)
        recorder.first_outputs.extend(first)
        recorder.between_outputs.extend(between)
        finished = StepFinished(
            started=started,
            seconds=seconds,
            outputs=recorder.outputs - before[0],
            finished=recorder.rows_finished - before[1],
            failed=recorder.rows_failed - before[2],
            abandoned=sum(1 for item in items if item.state == ABANDONED),
            first_outputs=tuple(first),
            between_outputs=tuple(between),
        )
        hooks.call("step_finished", finished)

    async def _call(self, items: list[RowItem[In, Out]]) -> tuple[bool, object]:
        """Count a step and call the step function: (whether it raised, its result)."""
        recorder = self.recorder
        recorder.steps += 1
        recorder.stepped_rows += len(items)
        recorder.sizes[len(items)] += 1
        rows = [item.row for item in items]
        begun = anyio.current_time()
        try:
            outputs = cast(object, await self.step(rows))  # type: ignore[arg-type]
        except Exception as exc:
            self._advance(rows)
            return True, exc
        self._model.observe(len(rows), anyio.current_time() - begun)
        self._advance(rows)
        return False, outputs

    def _route(
        self,
        items: list[RowItem[In, Out]],
        raised: bool,
        outputs: object,
        first: MutableSequence[float],
        between: MutableSequence[float],
    ) -> None:
        """Send each output to its row's caller; end or fail rows; time the outputs."""
        if raised:
            for item in items:
                self._fail(item, cast(Exception, outputs))
            return
        if isinstance(outputs, (str, bytes)) or not isinstance(outputs, Sequence):
            kind = type(outputs).__name__
            error: Exception = TypeError(
                f"the step function must return a sequence (a list), got {kind}"
            )
            for item in items:
                self._fail(item, error)
            return
        results: Sequence[Any] = outputs  # pyright: ignore[reportUnknownVariableType]
        if len(results) != len(items):
            error = BatchSizeMismatchError(
                f"the step function returned {len(results)} outputs for {len(items)} rows"
            )
            for item in items:
                self._fail(item, error)
            return
        recorder = self.recorder
        now = anyio.current_time()
        for item, output in zip(items, results, strict=True):
            if item.state != RUNNING:
                continue  # its caller left during the step: the output is dropped
            if isinstance(output, End):
                recorder.active -= 1
                recorder.completed += 1
                recorder.rows_finished += 1
                item.succeed(None)  # type: ignore[arg-type]
            elif isinstance(output, Exception):
                self._fail(item, output)
            else:
                item.send.send_nowait(output)
                recorder.outputs += 1
                last = item.last_output
                if last != last:  # nan: the first output
                    first.append(now - item.arrival)
                else:
                    between.append(now - last)
                item.last_output = now

    @staticmethod
    def _advance(rows: list[Row[In] | None]) -> None:
        for row in rows:
            if row is not None:
                row.new = False
                row.steps += 1

    def _fail(self, item: RowItem[In, Out], error: BaseException) -> None:
        if item.state != RUNNING:
            return
        recorder = self.recorder
        recorder.active -= 1
        recorder.failed += 1
        recorder.rows_failed += 1
        item.fail(error)

    def fail_all(self, error: BaseException) -> None:
        """The scope failed: end every waiting and active row with *error*."""
        recorder = self.recorder
        waiting: list[Item[Any, Any]] = [*self.pool.clear(), *self.expired]
        self.expired = []
        if self.held is not None:
            waiting.append(self.held)
            self.held = None
        while True:
            try:
                arrived = self.receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            if arrived is not None:
                waiting.append(arrived)
        for item in waiting:
            if item.state in (QUEUED, POOLED, EXPIRED, HELD):
                recorder.pending -= 1
                recorder.failed += 1
                item.fail(error)
        for item in self.active:
            if item.state == RUNNING:
                recorder.active -= 1
                recorder.failed += 1
                recorder.rows_failed += 1
                item.fail(error)
        self.active = []
