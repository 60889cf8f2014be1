"""
The values of continuous batching: its options, its live counters, their snapshot.

:class:`ContinuousConfig` holds the validated options of a
:class:`~batchscope.ContinuousScope` (errors name the option, as in ``_config``);
:class:`ContinuousRecorder` the counters bumped on the event loop;
:class:`ContinuousStatistics` the frozen snapshot users read.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any, final, get_args

import attrs

from ._config import OnFull, Policy, aging_seconds
from ._durations import (
    choice,
    optional_callable,
    optional_positive_number,
    positive_int,
)
from ._statistics import SAMPLES, Percentiles

__all__ = ["ContinuousConfig", "ContinuousRecorder", "ContinuousStatistics"]


@final
@attrs.frozen(kw_only=True)
class ContinuousConfig:
    """The validated options of a :class:`~batchscope.ContinuousScope`."""

    #: Most rows in the running batch (each step gets at most this many).
    max_active: int = attrs.field(default=16, validator=positive_int)
    #: Budget on the total cost of the active rows (needs ``cost``), or None.
    max_active_cost: float | None = attrs.field(default=None, validator=optional_positive_number)
    #: ``item -> number >= 0``, called once per item at submit (for example prompt length
    #: plus the most tokens it may generate).
    cost: Callable[[Any], float] | None = attrs.field(default=None, validator=optional_callable)
    #: Which waiting items join first: ``"fifo"``, ``"length"`` or ``"priority"``.
    policy: Policy = attrs.field(default="fifo", validator=choice(*get_args(Policy)))
    #: Seconds of waiting worth one priority step (``policy="priority"``).
    aging: float = attrs.field(default=0.1, converter=aging_seconds)
    #: Bound on items waiting to join.
    max_queue_size: int = attrs.field(default=10_000, validator=positive_int)
    #: What a submit does when the queue is full: ``"wait"`` for room or ``"reject"``.
    on_full: OnFull = attrs.field(default="wait", validator=choice(*get_args(OnFull)))
    #: Outputs a row may hold that its caller has not read yet; a row whose buffer is
    #: full sits out the steps until its caller reads.
    max_buffered: int = attrs.field(default=64, validator=positive_int)

    def __attrs_post_init__(self) -> None:
        if self.max_active_cost is not None and self.cost is None:
            raise ValueError("'max_active_cost' needs a 'cost' function (for example cost=len)")
        if self.policy == "length" and self.cost is None:
            raise ValueError("policy='length' needs a 'cost' function (for example cost=len)")


@final
@attrs.frozen(kw_only=True)
class ContinuousStatistics:
    """
    A snapshot of a :class:`~batchscope.ContinuousScope`'s counters.

    At every moment ``submitted == completed + failed + cancelled + rejected + admitting +
    pending + active``; after the scope has exited, ``admitting``, ``pending`` and
    ``active`` are 0. A row counts as completed or failed when it ends, whether or not
    its caller has read every output yet.
    """

    #: ``submit()``/``stream()`` calls made while the scope was open.
    submitted: int
    #: Rows that ended with ``END``.
    completed: int
    #: Rows that ended with an exception (from the step, a mismatch, or the scope failing).
    failed: int
    #: Rows whose caller left (cancelled, or stopped iterating) before the row ended.
    cancelled: int
    #: Submits refused before they were queued (queue full, scope closing, bad cost).
    rejected: int
    #: Calls not yet queued (waiting for room in the queue).
    admitting: int
    #: Items waiting to join the running batch.
    pending: int
    #: Rows in the running batch now.
    active: int
    #: Calls of the step function so far.
    steps: int
    #: Outputs handed to callers so far (``END`` and exceptions not counted).
    outputs: int
    #: Mean number of rows per step (0.0 before the first step).
    mean_rows_per_step: float
    #: ``(rows, count)`` pairs, by rows: how many steps had each number of rows.
    rows_per_step_histogram: tuple[tuple[int, int], ...]
    #: Time from submit to joining the running batch, over recent rows.
    join_wait_ms: Percentiles
    #: Time from submit to the row's first output, over recent rows.
    time_to_first_output_ms: Percentiles
    #: Time between two consecutive outputs of one row, over recent outputs.
    time_between_outputs_ms: Percentiles
    #: Active rows the step function ended with ``END``.
    rows_finished: int
    #: Active rows that failed (an exception for the row, a failing step, a mismatch).
    rows_failed: int
    #: Active rows that left because their caller left.
    rows_abandoned: int


@attrs.define(eq=False)
class ContinuousRecorder:
    """The live counters of one continuous scope; mutated in place on the event loop."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0
    admitting: int = 0
    pending: int = 0
    active: int = 0
    steps: int = 0
    stepped_rows: int = 0
    outputs: int = 0
    rows_finished: int = 0
    rows_failed: int = 0
    rows_abandoned: int = 0
    sizes: Counter[int] = attrs.Factory(Counter[int])
    join_waits: deque[float] = attrs.Factory(lambda: deque(maxlen=SAMPLES))
    first_outputs: deque[float] = attrs.Factory(lambda: deque(maxlen=SAMPLES))
    between_outputs: deque[float] = attrs.Factory(lambda: deque(maxlen=SAMPLES))

    def snapshot(self) -> ContinuousStatistics:
        """Freeze the counters into a :class:`ContinuousStatistics`."""
        return ContinuousStatistics(
            submitted=self.submitted,
            completed=self.completed,
            failed=self.failed,
            cancelled=self.cancelled,
            rejected=self.rejected,
            admitting=self.admitting,
            pending=self.pending,
            active=self.active,
            steps=self.steps,
            outputs=self.outputs,
            mean_rows_per_step=self.stepped_rows / self.steps if self.steps else 0.0,
            rows_per_step_histogram=tuple(sorted(self.sizes.items())),
            join_wait_ms=Percentiles.of(self.join_waits),
            time_to_first_output_ms=Percentiles.of(self.first_outputs),
            time_between_outputs_ms=Percentiles.of(self.between_outputs),
            rows_finished=self.rows_finished,
            rows_failed=self.rows_failed,
            rows_abandoned=self.rows_abandoned,
        )
