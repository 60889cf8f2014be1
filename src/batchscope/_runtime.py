"""
The run-time model: batch run time as a straight line in batch load, fitted over recent
batches. The scheduler judges callers' deadlines against it, ``max_wait="auto"`` and
``max_batch_size="auto"`` size batches by it, admission predicts queue waits with it, and
a shared device estimates a granted batch's length from it.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RunTimeModel"]


class RunTimeModel:
    """
    Batch run time as ``a + b * load``, fitted by least squares over recent batches.

    *load* is the batch size, or its cost (padded or summed, as the scope counts it) when
    the scope has a cost function. Until a batch has been timed it predicts ``DEFAULT``.

    :meth:`predict` (when a partial batch leaves for a deadline, ``max_wait="auto"``)
    errs long, which only makes batches leave early. :meth:`confirmed`, which leaves
    callers out, trusts only what the last two batches agree on, so a single slow batch
    (a cold start) decays out of it at the next batch, while the fit forgets it over
    ``WINDOW`` batches.
    """

    #: Batches the fit looks back over.
    WINDOW = 64
    #: The guess before any batch has been timed: a few milliseconds.
    DEFAULT = 0.002

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque()
        # Running sums over the window: x, y, x*x, x*y.
        self._sums = [0.0, 0.0, 0.0, 0.0]
        self._observed = 0
        self._a = self.DEFAULT
        self._b = 0.0

    def observe(self, load: float, seconds: float) -> None:
        """Record one finished batch and refit (amortised O(1): running sums)."""
        samples = self._samples
        sums = self._sums
        samples.append((load, seconds))
        sums[0] += load
        sums[1] += seconds
        sums[2] += load * load
        sums[3] += load * seconds
        if len(samples) > self.WINDOW:
            old_x, old_y = samples.popleft()
            self._observed += 1
            if self._observed % self.WINDOW == 0:
                # Recount now and then, so rounding errors of the subtractions never pile up.
                sums[:] = [0.0, 0.0, 0.0, 0.0]
                for x, y in samples:
                    sums[0] += x
                    sums[1] += y
                    sums[2] += x * x
                    sums[3] += x * y
            else:
                sums[0] -= old_x
                sums[1] -= old_y
                sums[2] -= old_x * old_x
                sums[3] -= old_x * old_y
        n = len(samples)
        mean_x = sums[0] / n
        mean_y = sums[1] / n
        # Var and covariance from running sums; clamp the rounding noise of subtraction.
        var = sums[2] / n - mean_x * mean_x
        slope = 0.0
        if var > 1e-12 * max(1.0, mean_x * mean_x):
            slope = max(0.0, (sums[3] / n - mean_x * mean_y) / var)
        self._b = slope
        self._a = max(0.0, mean_y - slope * mean_x)

    def predict(self, load: float) -> float:
        """Expected run time in seconds of a batch of *load*."""
        return self._a + self._b * load

    def confirmed(self, load: float) -> float:
        """
        The run time of a batch of *load* that recent batches confirm: at most what the
        fit and each of the last two batches (moved along the fitted slope to *load*)
        say; 0 until two batches have been timed.
        """
        samples = self._samples
        if len(samples) < 2:
            return 0.0
        slope = self._b
        last_x, last_y = samples[-1]
        prev_x, prev_y = samples[-2]
        return max(
            0.0,
            min(
                self._a + slope * load,
                last_y + slope * (load - last_x),
                prev_y + slope * (load - prev_x),
            ),
        )

    def largest_load(self, budget: float) -> float:
        """
        The largest load whose run time fits in *budget* seconds (``max_batch_size="auto"``):
        ``(budget - a) / b`` when the fit has a slope and agrees with the last batch
        (within a tenth); otherwise, scaled from the last batch's time per unit of load
        (the speed changed, or every recent batch had the same load); ``inf`` before any
        batch has been timed, and at most twice the largest load in the window.
        """
        samples = self._samples
        if not samples:
            return math.inf
        last_x, last_y = samples[-1]
        a, b = self._a, self._b
        if b > 0.0 and abs(a + b * last_x - last_y) <= 0.1 * last_y:
            load = (budget - a) / b
        elif last_y > 0.0:
            load = budget * last_x / last_y
        else:
            load = math.inf
        return max(0.0, min(load, 2.0 * max(x for x, _ in samples)))
