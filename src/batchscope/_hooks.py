"""
Observability hooks: what a scope reports about its batches and items, and to whom.

:class:`Hooks` is a base class with no-op methods (like Trio's ``Instrument``): subclass it
and override what you need, then pass ``BatchScope(fn, hooks=[...])`` (or
``ContinuousScope(step, hooks=[...])``: its steps are :class:`StepStarted` and
:class:`StepFinished`). The events are frozen attrs objects. With no hooks, the engine
builds no event and calls nothing: one ``if`` per batch (or step). A hook that raises is
logged (rate-limited) and otherwise ignored: an exporter's bug never breaks the scope or
a caller.

The exporters in :mod:`batchscope.metrics` (Prometheus, OpenTelemetry) are such hooks.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast, final

import anyio
import attrs

if TYPE_CHECKING:
    from ._continuous import ContinuousScope
    from ._scope import BatchScope

__all__ = [
    "BatchFinished",
    "BatchStarted",
    "HookRunner",
    "Hooks",
    "RateLimitedLog",
    "RejectReason",
    "ReleaseReason",
    "StepFinished",
    "StepStarted",
    "hook_runner",
]

logger = logging.getLogger("batchscope")

#: Why a batch left the queue: ``size`` (``max_batch_size`` items were pending), ``cost``
#: (the cost budget was reached), ``timer`` (its oldest item waited ``max_wait``),
#: ``deadline`` (a caller's deadline could not wait longer), ``drain`` (the scope is
#: closing), ``early`` (a shared device pulled it forward: it would have come due while
#: another scope's batch ran, and waited for that batch anyway; added in 0.2.0).
ReleaseReason = Literal["size", "cost", "timer", "deadline", "drain", "early"]

#: Why a submit was refused before its item was queued: ``queue_full``
#: (``on_full="reject"``), ``closed`` (the scope is closed or closing), ``too_large``
#: (``oversize="reject"``), ``bad_cost`` (``cost`` raised or returned no valid number),
#: ``bad_key`` (``key`` raised or returned something unhashable), ``circuit_open`` (the
#: circuit breaker is open), ``bad_partition`` (``partition`` raised or returned something
#: unhashable), ``deadline`` (``admission="deadline"``: the caller's deadline cannot be met).
RejectReason = Literal[
    "queue_full",
    "closed",
    "too_large",
    "bad_cost",
    "bad_key",
    "circuit_open",
    "bad_partition",
    "deadline",
]

#: How a batch ended: ``ok`` (every item got a result), ``partial`` (some items failed
#: alone), ``failed`` (fn raised, or a wrong result count, for the whole batch),
#: ``abandoned`` (every caller left before it ended).
Outcome = Literal["ok", "partial", "failed", "abandoned"]


@final
@attrs.frozen
class BatchStarted:
    """A batch left the queue."""

    #: Items in the batch.
    size: int
    #: Its cost as the scope counts it (padded or summed), or its size without ``cost``.
    cost: float
    #: Why it left: ``size``, ``cost``, ``timer``, ``deadline``, ``drain`` or ``early``.
    reason: ReleaseReason
    #: Seconds each item waited in the queue.
    queue_waits: tuple[float, ...]
    #: Real cost over padded cost of this batch (1.0 without ``cost``, or with
    #: ``cost_mode="sum"``). (Added in 0.2.0.)
    padding_efficiency: float = 1.0
    #: Per item, its caller's context captured at submit (``capture_context``, or a hook
    #: whose ``captures_context`` is true), else None. (Added in 0.2.0.)
    contexts: tuple[contextvars.Context, ...] | None = attrs.field(default=None, repr=False)


@final
@attrs.frozen
class BatchFinished:
    """A batch ended: all its calls of fn are done (retries and isolation included)."""

    #: The batch as it started.
    started: BatchStarted
    #: Seconds from dispatch to the end of the batch.
    seconds: float
    #: How it ended.
    outcome: Outcome
    #: Items that got a result.
    completed: int
    #: Items that got an exception.
    failed: int
    #: Seconds from submit to the end of the batch, per item.
    latencies: tuple[float, ...]


@final
@attrs.frozen
class StepStarted:
    """
    A :class:`~batchscope.ContinuousScope` calls its step function.

    .. versionadded:: 0.2.0
    """

    #: Rows in this step.
    rows: int
    #: Rows on their first step (they joined since the previous step).
    new_rows: int
    #: Rows in the running batch, this step's and those sitting it out (full buffer).
    active: int
    #: Total ``cost`` of the running batch (its row count without ``cost``).
    active_cost: float
    #: Items waiting to join.
    pending: int
    #: Seconds each new row waited from submit to joining.
    join_waits: tuple[float, ...]


@final
@attrs.frozen
class StepFinished:
    """
    The step function returned (or raised), and its outputs went to their callers.

    .. versionadded:: 0.2.0
    """

    #: The step as it started.
    started: StepStarted
    #: Seconds the step function ran.
    seconds: float
    #: Outputs handed to callers (``END`` and exceptions not counted).
    outputs: int
    #: Rows the step ended with ``END``.
    finished: int
    #: Rows that failed in this step (an exception for the row, a raising step, a mismatch).
    failed: int
    #: Rows of this step whose caller left while it ran (their outputs were dropped).
    abandoned: int
    #: Seconds from submit to the first output, per row that got its first one here.
    first_outputs: tuple[float, ...]
    #: Seconds since the row's previous output, per other row that got one here.
    between_outputs: tuple[float, ...]


class Hooks:
    """
    Receive a scope's events; override the methods you need (all default to nothing).

    Methods run synchronously on the event loop and must be quick (update a metric,
    append to a list); do not block in them.

    .. versionadded:: 0.1.0
    """

    #: Set true in a subclass that needs each caller's context (``BatchStarted.contexts``):
    #: a scope with such a hook captures them as if ``capture_context=True``.
    #: (Added in 0.2.0.)
    captures_context: ClassVar[bool] = False

    def scope_opened(self, scope: BatchScope[Any, Any]) -> None:
        """The scope opened (before any item)."""

    def scope_closed(self, scope: BatchScope[Any, Any]) -> None:
        """The scope has exited (every item has ended)."""

    def batch_started(self, event: BatchStarted) -> None:
        """A batch was dispatched."""

    def batch_finished(self, event: BatchFinished) -> None:
        """A batch ended."""

    def item_rejected(self, reason: RejectReason) -> None:
        """A submit was refused before queueing: ``queue_full``, ``closed``,
        ``too_large``, ``bad_cost``, ``bad_key``, ``circuit_open``, ``bad_partition``,
        ``deadline``."""

    def item_cancelled(self, dispatched: bool) -> None:
        """A caller left before its item ended (before or after dispatch; in a
        ContinuousScope, after its row joined: the row is abandoned)."""

    def continuous_opened(self, scope: ContinuousScope[Any, Any]) -> None:
        """A ContinuousScope opened (before any item). (Added in 0.2.0.)"""

    def continuous_closed(self, scope: ContinuousScope[Any, Any]) -> None:
        """A ContinuousScope has exited (every row has ended). (Added in 0.2.0.)"""

    def step_started(self, event: StepStarted) -> None:
        """A ContinuousScope calls its step function. (Added in 0.2.0.)"""

    def step_finished(self, event: StepFinished) -> None:
        """A ContinuousScope's step ended and its outputs were routed. (Added in 0.2.0.)"""


class RateLimitedLog:
    """Log a recurring message at most once per *interval* seconds, counting the rest."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, topic: str, message: str, *args: object, exc: bool = False) -> None:
        """Log *message* for *topic* unless one was logged less than *interval* ago."""
        now = anyio.current_time()
        last = self._last.get(topic)
        if last is not None and now - last < self._interval:
            self._suppressed[topic] = self._suppressed.get(topic, 0) + 1
            return
        self._last[topic] = now
        suppressed = self._suppressed.pop(topic, 0)
        if suppressed:
            message += f" ({suppressed} similar messages suppressed)"
        logger.log(level, message, *args, exc_info=exc)


class HookRunner:
    """Calls every hook for an event, isolating the scope from their failures."""

    def __init__(self, hooks: Sequence[Hooks], log: RateLimitedLog) -> None:
        self._hooks = tuple(hooks)
        self._log = log
        #: Whether a hook asks for the callers' contexts.
        self.captures_context: bool = any(hook.captures_context for hook in self._hooks)

    def call(self, method: str, *args: Any) -> None:
        for hook in self._hooks:
            try:
                getattr(hook, method)(*args)
            except Exception:  # noqa: PERF203 - each hook is isolated from the others
                self._log.log(
                    logging.ERROR,
                    f"hook:{method}",
                    "batchscope: hook %r failed in %s()",
                    hook,
                    method,
                    exc=True,
                )


def hook_runner(hooks: object, log: RateLimitedLog) -> HookRunner | None:
    """Validate a scope's ``hooks=`` option; the runner, or None when there are none."""
    if hooks is None:
        return None
    if isinstance(hooks, type):
        # A class, not an instance (hooks=MyHooks): say so, it is the likely slip.
        raise TypeError(
            f"'hooks' must be a batchscope.Hooks or a list of them, got the class "
            f"{hooks.__name__} (pass an instance: {hooks.__name__}())"
        )
    if not isinstance(hooks, (Hooks, Iterable)) or isinstance(hooks, (str, bytes)):
        raise TypeError(
            f"'hooks' must be a batchscope.Hooks or a list of them, got {type(hooks).__name__}"
        )
    listed: list[object] = (
        [hooks] if isinstance(hooks, Hooks) else list(cast("Iterable[object]", hooks))
    )
    for hook in listed:
        if not isinstance(hook, Hooks):
            raise TypeError(
                f"'hooks' must be a batchscope.Hooks or a list of them, got {type(hook).__name__}"
            )
    return HookRunner(cast("Sequence[Hooks]", listed), log) if listed else None
