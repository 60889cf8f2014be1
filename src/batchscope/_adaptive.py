"""
The batch size cap: ``max_batch_size="auto"`` and the out-of-memory back-off.

:class:`BatchSizer` says how many items the next batch may hold. The scheduler asks it
each time it builds its limits; the executor tells it about out-of-memory errors and
successful batches. Two things lower the cap below ``max_batch_size``:

* ``max_batch_size="auto"``: the largest batch whose predicted run time, plus the wait
  for companions, meets ``target_latency`` (:meth:`RunTimeModel.largest_load`, a closed
  form of the fitted ``a + b * load``), at least 1 and at most ``batch_size_ceiling``.
  With ``max_wait="auto"`` too, the target is split in halves: a batch runs in at most
  half of it, and the wait takes the rest (so a caller who arrives while a batch runs,
  and then waits for its own, is still served within the target).
* ``oom_errors``: a batch of *n* that runs out of memory drops the cap to ``n // 2``
  (each half that runs out again drops it further); after :data:`GROW_AFTER` batches
  that succeed at the cap it grows by a quarter (at least one item), until it reaches
  the cap the options give and is lifted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._config import ScopeConfig
    from ._runtime import RunTimeModel
    from ._statistics import Recorder

__all__ = ["GROW_AFTER", "BatchSizer"]

#: Batches that succeed at a lowered cap before it grows one step.
GROW_AFTER = 4


class BatchSizer:
    """The cap on items per batch: the options, the cost model and memory back-off."""

    __slots__ = ("_at_cap", "_recorder", "oom_cap")

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        #: The cap out-of-memory errors set (None: none in force).
        self.oom_cap: int | None = None
        self._at_cap = 0

    def size(self, config: ScopeConfig, model: RunTimeModel, mean_cost: float) -> int:
        """The most items the next batch may hold (recorded as ``batch_size_cap``)."""
        size: int
        if config.max_batch_size != "auto":
            size = config.max_batch_size
        else:
            target = config.target_latency
            assert target is not None
            wait = config.max_wait
            budget = 0.5 * target if wait == "auto" else target - wait
            load = model.largest_load(budget)
            per_item = mean_cost if config.cost is not None and mean_cost > 0 else 1.0
            fitting = load / per_item
            ceiling = config.batch_size_ceiling
            # A hair of tolerance: 0.05 / 0.001 must give 50, not 49.
            size = ceiling if fitting >= ceiling else max(1, math.floor(fitting + 1e-9))
        cap = self.oom_cap
        if cap is not None:
            if cap >= size:
                self.oom_cap = None  # grown back: lifted
            else:
                size = cap
        self._recorder.batch_size_cap = size
        return size

    def out_of_memory(self, size: int) -> int:
        """A batch of *size* items ran out of memory: lower the cap; return it."""
        cap = max(1, size // 2)
        if self.oom_cap is None or cap < self.oom_cap:
            self.oom_cap = cap
        self._at_cap = 0
        recorder = self._recorder
        recorder.batch_size_cap = min(recorder.batch_size_cap, self.oom_cap)
        return self.oom_cap

    def succeeded(self, size: int) -> None:
        """A batch of *size* items ran: grow a lowered cap after enough at the cap."""
        cap = self.oom_cap
        if cap is None or size < cap:
            return
        self._at_cap += 1
        if self._at_cap >= GROW_AFTER:
            self._at_cap = 0
            self.oom_cap = cap + max(1, cap // 4)

    def configured(self, config: ScopeConfig) -> None:
        """New options: show the cap they give until the scheduler next looks."""
        size = config.batch_size_bound
        if self.oom_cap is not None:
            size = min(size, self.oom_cap)
        self._recorder.batch_size_cap = size
