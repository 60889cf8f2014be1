"""
Fixtures of a Trio application's test suite, written for pytest-trio (``trio_mode``).

``served`` opens a BatchScope in a task of pytest-trio's ``nursery`` fixture, as a Trio
service started with ``nursery.start`` would: the scope stays open for the whole test and
is cancelled with the nursery when the test ends.
"""

from __future__ import annotations

import pytest
import trio

import batchscope as bs
from batchscope.testing import FakeBatchFunction


@pytest.fixture
def fake() -> FakeBatchFunction[str, int]:
    """The batch function the application would call: here a recording fake (len)."""
    return FakeBatchFunction[str, int](len, delay=0.01, fail_items={"boom": ValueError("boom")})


@pytest.fixture
async def served(
    nursery: trio.Nursery, fake: FakeBatchFunction[str, int]
) -> bs.BatchScope[str, int]:
    """A BatchScope serving ``fake``, open in the test's nursery until the test ends."""

    async def serve(*, task_status: trio.TaskStatus[bs.BatchScope[str, int]]) -> None:
        async with bs.BatchScope(fake, max_batch_size=8, max_wait=0.005) as scope:
            task_status.started(scope)
            await trio.sleep_forever()

    scope: bs.BatchScope[str, int] = await nursery.start(serve)
    return scope
