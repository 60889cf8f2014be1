"""
batchscope: dynamic batching on structured concurrency, for asyncio and Trio alike.

Many concurrent callers each ``await scope.submit(x)``; batchscope groups their items
into batches, calls one batch function per batch, and hands every caller its own result.

The private modules are layers along that data flow; each imports only its own layer or
lower ones (``tests/test_layers.py`` holds them to it):

1. values: options (``_config``, ``_continuous_values``) and their validators
   (``_durations``), ``_resilience``, exceptions, hook events, counters
   (``_statistics``), the queue bound (``_room``), the states of a scope's life
   (``_lifecycle``), ``END`` (``_markers``), the progress bar (``_progress``);
2. items: the per-item record and its states (``_items``), how a caller parks
   (``_completion``, ``_trio``, ``_asyncio``), ``current_batch()`` (``_batchinfo``);
3. pools and policies: FIFO and priority (``_pending``), length buckets (``_bucketing``),
   one pool per partition key (``_partitions``), the fitted batch run time (``_runtime``);
4. the engine: the state the parts share and the admission protocol (``_engine``,
   ``_admission``), the scheduler, the executor and its slots, the cache front,
   ``submit_many``/``map``, streaming batch functions (``_streaming``), the shared
   device (``_device``), adaptive sizes (``_adaptive``), warm-up, the continuous
   stepper (``_stepper``), how a ``BatchScope``'s engine is built, opened and closed
   (``_wiring``);
5. the façade: ``BatchScope`` (``_scope``: its documented API and submit's path),
   ``ContinuousScope`` (``_continuous``), the decorator, the blocking scope, this
   module's re-exports.

Beside them, on the public surface only: ``arrays`` (collators), ``ray``, ``metrics``,
``asgi``, ``testing`` and the demo (``_demo``, ``__main__``).
"""

from __future__ import annotations

from ._batchinfo import BatchInfo as BatchInfo
from ._batchinfo import current_batch as current_batch
from ._blocking import BlockingBatchScope as BlockingBatchScope
from ._cache import MISSING as MISSING
from ._cache import AsyncCache as AsyncCache
from ._config import ScopeConfig as ScopeConfig
from ._continuous import ContinuousScope as ContinuousScope
from ._continuous import RowStream as RowStream
from ._continuous_values import ContinuousConfig as ContinuousConfig
from ._continuous_values import ContinuousStatistics as ContinuousStatistics
from ._decorator import BatchedFunction as BatchedFunction
from ._decorator import BatchedMethod as BatchedMethod
from ._decorator import batch as batch
from ._device import Device as Device
from ._device import DeviceShare as DeviceShare
from ._device import DeviceStatistics as DeviceStatistics
from ._exceptions import BatchScopeError as BatchScopeError
from ._exceptions import BatchSizeMismatchError as BatchSizeMismatchError
from ._exceptions import CircuitOpenError as CircuitOpenError
from ._exceptions import DeadlineUnmeetableError as DeadlineUnmeetableError
from ._exceptions import ItemTooLargeError as ItemTooLargeError
from ._exceptions import NoActiveScopeError as NoActiveScopeError
from ._exceptions import QueueFullError as QueueFullError
from ._exceptions import ScopeClosedError as ScopeClosedError
from ._exceptions import WarmupError as WarmupError
from ._executor import Collator as Collator
from ._hooks import BatchFinished as BatchFinished
from ._hooks import BatchStarted as BatchStarted
from ._hooks import Hooks as Hooks
from ._hooks import StepFinished as StepFinished
from ._hooks import StepStarted as StepStarted
from ._map import MapIterator as MapIterator
from ._markers import END as END
from ._markers import End as End
from ._resilience import CircuitBreaker as CircuitBreaker
from ._resilience import RateLimit as RateLimit
from ._resilience import Retry as Retry
from ._scope import BatchScope as BatchScope
from ._statistics import BatchStatistics as BatchStatistics
from ._statistics import PartitionStatistics as PartitionStatistics
from ._statistics import Percentiles as Percentiles
from ._stepper import Row as Row
from ._streaming import OutputStream as OutputStream

__all__ = [
    "END",
    "MISSING",
    "AsyncCache",
    "BatchFinished",
    "BatchInfo",
    "BatchScope",
    "BatchScopeError",
    "BatchSizeMismatchError",
    "BatchStarted",
    "BatchStatistics",
    "BatchedFunction",
    "BatchedMethod",
    "BlockingBatchScope",
    "CircuitBreaker",
    "CircuitOpenError",
    "Collator",
    "ContinuousConfig",
    "ContinuousScope",
    "ContinuousStatistics",
    "DeadlineUnmeetableError",
    "Device",
    "DeviceShare",
    "DeviceStatistics",
    "End",
    "Hooks",
    "ItemTooLargeError",
    "MapIterator",
    "NoActiveScopeError",
    "OutputStream",
    "PartitionStatistics",
    "Percentiles",
    "QueueFullError",
    "RateLimit",
    "Retry",
    "Row",
    "RowStream",
    "ScopeClosedError",
    "ScopeConfig",
    "StepFinished",
    "StepStarted",
    "WarmupError",
    "batch",
    "current_batch",
]

__version__ = "0.1.0"


from ._durations import fix_module_names as _fix_module_names

_fix_module_names(__name__, globals(), __all__)
del _fix_module_names
