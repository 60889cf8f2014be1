"""
How a :class:`BatchScope` is built, opened and closed: the wiring of its engine's parts.

``BatchScope(fn, ...)`` checks fn (:func:`check_function`) and, once its options are a
:class:`ScopeConfig`, builds the :class:`Engine` (:func:`new_engine`). ``async with``
runs :func:`opened`: it joins the shared device, takes the running loop's clock and
parking calls, decides ``submit``'s inline path (``engine.plain``, ``engine.priced``),
builds the channel, the room in the queue, the rate buckets, the executor, the pool and
the scheduler, warms fn up, then runs the scheduler in the scope's task group while the
body runs. Leaving the body normally stops taking items (:func:`close_engine`) and
drains; leaving it with an exception fails everything waiting and cancels the rest. The
façade (``_scope``) keeps the documented entry points; this module speaks to the engine
and never imports the façade.
"""

from __future__ import annotations

import math
import sys
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import anyio
from anyio.abc import TaskGroup

from ._bucketing import LengthPool
from ._cache import CacheFront
from ._completion import loop_calls
from ._config import ScopeConfig
from ._device import Device
from ._engine import Engine
from ._executor import BatchFunction, Collator, Executor, check_collator
from ._hooks import Hooks, RateLimitedLog, hook_runner
from ._items import Item
from ._lifecycle import ScopeState, raise_single
from ._partitions import PartitionedPool
from ._pending import FifoPool, Pool, PriorityPool
from ._resilience import BreakerState, TokenBucket
from ._room import Room
from ._scheduler import Scheduler
from ._streaming import StreamRunner, check_options, is_streaming
from ._warmup import warm_up

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["check_function", "close_engine", "new_engine", "opened"]

In = TypeVar("In")
Out = TypeVar("Out")
#: The façade being opened (its hooks' ``scope_opened(scope)`` argument).
Scope = TypeVar("Scope")


def check_function(fn: object, collate: Collator[Any, Any] | None) -> None:
    """Check the batch function and the collator, before the options are."""
    if not callable(fn):
        raise TypeError(f"'fn' must be callable, not {type(fn).__name__}")
    if collate is not None:
        check_collator(collate)


def new_engine(
    fn: BatchFunction[In, Out] | Callable[[Any], Any],
    collate: Collator[In, Out] | None,
    config: ScopeConfig,
    hooks: Hooks | Sequence[Hooks] | None,
) -> Engine[In, Out]:
    """
    The engine of a scope of *fn* with the validated options *config*, not yet open.

    Raises:
        TypeError: ``device`` is not a :class:`Device`, or fn streams and ``collate`` is
            given.
        ValueError: fn streams and an option does not apply to it.
    """
    device = config.device
    if not isinstance(device, Device | None):
        raise TypeError(f"'device' must be a bs.Device(...), not {type(device).__name__}")
    streaming = is_streaming(fn)
    if streaming:
        check_options(config, collate)
    fn_name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    log = RateLimitedLog()
    runner = hook_runner(hooks, log)
    circuit_breaker = config.circuit_breaker
    engine: Engine[In, Out] = Engine(
        config=config,
        fn_name=fn_name,
        hooks=runner,
        log=log,
        breaker=None if circuit_breaker is None else BreakerState(circuit_breaker),
        capture=config.capture_context or (runner is not None and runner.captures_context),
    )
    engine.streaming = streaming
    if config.cache is not None or config.key is not None:
        engine.front = CacheFront(engine, config.cache, config.key)
    return engine


@asynccontextmanager
async def opened(
    scope: Scope,
    engine: Engine[In, Out],
    fn: BatchFunction[In, Out] | Callable[[Any], Any],
    collate: Collator[In, Out] | None,
) -> AsyncGenerator[Scope, None]:
    """
    Open *scope* (whose engine is *engine*): build the parts, run the scheduler, yield
    *scope* for the body, then close and drain (or abort), and close the scope.
    """
    if engine.state is not ScopeState.NEW:
        raise RuntimeError("a BatchScope can be opened only once; create a new one")
    device = engine.config.device
    if isinstance(device, Device):
        # Checks the loop first: a scope on another loop than the device's raises here.
        engine.device = device.join(
            engine.fn_name,
            engine.config.weight,
            lambda: engine.scheduler.wake(),
            lambda: engine.scheduler.device_due(),
            lambda: engine.scheduler.device_upcoming(),
            lambda load: engine.scheduler.model.predict(load),
        )
    calls = loop_calls()
    engine.clock, engine.deadline = calls.clock, calls.deadline
    engine.recorder.opened_at = engine.clock()
    engine.item_type, engine.new_signal = calls.item_type, calls.new_signal
    config = engine.config
    engine.plain = not (
        engine.streaming
        or engine.front is not None
        or engine.breaker is not None
        or engine.capture
        or config.admission == "deadline"
        or config.partition is not None
    )
    engine.priced = config.cost is not None
    send, receive = anyio.create_memory_object_stream[Item[In, Out]](math.inf)
    engine.send = send
    engine.room = Room(engine.config.max_queue_size)
    limit = engine.config.rate_limit
    if limit is not None and limit.batches_per_second is not None:
        rate = limit.batches_per_second
        engine.batch_bucket = TokenBucket(rate, max(1.0, rate))
    if limit is not None and limit.cost_per_minute is not None:
        engine.cost_bucket = TokenBucket(limit.cost_per_minute / 60, limit.cost_per_minute)
    engine.executor = Executor(engine, fn, collate)
    if engine.streaming:
        engine.executor.stream = StreamRunner(engine, cast(Any, fn), engine.executor)
    engine.scheduler = Scheduler(engine, send, receive, _new_pool(engine), engine.executor)
    try:
        # Before the task group: a failed warmup comes out as itself, never grouped.
        try:
            await warm_up(engine)
        except BaseException:
            receive.close()  # the scheduler that would have closed it never ran
            raise
        async with anyio.create_task_group() as task_group:
            engine.task_group = task_group
            task_group.start_soon(
                _schedule, engine, task_group, name=f"batchscope scheduler of {scope!r}"
            )
            engine.state = ScopeState.OPEN
            if engine.hooks is not None:
                engine.hooks.call("scope_opened", scope)
            try:
                yield scope
            except BaseException as exc:
                _abort(engine, exc)
                raise
            close_engine(engine)
    except BaseExceptionGroup as group:
        # Our own tasks failed (fn raised a BaseException, or a bug in batchscope).
        raise_single(group)
        raise
    finally:
        engine.state = ScopeState.CLOSED
        engine.recorder.closed_at = engine.clock()
        send.close()
        if engine.device is not None:
            engine.device.leave()
        if engine.hooks is not None:
            engine.hooks.call("scope_closed", scope)


def _new_pool(engine: Engine[Any, Any]) -> Pool:
    if engine.config.partition is not None:
        return PartitionedPool(lambda: _policy_pool(engine), engine.recorder.partitions)
    return _policy_pool(engine)


def _policy_pool(engine: Engine[Any, Any]) -> Pool:
    config = engine.config
    if config.policy == "length":
        return LengthPool()
    if config.policy == "priority":
        return PriorityPool(config.aging)
    return FifoPool()


async def _schedule(engine: Engine[Any, Any], task_group: TaskGroup) -> None:
    try:
        await engine.scheduler.run(task_group)
    except BaseException as exc:
        engine.note_crash(exc)
        engine.fail_waiting()
        raise


def close_engine(engine: Engine[Any, Any]) -> None:
    """Stop taking items (``BatchScope.close``): those already queued still run."""
    if engine.state is not ScopeState.OPEN:
        return
    engine.state = ScopeState.CLOSING
    engine.send.close()
    if engine.room.waiting:
        # Wake the first waiter for room; it sees the scope closing and passes the
        # wake-up on, so every waiter gets ScopeClosedError.
        engine.room.release()
    for iterator in list(engine.maps):
        iterator.stop_feeding()


def _abort(engine: Engine[Any, Any], exc: BaseException) -> None:
    """The body failed or was cancelled: fail everything waiting, stop everything."""
    engine.note_crash(exc)
    close_engine(engine)
    engine.state = ScopeState.CLOSING
    engine.fail_waiting()
    error = engine.closed_error()
    for batch in list(engine.executor.running):
        engine.executor.fail_all(batch.items, error)
    engine.task_group.cancel_scope.cancel()
