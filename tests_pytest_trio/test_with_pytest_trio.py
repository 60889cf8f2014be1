"""
A Trio project tests its batchscope code with pytest-trio, as it tests any Trio code:
no AnyIO plugin, no markers (``trio_mode``), the ``nursery`` and ``autojump_clock``
fixtures, and :class:`batchscope.testing.FakeBatchFunction` recording the batches.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import batchscope as bs
from batchscope.testing import FakeBatchFunction


async def test_a_scope_opened_in_the_test_batches_concurrent_callers() -> None:
    """Twenty Trio tasks submitting at once are served in batches of at most eight."""
    fake = FakeBatchFunction[int, int](lambda x: x * 10, delay=0.01)
    results: dict[int, int] = {}

    async def caller(n: int) -> None:
        results[n] = await scope.submit(n)

    async with (
        bs.BatchScope(fake, max_batch_size=8, max_wait=0.05) as scope,
        trio.open_nursery() as nursery,
    ):
        for n in range(20):
            nursery.start_soon(caller, n)
    assert results == {n: n * 10 for n in range(20)}
    assert sorted(fake.items) == list(range(20))
    assert all(len(batch) <= 8 for batch in fake.batches)
    assert len(fake.batches) < 20
    assert scope.statistics().completed == 20


async def test_a_scope_served_from_the_nursery_fixture(
    served: bs.BatchScope[str, int], fake: FakeBatchFunction[str, int]
) -> None:
    """A scope opened by a fixture in the nursery fixture serves the test's tasks."""
    got: list[int] = []

    async def handler(text: str) -> None:
        got.append(await served.submit(text))

    async with trio.open_nursery() as handlers:
        for text in ("a", "bb", "ccc"):
            handlers.start_soon(handler, text)
    assert sorted(got) == [1, 2, 3]
    assert sorted(fake.items) == ["a", "bb", "ccc"]
    assert served.statistics().completed == 3


async def test_the_fake_fails_chosen_items_alone(
    served: bs.BatchScope[str, int], fake: FakeBatchFunction[str, int]
) -> None:
    """An item the fake fails raises in its own caller only; the batch is recorded whole."""
    outcomes = await served.submit_many(["ok", "boom", "fine"], return_exceptions=True)
    assert outcomes[0] == 2
    assert outcomes[2] == 4
    assert isinstance(outcomes[1], ValueError)
    with pytest.raises(ValueError, match="boom"):
        await served.submit("boom")
    assert fake.batches == [["ok", "boom", "fine"], ["boom"]]


async def test_a_lone_item_waits_max_wait_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On the autojump clock, a lone item waits max_wait exactly, then the batch runs."""
    fake = FakeBatchFunction[int, int](delay=0.1)
    async with bs.BatchScope(fake, max_wait=0.5) as scope:
        assert await scope.submit(1) == 1
    assert fake.call_times == [pytest.approx(0.5)]
    assert trio.current_time() == pytest.approx(0.6)


async def test_a_cancelled_caller_is_withdrawn(autojump_clock: trio.testing.MockClock) -> None:
    """A caller cancelled while its item waits for max_wait withdraws it from the batch."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_wait=0.5) as scope:
        async with trio.open_nursery() as callers:
            callers.start_soon(scope.submit, 1)
            await trio.testing.wait_all_tasks_blocked()
            callers.cancel_scope.cancel()
        assert await scope.submit(2) == 2
    assert fake.batches == [[2]]
    assert scope.statistics().cancelled == 1
