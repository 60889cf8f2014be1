"""
Admission by deadline: predict, at submit, when an item would finish; refuse it at once
when its caller will have given up by then.

With ``admission="deadline"`` the engine asks :func:`judge` for every submit whose caller
has a deadline. The prediction is a fluid model of the backlog, built from what the scope
already keeps: the items queued ahead (``recorder.pending``, priced by the pool's mean
cost), the batches running (``recorder.in_flight``, each assumed just started), the slots
(``max_concurrent_batches``) and the scheduler's fitted :class:`RunTimeModel`. Full
batches ahead of the item run first, ``max_concurrent_batches`` at a time; the item's own
batch then runs once. Run times are the ones recent batches confirm
(``RunTimeModel.confirmed``: nothing until two batches are timed, then the least of the
fit and the last two), so a fresh scope, or one after a single slow (cold-start) batch,
refuses nobody and its estimate gets corrected; and an idle scope (nothing queued or
running, no pause) admits whoever comes, the probe that corrects an estimate grown stale
after slow batches: refusals never lock callers out. The
prediction errs towards admitting, since a refusal that could have been served is lost
work too; but the predicted finish must clear the deadline by the margin a deadline
release leaves (a fifth of the caller's time, plus how late timers fire): under sustained
overload every admitted item sits at the threshold, and without a margin many of them
time out after all (the figures: docs/benchmarks.md, "Admission under overload").

:func:`drain_time` is the ``retry_after`` of a full queue: the time the backlog takes to
drain a batch's worth.

An upstream "slow down" (fn raised an exception with a numeric ``retry_after``) holds
dispatch for the whole scope until then (:func:`slow_down`, read by the scheduler through
``Engine.paused_until``); the time left of such a pause counts as queue wait here.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

from ._exceptions import DeadlineUnmeetableError
from ._pending import deadline_spare
from ._scheduler import TIMER_SLACK

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["drain_time", "judge", "retry_after_of", "slow_down"]


def _batch(engine: Engine[Any, Any], cost: float) -> tuple[float, float]:
    """(items in a full batch, run time of a full batch) by the fitted model."""
    config = engine.config
    # The cap in force at the scheduler's last look (max_batch_size="auto" and the
    # out-of-memory back-off move it), or what the options allow before any.
    size = engine.recorder.batch_size_cap or config.batch_size_bound
    model = engine.scheduler.model
    if config.cost is None:
        return float(size), model.confirmed(float(size))
    pool = engine.scheduler.pool
    mean_cost = pool.pending_cost / pool.live if pool.live else cost
    mean_cost = max(mean_cost, 1e-9)
    budget = config.max_batch_cost
    if budget is None:
        return float(size), model.confirmed(size * mean_cost)
    per_batch = max(1.0, min(float(size), math.floor(budget / mean_cost)))
    return per_batch, model.confirmed(min(budget, per_batch * mean_cost))


def _paused_for(engine: Engine[Any, Any], now: float) -> float:
    return max(0.0, engine.paused_until - now)


def judge(engine: Engine[Any, Any], cost: float) -> None:
    """
    Raise :class:`DeadlineUnmeetableError` if the calling task's deadline cannot be met.

    A caller with no deadline is always admitted.
    """
    deadline = engine.deadline()
    if deadline == math.inf:
        return
    now = engine.clock()
    recorder = engine.recorder
    per_batch, full = _batch(engine, cost)
    ahead = recorder.pending
    batches_ahead = math.floor(ahead / per_batch)
    slots = engine.config.max_concurrent_batches
    running = recorder.in_flight
    wait = _paused_for(engine, now)
    if not ahead and not running and not wait:
        # An idle scope admits: a refusal could rest only on past run times, and only a
        # new batch can correct them (one slow batch must not lock callers out for good).
        # The admitted item is the probe; callers that come while it waits or runs are
        # judged against it.
        return
    if running + batches_ahead >= slots:
        wait += (running + batches_ahead) * full / slots
    if batches_ahead:
        own = full
    else:
        own = engine.scheduler.model.confirmed(
            (ahead + 1) * (1.0 if engine.config.cost is None else cost)
        )
    # The margin a deadline release leaves too: the predicted finish must clear the
    # deadline by a share of the caller's time and by how late timers fire. Under
    # sustained overload every admitted item sits at the admission threshold; without
    # the margin about half of them would miss their deadline by the gaps between
    # batches and the result's way back.
    margin = deadline_spare(deadline, now) + engine.scheduler.lateness + TIMER_SLACK
    if now + wait + own <= deadline - margin:
        return
    engine.reject("deadline")
    retry_after = max(wait, full / slots)
    raise DeadlineUnmeetableError(
        f"{engine.describe()} cannot serve this item within its caller's deadline "
        f"({max(0.0, deadline - now) * 1000:.0f} ms left; predicted {wait * 1000:.0f} ms "
        f"in the queue behind {ahead} items and {own * 1000:.0f} ms to run): retry after "
        f"{retry_after:.3f} s",
        retry_after,
    )


def drain_time(engine: Engine[Any, Any], cost: float) -> float:
    """Seconds for the backlog to drain a batch's worth (a full queue's ``retry_after``)."""
    _, full = _batch(engine, cost)
    return _paused_for(engine, engine.clock()) + full / engine.config.max_concurrent_batches


def retry_after_of(exc: BaseException) -> float | None:
    """The seconds an exception's ``retry_after`` asks to wait, or None (absent, invalid)."""
    value: object = getattr(exc, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def slow_down(engine: Engine[Any, Any], exc: BaseException) -> float:
    """
    fn raised *exc*: if it says "slow down" (a numeric ``retry_after``), hold dispatch
    for the whole scope until then; return the seconds asked (0.0 when none).
    """
    seconds = retry_after_of(exc)
    if seconds is None:
        return 0.0
    until = engine.clock() + seconds
    engine.paused_until = max(engine.paused_until, until)
    return seconds
