"""The @batch decorator: serving(), per-item calls, many(), methods with per-instance scopes."""

from __future__ import annotations

import dataclasses
import gc
import threading
import weakref
from typing import Any

import anyio
import pytest

import batchscope as bs
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio


async def test_decorated_async_function_batches_concurrent_calls() -> None:
    """Concurrent calls of a decorated async def meet in one batch of the serving scope."""
    batches: list[list[int]] = []

    @bs.batch(max_batch_size=4, max_wait=60)
    async def double(items: list[int]) -> list[int]:
        batches.append(list(items))
        return [x * 2 for x in items]

    results: dict[int, int] = {}

    async def call(x: int) -> None:
        results[x] = await double(x)

    async with double.serving() as scope, anyio.create_task_group() as tg:
        for x in range(4):
            tg.start_soon(call, x)
    assert results == {0: 0, 1: 2, 2: 4, 3: 6}
    assert [sorted(b) for b in batches] == [[0, 1, 2, 3]]
    stats = scope.statistics()
    assert (stats.batches, stats.completed) == (1, 4)
    assert stats.release_reasons["size"] == 1


async def test_decorated_sync_function_runs_in_a_worker_thread() -> None:
    """A decorated plain def is batched too, and runs off the event loop thread."""
    threads: list[int] = []

    @bs.batch(max_batch_size=2, max_wait=60)
    def square(items: list[int]) -> list[int]:
        threads.append(threading.get_ident())
        return [x * x for x in items]

    async with square.serving(), anyio.create_task_group() as tg:
        tg.start_soon(square, 3)
        tg.start_soon(square, 4)
    assert len(threads) == 1  # one batch
    assert threads[0] != threading.get_ident()  # not on the event loop's thread
    assert square.statistics().completed == 2


@pytest.mark.virtual_time  # a lone call waits max_wait=60 for companions
async def test_fake_batch_function_can_be_decorated() -> None:
    """Any callable batch function works, and the results come back per caller."""
    fake = FakeBatchFunction[int, str](str)
    to_text = bs.batch(max_batch_size=3, max_wait=60)(fake)
    async with to_text.serving(), anyio.create_task_group() as tg:
        for x in range(3):
            tg.start_soon(to_text, x)
    async with to_text.serving():
        assert await to_text(7) == "7"
    assert sorted(fake.batches[0]) == [0, 1, 2]
    assert fake.batches[1] == [7]


async def test_many_keeps_input_order() -> None:
    """many() submits every item and returns the results in input order."""
    fake = FakeBatchFunction[int, int](lambda x: x + 100)
    plus = bs.batch(max_batch_size=8, max_wait=0)(fake)
    async with plus.serving():
        assert await plus.many([5, 1, 3]) == [105, 101, 103]
    assert sorted(fake.items) == [1, 3, 5]
    assert plus.statistics().submitted == 3


async def test_many_return_exceptions_puts_errors_in_place() -> None:
    """many(return_exceptions=True) returns a failed item's exception at its position."""
    bad = ValueError("bad item")
    plus = bs.batch(max_wait=0)(FakeBatchFunction[int, int](fail_items={2: bad}))
    async with plus.serving():
        assert await plus.many([1, 2, 3], return_exceptions=True) == [1, bad, 3]
        with pytest.raises(ValueError, match="bad item"):
            await plus.many([1, 2, 3])


async def test_errors_of_fn_reach_the_caller_unchanged() -> None:
    """fn's own exception type reaches the caller of embed(x)."""
    fake = FakeBatchFunction[int, int](raise_on={1: KeyError("no such key")})
    lookup = bs.batch(max_wait=0)(fake)
    async with lookup.serving():
        with pytest.raises(KeyError, match="no such key"):
            await lookup(1)
        assert await lookup(2) == 2


async def test_priority_passes_through_to_submit() -> None:
    """priority= is accepted by a call and passed on to the scope."""
    fake = FakeBatchFunction[int, int]()
    ident = bs.batch(max_wait=0, max_batch_size=1)(fake)
    async with ident.serving():
        assert await ident(1, priority=5) == 1
    assert fake.batches == [[1]]


@pytest.mark.realclock
async def test_a_non_finite_priority_is_refused(cpu_hog: Any) -> None:
    """A call with priority=nan raises ValueError naming 'priority', as submit does."""
    fake = FakeBatchFunction[int, int]()
    ident = bs.batch(max_wait=0, policy="priority")(fake)
    async with ident.serving():
        with pytest.raises(ValueError, match="'priority' must be a finite number"):
            await ident(1, priority=float("nan"))
    assert fake.batches == []


async def test_call_without_serving_raises_no_active_scope() -> None:
    """Calling with no open serving() raises NoActiveScopeError showing how to open one."""

    @bs.batch()
    async def embed(texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    with pytest.raises(bs.NoActiveScopeError, match=r"'async with embed\.serving\(\): \.\.\.'"):
        await embed("hello")
    with pytest.raises(RuntimeError, match="is not serving"):
        await embed.many(["a"])
    with pytest.raises(bs.NoActiveScopeError):
        _ = embed.scope


async def test_call_after_serving_exits_raises_no_active_scope() -> None:
    """Once the serving() block has exited, calls raise NoActiveScopeError again."""
    fake = FakeBatchFunction[int, int]()
    ident = bs.batch(max_wait=0)(fake)
    async with ident.serving():
        assert await ident(1) == 1
    with pytest.raises(bs.NoActiveScopeError):
        await ident(2)
    assert fake.items == [1]


async def test_serving_twice_at_once_is_a_runtime_error() -> None:
    """Opening serving() while it is already open is a clear RuntimeError; the first goes on."""
    ident = bs.batch(max_wait=0)(FakeBatchFunction[int, int]())
    async with ident.serving():
        with pytest.raises(RuntimeError, match="already serving"):
            async with ident.serving():
                pass  # pragma: no cover
        assert await ident(1) == 1


async def test_serving_again_after_exit_opens_a_new_scope() -> None:
    """serving() can be opened again after it exits; each time a fresh BatchScope."""
    ident = bs.batch(max_wait=0)(FakeBatchFunction[int, int]())
    async with ident.serving() as first:
        await ident(1)
    async with ident.serving() as second:
        assert ident.scope is second
        await ident(2)
        await ident(3)
    assert first is not second
    assert ident.statistics().submitted == 2  # the last scope's numbers


async def test_scope_is_visible_to_tasks_started_outside_serving() -> None:
    """The open scope is seen by every task, not only those started inside serving()."""
    fake = FakeBatchFunction[int, int]()
    ident = bs.batch(max_wait=0)(fake)
    opened, done = anyio.Event(), anyio.Event()
    results: list[int] = []

    async def elsewhere() -> None:
        await opened.wait()
        results.append(await ident(42))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(elsewhere)  # started before serving() opened
        await anyio.wait_all_tasks_blocked()
        async with ident.serving():
            opened.set()
            await done.wait()
    assert results == [42]
    assert fake.batches == [[42]]


async def test_body_exception_propagates_and_stops_serving() -> None:
    """An exception in the serving() block propagates unchanged; the function stops serving."""
    ident = bs.batch(max_wait=0)(FakeBatchFunction[int, int]())
    with pytest.raises(ZeroDivisionError):
        async with ident.serving():
            _ = 1 / 0
    with pytest.raises(bs.NoActiveScopeError):
        await ident(1)
    async with ident.serving():
        assert await ident(1) == 1


async def test_invalid_options_fail_at_decoration() -> None:
    """Options are validated when the decorator is applied, naming the option."""
    with pytest.raises(ValueError, match="max_batch_size"):
        bs.batch(max_batch_size=0)(FakeBatchFunction[int, int]())
    with pytest.raises(TypeError, match="no_such_option"):
        bs.batch(no_such_option=1)(FakeBatchFunction[int, int]())  # type: ignore[call-arg]


async def test_metadata_of_the_wrapped_function_is_kept() -> None:
    """The batched function keeps the wrapped function's name, docstring and __wrapped__."""

    async def embed(texts: list[str]) -> list[int]:
        """Embed texts."""
        return [len(t) for t in texts]

    batched = bs.batch()(embed)
    assert isinstance(batched, bs.BatchedFunction)
    assert batched.__name__ == "embed"
    assert batched.__doc__ == "Embed texts."
    assert batched.__wrapped__ is embed
    assert "embed" in repr(batched)


class Model:
    """A model with a batched method; records each batch with the instance that ran it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.batches: list[list[int]] = []

    @bs.batch(max_batch_size=3, max_wait=60)
    async def embed(self, items: list[int]) -> list[str]:
        """Embed items with this model."""
        self.batches.append(list(items))
        return [f"{self.name}:{x}" for x in items]


async def test_method_calls_batch_on_their_instance() -> None:
    """A batched method gets self, batches concurrent calls, and returns per-caller results."""
    model = Model("a")
    results: dict[int, str] = {}

    async def call(x: int) -> None:
        results[x] = await model.embed(x)

    async with model.embed.serving(), anyio.create_task_group() as tg:
        for x in range(3):
            tg.start_soon(call, x)
    assert results == {0: "a:0", 1: "a:1", 2: "a:2"}
    assert [sorted(b) for b in model.batches] == [[0, 1, 2]]
    assert model.embed.statistics().batches == 1


async def test_two_instances_have_independent_scopes() -> None:
    """Each instance has its own scope: batches never mix instances, statistics are separate."""
    a, b = Model("a"), Model("b")
    results: dict[tuple[str, int], str] = {}

    async def call(model: Model, x: int) -> None:
        results[model.name, x] = await model.embed(x)

    async with a.embed.serving(), b.embed.serving(), anyio.create_task_group() as tg:
        assert a.embed.scope is not b.embed.scope
        for x in range(3):
            tg.start_soon(call, a, x)
            tg.start_soon(call, b, x)
    assert all(value == f"{name}:{x}" for (name, x), value in results.items())
    assert len(results) == 6
    assert [sorted(batch) for batch in a.batches] == [[0, 1, 2]]
    assert [sorted(batch) for batch in b.batches] == [[0, 1, 2]]
    assert a.embed.statistics().completed == b.embed.statistics().completed == 3


@pytest.mark.virtual_time  # a lone call waits max_wait=60 for companions
async def test_serving_one_instance_does_not_serve_another() -> None:
    """An instance whose scope is not open raises NoActiveScopeError, naming the method."""
    a, b = Model("a"), Model("b")
    async with a.embed.serving():
        assert await a.embed(1) == "a:1"
        with pytest.raises(bs.NoActiveScopeError, match=r"Model\.embed is not serving"):
            await b.embed(1)
    assert b.batches == []


async def test_method_on_the_class_is_the_descriptor() -> None:
    """Model.embed is the BatchedMethod; each instance gets the same BatchedFunction each time."""
    model = Model("a")
    assert isinstance(Model.embed, bs.BatchedMethod)
    assert Model.embed.__doc__ == "Embed items with this model."
    assert isinstance(model.embed, bs.BatchedFunction)
    assert model.embed is model.embed
    assert model.embed is not Model("b").embed


@pytest.mark.virtual_time  # a lone call waits max_wait=60 for companions
async def test_method_state_does_not_keep_instances_alive() -> None:
    """After serving, dropping the last reference frees the instance (state is weak)."""
    model = Model("a")
    async with model.embed.serving():
        await model.embed(1)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


@dataclasses.dataclass
class Unhashable:
    """A dataclass with eq=True, so instances are unhashable."""

    offset: int

    @bs.batch(max_wait=0)
    def shift(self, items: list[int]) -> list[int]:
        return [x + self.offset for x in items]


async def test_method_of_unhashable_instances() -> None:
    """Per-instance scopes work for unhashable instances and for sync methods."""
    one, two = Unhashable(1), Unhashable(1)  # equal, yet separate scopes
    async with one.shift.serving():
        assert await one.shift(1) == 2
        with pytest.raises(bs.NoActiveScopeError):
            await two.shift(1)


@pytest.mark.anyio
async def test_method_cache_entries_are_per_instance() -> None:
    """One cache= on a batched method never answers one instance with another's result."""
    cache: dict[object, object] = {}

    class Scaler:
        def __init__(self, factor: int) -> None:
            self.factor = factor

        @bs.batch(max_wait=0, cache=cache)
        async def scale(self, items: list[int]) -> list[int]:
            return [x * self.factor for x in items]

    a, b = Scaler(1), Scaler(100)
    async with a.scale.serving(), b.scale.serving():
        assert await a.scale(2) == 2
        assert await b.scale(2) == 200
        assert await a.scale(2) == 2  # from the cache, a's own entry
    assert sorted(cache.values()) == [2, 200]  # type: ignore[type-var]
