"""
The continuous-batching façade: :class:`ContinuousScope` and a row's output stream.

The scope owns the lifetime (it opens the task group, starts the stepper, closes, drains
and aborts); the stepper (``_stepper``) does the rest.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar, final

import anyio
import anyio.lowlevel
from anyio import AsyncContextManagerMixin

from ._bucketing import LengthPool
from ._config import OnFull, Policy
from ._continuous_values import ContinuousConfig, ContinuousStatistics
from ._hooks import Hooks, RateLimitedLog, hook_runner
from ._lifecycle import ScopeState, closed_error, kept_failure, raise_single
from ._pending import FifoPool, Pool, PriorityPool
from ._stepper import RowItem, StepFunction, Stepper

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream

__all__ = ["ContinuousScope", "RowStream"]

In = TypeVar("In")
Out = TypeVar("Out")


@final
class ContinuousScope(AsyncContextManagerMixin, Generic[In, Out]):
    """
    Continuous (iteration-level) batching: rows join and leave a running batch.

    A task of the scope calls ``step`` over the *active* rows again and again, while any
    are active. Between two steps, waiting items join (up to ``max_active`` rows, and
    ``max_active_cost`` on their total cost) in the order ``policy`` picks, and rows that
    ended, failed or whose caller left are gone. Each caller streams its own row's
    outputs, in order::

        async def step(rows: list[bs.Row[str]]) -> list[str | bs.End]:
            ...  # one output per row: a value, bs.END (the row ends) or an exception

        async with bs.ContinuousScope(step, max_active=16) as scope:
            async for token in scope.stream(prompt):
                ...
            tokens = await scope.submit(prompt)

    ``step`` gets a list of :class:`Row` handles (``row.item`` is the submitted item,
    ``row.new`` is True on its first step, ``row.state`` is the step function's own,
    kept between steps) and returns one output per row, aligned: a value goes to that
    row's caller, :data:`END` ends the row, an ``Exception`` instance fails that row
    alone. If ``step`` raises an ``Exception``, every row of that step fails with it and
    the scope serves on; the wrong number of outputs fails them with
    :class:`BatchSizeMismatchError`. A ``BaseException`` from ``step`` fails every caller
    with :class:`ScopeClosedError` and propagates out of ``async with``.

    Each row's outputs wait for its caller in a buffer of ``max_buffered``; a row whose
    buffer is full sits out the steps (keeping its place and its state) until its caller
    reads: a slow reader slows only its own row.

    Args:
        step: ``async (rows) -> Sequence`` of one output per row.
        max_active: Most rows in the running batch.
        max_active_cost: Budget on the total ``cost`` of the active rows (for example the
            tokens of a KV cache); None for none. An item waiting for budget is next in
            line: nothing overtakes it. An item over the whole budget runs alone.
        cost: ``item -> number >= 0``, called once at submit; fixed for the row's life
            (budget its peak, say prompt plus most new tokens). Needed by
            ``max_active_cost`` and ``policy="length"``.
        policy: Which waiting items join first: ``"fifo"``, ``"length"`` (similar costs
            together) or ``"priority"`` (lower ``priority`` first, with aging).
        aging: Seconds of waiting worth one priority step (``policy="priority"``).
        max_queue_size: Bound on items waiting to join.
        on_full: ``"wait"``: a submit waits for room in the queue; ``"reject"``: it
            raises :class:`QueueFullError` at once (its ``retry_after``: how long
            recent items waited to join).
        max_buffered: Outputs one row may hold that its caller has not read.
        hooks: :class:`Hooks` (or a list of them) that receive the scope's events:
            ``continuous_opened``/``continuous_closed``, ``step_started``/``step_finished``
            (:class:`StepStarted`, :class:`StepFinished`), ``item_rejected`` and
            ``item_cancelled``. The exporters of :mod:`batchscope.metrics` are such hooks.
            A hook that raises is logged and ignored.

    Raises:
        TypeError: ``step`` is not callable, or an option has the wrong type.
        ValueError: An option is out of range (the message names it).

    .. versionadded:: 0.2.0
    """

    def __init__(
        self,
        step: StepFunction[In, Out],
        *,
        max_active: int = 16,
        max_active_cost: float | None = None,
        cost: Callable[[In], float] | None = None,
        policy: Policy = "fifo",
        aging: float | timedelta = 0.1,
        max_queue_size: int = 10_000,
        on_full: OnFull = "wait",
        max_buffered: int = 64,
        hooks: Hooks | Sequence[Hooks] | None = None,
    ) -> None:
        if not callable(step):
            raise TypeError(f"'step' must be an async function, not {type(step).__name__}")
        config = ContinuousConfig(
            max_active=max_active,
            max_active_cost=max_active_cost,
            cost=cost,
            policy=policy,
            aging=aging,
            max_queue_size=max_queue_size,
            on_full=on_full,
            max_buffered=max_buffered,
        )
        pool: Pool
        if config.policy == "length":
            pool = LengthPool()
        elif config.policy == "priority":
            pool = PriorityPool(config.aging)
        else:
            pool = FifoPool()
        runner = hook_runner(hooks, RateLimitedLog())
        self._stepper: Stepper[In, Out] = Stepper(step, config, pool, runner)
        self._task_group: TaskGroup | None = None

    def __repr__(self) -> str:
        return self._stepper.describe()

    @property
    def config(self) -> ContinuousConfig:
        """The validated options."""
        return self._stepper.config

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[ContinuousScope[In, Out], None]:
        stepper = self._stepper
        if stepper.state is not ScopeState.NEW:
            raise RuntimeError("a ContinuousScope can be opened only once; create a new one")
        stepper.open()
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(self._run, name=f"batchscope stepper of {self!r}")
                if stepper.hooks is not None:
                    stepper.hooks.call("continuous_opened", self)
                try:
                    yield self
                except BaseException as exc:
                    self._abort(exc)
                    raise
                self.close()
        except BaseExceptionGroup as group:
            # The stepper failed (step raised a BaseException).
            raise_single(group)
            raise
        finally:
            stepper.state = ScopeState.CLOSED
            stepper.send.close()
            stepper.receive.close()
            if stepper.hooks is not None:
                stepper.hooks.call("continuous_closed", self)

    async def _run(self) -> None:
        try:
            await self._stepper.run()
        except BaseException as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        """Keep *exc* as the failure (the first, not a cancellation); fail every row."""
        stepper = self._stepper
        stepper.failure = kept_failure(stepper.failure, exc)
        self.close()
        stepper.fail_all(closed_error(stepper.describe(), stepper.failure))

    def _abort(self, exc: BaseException) -> None:
        """The body failed or was cancelled: fail every row, stop the stepper."""
        self._fail(exc)
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()

    def close(self) -> None:
        """
        Stop accepting items; waiting and active rows still run to their end.

        Submits that have not queued their item yet (including callers waiting for room)
        fail with :class:`ScopeClosedError`. Idempotent. Leaving ``async with`` normally
        calls it and then waits for every row to end.

        .. versionadded:: 0.2.0
        """
        stepper = self._stepper
        if stepper.state is not ScopeState.OPEN:
            return
        stepper.state = ScopeState.CLOSING
        stepper.wake()
        if stepper.room.waiting:
            stepper.room.release()  # each waiter sees the scope closing and passes it on

    def stream(self, item: In, *, priority: float = 0) -> RowStream[In, Out]:
        """
        Submit *item* and iterate over its row's outputs as the steps produce them.

        The item is submitted when iteration starts (the first ``__anext__``), by the
        iterating task: its effective deadline is the caller's deadline. Leaving the loop
        early (``break``, an exception, ``aclose()``, or ``async with`` around the
        stream) ends the row before the next step.

        Args:
            item: The input of the row.
            priority: With ``policy="priority"``: lower joins first.

        Returns:
            An async iterator (also an async context manager that closes it).

        .. versionadded:: 0.2.0
        """
        return RowStream(self._stepper, item, priority)

    async def submit(self, item: In, *, priority: float = 0) -> list[Out]:
        """
        Submit *item* and wait for its row to end; return all its outputs, in order.

        Args:
            item: The input of the row.
            priority: With ``policy="priority"``: lower joins first.

        Returns:
            The row's outputs, in the order the steps produced them.

        Raises:
            ScopeClosedError: The scope is closed or failed.
            QueueFullError: The queue is full and ``on_full="reject"``.
            BatchSizeMismatchError: A step returned the wrong number of outputs.
            Exception: The step function's exception for this row (the same object).

        Cancellation:
            Waiting for room in the queue: nothing was queued. Waiting to join: the item
            is withdrawn and never reaches the step function. Active: the row leaves
            before the next step; an output of the step running now is dropped.

        .. versionadded:: 0.2.0
        """
        stream = RowStream(self._stepper, item, priority)
        async with stream:
            return [output async for output in stream]

    @property
    def pending(self) -> int:
        """
        Items waiting to join, now: ``statistics().pending`` without the snapshot (a
        cheap gauge for exporters that scrape often).

        .. versionadded:: 0.2.0
        """
        return self._stepper.recorder.pending

    def statistics(self) -> ContinuousStatistics:
        """
        A frozen snapshot of the scope's counters.

        .. versionadded:: 0.2.0
        """
        return self._stepper.recorder.snapshot()


@final
class RowStream(Generic[In, Out]):
    """
    The outputs of one row, as an async iterator: what :meth:`ContinuousScope.stream` returns.

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_done", "_item", "_priority", "_receive", "_stepper", "_value")

    def __init__(self, stepper: Stepper[In, Out], value: In, priority: float) -> None:
        self._stepper = stepper
        self._value = value
        self._priority = priority
        self._item: RowItem[In, Out] | None = None
        self._receive: MemoryObjectReceiveStream[Out] | None = None
        self._done = False

    def __aiter__(self) -> RowStream[In, Out]:
        return self

    async def __anext__(self) -> Out:
        """
        The row's next output; the first call submits the item.

        Raises:
            StopAsyncIteration: The row ended (``END``).
            Exception: The row failed: the step function's exception for it,
                :class:`BatchSizeMismatchError`, or :class:`ScopeClosedError`.

        Cancellation:
            The row is withdrawn (before it joined) or ends before the next step (after);
            the stream is closed.
        """
        if self._done:
            raise StopAsyncIteration
        stepper = self._stepper
        receive = self._receive
        if receive is None:
            try:
                self._item, receive = await stepper.admit(self._value, self._priority)
            except BaseException:
                self._done = True
                raise
            self._receive = receive
        try:
            output = await receive.receive()
        except anyio.EndOfStream:
            pass
        except BaseException:
            self._leave()
            raise
        else:
            if receive.statistics().current_buffer_used == stepper.config.max_buffered - 1:
                stepper.wake()  # the row may have sat out steps with a full buffer
            return output
        self._done = True
        receive.close()
        item = self._item
        assert item is not None
        item.outcome()  # raises the row's error, if it failed
        raise StopAsyncIteration

    def _leave(self) -> None:
        if self._done:
            return
        self._done = True
        if self._receive is not None:
            self._receive.close()
        if self._item is not None:
            self._stepper.leave(self._item)

    async def aclose(self) -> None:
        """
        Stop iterating: the row leaves before the next step (or is withdrawn).

        Cancellation:
            The row has left already when the checkpoint is reached.

        .. versionadded:: 0.2.0
        """
        self._leave()
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> RowStream[In, Out]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave()

    def __del__(self) -> None:
        # ``break`` out of ``async for`` drops the iterator without closing it.
        if not self._done:
            self._leave()
