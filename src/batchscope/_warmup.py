"""
Warmup: ``warmup=`` runs fn on sample items once per batch shape before the scope opens.

Each shape is a preferred batch size (``preferred_batch_sizes``), or ``max_batch_size``
without them: the samples are repeated in turn up to that size, fn runs once on them
(through the collator, in a worker thread for a sync fn, as a batch would), the results
are dropped, and the run time seeds the scheduler's :class:`RunTimeModel`, so the first
caller with a deadline is judged on measured run times rather than the untimed default.
Warmup calls count in no statistics and send no hook events. Any error fails the opening
with :class:`WarmupError`; a cancellation passes through untouched.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from ._batchinfo import reset, warming
from ._exceptions import WarmupError
from ._executor import count_results

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["warm_up"]


def _samples(engine: Engine[Any, Any]) -> list[Any]:
    source = engine.config.warmup
    if callable(source):
        try:
            samples = list(source())
        except Exception as exc:
            raise WarmupError(f"the 'warmup' callable raised {type(exc).__name__}: {exc}") from exc
    else:
        samples = list(source or ())
    if not samples:
        raise WarmupError("the 'warmup' callable returned no sample items")
    return samples


def _load(engine: Engine[Any, Any], values: list[Any]) -> float:
    """The batch's load as the run-time model counts it: its size, or its cost."""
    config = engine.config
    cost = config.cost
    if cost is None:
        return float(len(values))
    try:
        costs = [float(cost(value)) for value in values]
    except Exception as exc:
        raise WarmupError(
            f"the 'cost' function raised {type(exc).__name__} on a warmup sample: {exc}"
        ) from exc
    return len(values) * max(costs) if config.cost_mode == "padded" else sum(costs)


def _check(results: Any, size: int) -> None:
    try:
        count = count_results(results)
    except TypeError as exc:
        raise WarmupError(f"warming up at batch size {size}: {exc}") from exc
    if count != size:
        raise WarmupError(
            f"warming up at batch size {size}: the batch function returned {count} results"
        )
    for result in results:
        if isinstance(result, Exception):
            raise WarmupError(
                f"the batch function returned {type(result).__name__} for a warmup sample "
                f"at batch size {size}: {result}"
            ) from result


async def warm_up(engine: Engine[Any, Any]) -> None:
    """
    Run fn once per batch shape on the warmup samples and seed the run-time model.

    Raises:
        WarmupError: Anything went wrong (``__cause__`` says what).

    Cancellation:
        Passes through; the scope does not open.
    """
    config = engine.config
    if config.warmup is None:
        return
    samples = _samples(engine)
    sizes = config.preferred_batch_sizes or (config.batch_size_bound,)
    model = engine.scheduler.model
    clock = engine.clock
    for size in sizes:
        values = list(itertools.islice(itertools.cycle(samples), size))
        load = _load(engine, values)
        token = warming(size)
        started = clock()
        try:
            results = await engine.executor.call_once(values)
        except Exception as exc:
            raise WarmupError(
                f"the batch function raised {type(exc).__name__} while warming up at "
                f"batch size {size}: {exc}"
            ) from exc
        finally:
            reset(token)
        seconds = clock() - started
        _check(results, size)
        model.observe(load, seconds)
