"""
The options of a BatchScope: one frozen attrs class, every field validated.

Errors are plain ``ValueError``/``TypeError`` whose message names the option, raised when
the scope is constructed (or reconfigured), never later inside the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from datetime import timedelta
from typing import Any, Literal, cast, final, get_args

import attrs

from ._durations import (
    check_int,
    choice,
    optional_callable,
    optional_positive_number,
    positive_int,
    positive_seconds,
    to_seconds,
    type_name,
)
from ._resilience import CircuitBreaker, RateLimit, Retry

__all__ = [
    "Admission",
    "CostMode",
    "OnFull",
    "Oversize",
    "Policy",
    "ScopeConfig",
    "aging_seconds",
    "check_int",
    "to_seconds",
]

OnFull = Literal["wait", "reject"]
CostMode = Literal["padded", "sum"]
Oversize = Literal["run_alone", "reject"]
Policy = Literal["fifo", "length", "priority"]
Admission = Literal["queue", "deadline"]


def _max_batch_size(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value != "auto":
        check_int("max_batch_size", value, minimum=1)


def _oom_errors(
    value: type[Exception] | tuple[type[Exception], ...],
) -> tuple[type[Exception], ...]:
    kinds: tuple[object, ...] = (
        cast("tuple[object, ...]", value) if isinstance(value, tuple) else (value,)
    )
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(
                f"'oom_errors' must be an Exception subclass or a tuple of them, got {value!r}"
            )
    return cast("tuple[type[Exception], ...]", kinds)


def _max_wait(value: float | timedelta | Literal["auto"]) -> float | Literal["auto"]:
    if value == "auto":
        return "auto"
    return to_seconds("max_wait", value)


def _optional_seconds(name: str) -> Callable[[float | timedelta | None], float | None]:
    def convert(value: float | timedelta | None) -> float | None:
        return None if value is None else positive_seconds(name, value)

    return convert


def _target_latency(value: float | timedelta | None) -> float | None:
    return _optional_seconds("target_latency")(value)


def aging_seconds(value: float | timedelta) -> float:
    """The ``aging`` option (of a scope and of a continuous scope): a duration above zero."""
    return positive_seconds("aging", value)


def _batch_timeout(value: float | timedelta | None) -> float | None:
    return _optional_seconds("batch_timeout")(value)


def _weight(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'weight' must be a number, not {type_name(value)}")
    if not 0.01 <= value <= 100:
        raise ValueError(f"'weight' must be between 0.01 and 100, got {value!r}")


def _bool(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name!r} must be True or False, not {type_name(value)}")


def _instance_of(kind: type, shown: str) -> Callable[[Any, attrs.Attribute[Any], object], None]:
    def validate(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{attribute.name!r} must be a {shown}(...), not {type_name(value)}")

    return validate


def _preferred_sizes(value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"'preferred_batch_sizes' must be a sequence of ints such as (8, 16, 32), "
            f"not {type_name(value)}"
        )
    sizes = cast("Sequence[object]", value)
    if not sizes:
        raise ValueError("'preferred_batch_sizes' must hold at least one size")
    for size in sizes:
        check_int("preferred_batch_sizes", size, minimum=1)
    return tuple(sorted(set(cast("Sequence[int]", sizes))))


def _warmup(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or callable(value):
        return
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"'warmup' must be a list of sample items or a callable returning one, "
            f"not {type_name(value)}"
        )
    if not value:
        raise ValueError("'warmup' must hold at least one sample item")


@final
@attrs.frozen(kw_only=True)
class ScopeConfig:
    """
    The validated options of a :class:`~batchscope.BatchScope`.

    Durations are stored as float seconds whatever the user passed.
    """

    #: Hard cap on items per batch, or ``"auto"`` (the largest batch that meets
    #: ``target_latency`` by the fitted cost model, at most ``batch_size_ceiling``).
    max_batch_size: int | Literal["auto"] = attrs.field(default=32, validator=_max_batch_size)
    #: Seconds the oldest pending item waits for companions, or ``"auto"`` (picked from
    #: the fitted cost model to meet ``target_latency``).
    max_wait: float | Literal["auto"] = attrs.field(default=0.005, converter=_max_wait)
    #: Seconds of end-to-end latency ``max_wait="auto"`` and ``max_batch_size="auto"`` aim
    #: for (None otherwise).
    target_latency: float | None = attrs.field(default=None, converter=_target_latency)
    #: Bound on pending items: the buffer of the scope's channel.
    max_queue_size: int = attrs.field(default=10_000, validator=positive_int)
    #: What a submit does when the queue is full: ``"wait"`` for room or ``"reject"``.
    on_full: OnFull = attrs.field(default="wait", validator=choice(*get_args(OnFull)))
    #: Batches in flight at once.
    max_concurrent_batches: int = attrs.field(default=1, validator=positive_int)
    #: ``item -> number`` (for example ``len``): enables cost budgets and length bucketing.
    cost: Callable[[Any], float] | None = attrs.field(default=None, validator=optional_callable)
    #: Budget per batch in cost units (needs ``cost``).
    max_batch_cost: float | None = attrs.field(default=None, validator=optional_positive_number)
    #: How a batch's cost adds up: ``"padded"`` (size times the largest cost) or ``"sum"``.
    cost_mode: CostMode = attrs.field(default="padded", validator=choice(*get_args(CostMode)))
    #: An item costlier than ``max_batch_cost`` alone: ``"run_alone"`` or ``"reject"``.
    oversize: Oversize = attrs.field(default="run_alone", validator=choice(*get_args(Oversize)))
    #: Which items go together: ``"fifo"``, ``"length"`` (cost buckets) or ``"priority"``.
    policy: Policy = attrs.field(default="fifo", validator=choice(*get_args(Policy)))
    #: Seconds of waiting worth one priority step (``policy="priority"``).
    aging: float = attrs.field(default=0.1, converter=aging_seconds)
    #: Seconds a batch may run before it is cancelled and its items time out (None: no limit).
    batch_timeout: float | None = attrs.field(default=None, converter=_batch_timeout)
    #: Split a failing batch in halves to find the items that fail.
    isolate_failures: bool = attrs.field(default=False, validator=_bool)
    #: Retry policy for failed batches (None: no retry).
    retry: Retry | None = attrs.field(default=None, validator=_instance_of(Retry, "bs.Retry"))
    #: Circuit breaker failing submits fast after failed batches (None: none).
    circuit_breaker: CircuitBreaker | None = attrs.field(
        default=None, validator=_instance_of(CircuitBreaker, "bs.CircuitBreaker")
    )
    #: Bound on batches or cost per unit of time (None: no limit).
    rate_limit: RateLimit | None = attrs.field(
        default=None, validator=_instance_of(RateLimit, "bs.RateLimit")
    )
    #: A ``MutableMapping`` or :class:`~batchscope.AsyncCache` of results (None: no cache).
    cache: object = attrs.field(default=None)
    #: ``item -> Hashable`` cache key; also turns on in-flight deduplication.
    key: Callable[[Any], Hashable] | None = attrs.field(default=None, validator=optional_callable)
    #: A :class:`~batchscope.Device` shared with other scopes (None: the scope's own).
    device: object = attrs.field(default=None)
    #: The scope's share of its device relative to the others' (``device=``).
    weight: float = attrs.field(default=1.0, validator=_weight)
    #: ``item -> Hashable`` partition key: only items of one partition share a batch.
    partition: Callable[[Any], Hashable] | None = attrs.field(
        default=None, validator=optional_callable
    )
    #: Which submits are queued: ``"queue"`` (every one there is room for) or
    #: ``"deadline"`` (refuse at once, with :class:`~batchscope.DeadlineUnmeetableError`,
    #: one whose caller's deadline the backlog ahead says cannot be met).
    admission: Admission = attrs.field(default="queue", validator=choice(*get_args(Admission)))
    #: With ``max_batch_size="auto"``, the largest batch size it may choose.
    batch_size_ceiling: int = attrs.field(default=256, validator=positive_int)
    #: Exceptions meaning "out of memory": a batch whose call raises one is split in halves
    #: and retried, and the batch size cap drops, then grows back step by step.
    oom_errors: tuple[type[Exception], ...] = attrs.field(default=(), converter=_oom_errors)

    @property
    def batch_size_bound(self) -> int:
        """The largest batch the options allow: ``max_batch_size``, or the ceiling."""
        size = self.max_batch_size
        return self.batch_size_ceiling if size == "auto" else size

    #: Batch sizes the batch function runs best at, sorted (None: any size up to
    #: ``max_batch_size``): a batch leaves at once at the largest, and a timer release
    #: is cut to the largest one not above what is pending.
    preferred_batch_sizes: tuple[int, ...] | None = attrs.field(
        default=None, converter=_preferred_sizes
    )
    #: Sample items (or a callable returning them) fn runs on once per batch shape
    #: before the scope opens (None: no warmup).
    warmup: Sequence[Any] | Callable[[], Sequence[Any]] | None = attrs.field(
        default=None, validator=_warmup
    )

    @property
    def batch_cap(self) -> int:
        """The most items a batch holds: the largest preferred size, or ``max_batch_size``."""
        preferred = self.preferred_batch_sizes
        return preferred[-1] if preferred else self.batch_size_bound

    #: Capture each caller's context (``contextvars``, with the OpenTelemetry context in
    #: it) at submit, for ``current_batch().contexts`` and tracing hooks.
    capture_context: bool = attrs.field(default=False, validator=_bool)

    def __attrs_post_init__(self) -> None:
        # Options that only make sense together.
        if self.max_wait == "auto" and self.target_latency is None:
            raise ValueError("max_wait='auto' needs 'target_latency' (seconds)")
        if self.max_batch_size == "auto" and self.target_latency is None:
            raise ValueError("max_batch_size='auto' needs 'target_latency' (seconds)")
        if self.target_latency is not None and "auto" not in (self.max_wait, self.max_batch_size):
            raise ValueError(
                "'target_latency' applies only with max_wait='auto' or max_batch_size='auto'"
            )
        if self.batch_size_ceiling != 256 and self.max_batch_size != "auto":
            raise ValueError("'batch_size_ceiling' applies only with max_batch_size='auto'")
        if self.max_batch_cost is not None and self.cost is None:
            raise ValueError("'max_batch_cost' needs a 'cost' function (for example cost=len)")
        if self.weight != 1.0 and self.device is None:
            raise ValueError("'weight' applies only with a shared 'device'")
        if self.policy == "length" and self.cost is None:
            raise ValueError("policy='length' needs a 'cost' function (for example cost=len)")
        preferred = self.preferred_batch_sizes
        if preferred is not None and preferred[-1] > self.batch_size_bound:
            raise ValueError(
                f"'preferred_batch_sizes' must not exceed max_batch_size={self.max_batch_size}, "
                f"got {preferred[-1]}"
            )
