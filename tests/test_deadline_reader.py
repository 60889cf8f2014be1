"""
The caller's deadline as ``submit`` reads it (``_completion.loop_calls().deadline``): under
asyncio a walk of AnyIO's cancel scopes with the loop bound once (``_asyncio``), under Trio
a walk of Trio's cancel statuses (``_trio``), elsewhere AnyIO's own; always the value of
``anyio.current_effective_deadline()``, and the public look-up when the internals moved.
"""

from __future__ import annotations

import itertools
import math
from contextlib import ExitStack

import anyio
import anyio.lowlevel
import pytest

import batchscope as bs
import batchscope._asyncio
from batchscope._completion import anyio_get_async_backend, loop_calls
from batchscope.testing import FakeBatchFunction

pytestmark = pytest.mark.anyio

#: One cancel scope of a nest: (deadline offset or None, shield, cancelled).
LEVELS = list(itertools.product((None, 5.0, 9.0), (False, True), (False, True)))


def _nests(depth: int) -> list[tuple[tuple[float | None, bool, bool], ...]]:
    return [nest for n in range(depth + 1) for nest in itertools.product(LEVELS, repeat=n)]


async def test_the_fast_path_is_found(anyio_backend_name: str) -> None:
    """Under asyncio the scope reads deadlines through _asyncio, under Trio through _trio."""
    get_async_backend = anyio_get_async_backend()
    assert get_async_backend is not None
    deadline = loop_calls().deadline
    assert deadline is not get_async_backend().current_effective_deadline
    if anyio_backend_name == "asyncio":
        assert deadline.__module__ == "batchscope._asyncio"
    elif anyio_backend_name == "trio":
        import trio

        assert deadline is not trio.current_effective_deadline
        assert deadline.__module__ == "batchscope._trio"
    else:
        assert deadline.__module__ not in ("batchscope._asyncio", "batchscope._trio")


async def test_the_deadline_agrees_with_anyio_in_every_nest() -> None:
    """Nested, shielded and cancelled scopes up to three deep: the same value as AnyIO's."""
    deadline = loop_calls().deadline
    now = anyio.current_time()
    checked = 0
    for nest in _nests(3):
        with ExitStack() as stack:
            for offset, shield, cancelled in nest:
                scope = stack.enter_context(
                    anyio.CancelScope(
                        deadline=math.inf if offset is None else now + offset, shield=shield
                    )
                )
                if cancelled:
                    scope.cancel()
            assert deadline() == anyio.current_effective_deadline(), nest
            checked += 1
    assert checked == sum(len(LEVELS) ** n for n in range(4))


async def test_a_moved_deadline_and_a_child_task_agree_with_anyio() -> None:
    """A deadline set after the scope opened, one inherited by a child task, a nested one."""
    deadline = loop_calls().deadline
    seen: list[tuple[float, float]] = []

    async def child() -> None:
        seen.append((deadline(), anyio.current_effective_deadline()))

    with anyio.CancelScope() as outer:
        assert deadline() == anyio.current_effective_deadline()
        outer.deadline = anyio.current_time() + 30
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
        seen.append((deadline(), anyio.current_effective_deadline()))
        with anyio.move_on_after(10):  # a relative deadline, sooner than the outer one
            seen.append((deadline(), anyio.current_effective_deadline()))
            await anyio.lowlevel.checkpoint()
        outer.deadline = math.inf
        seen.append((deadline(), anyio.current_effective_deadline()))
    assert all(mine == theirs for mine, theirs in seen)
    assert seen[0][0] == seen[1][0] > seen[2][0] and seen[3][0] == math.inf


async def test_without_anyio_internals_the_public_lookup_serves(
    monkeypatch: pytest.MonkeyPatch, anyio_backend_name: str
) -> None:
    """If AnyIO moved its internals, submit reads AnyIO's public deadline, and still works."""
    monkeypatch.setattr(batchscope._asyncio, "_anyio_task_states", lambda: None)
    assert batchscope._asyncio.deadline_for(None) is None
    get_async_backend = anyio_get_async_backend()
    assert get_async_backend is not None
    if anyio_backend_name == "asyncio":
        assert loop_calls().deadline == get_async_backend().current_effective_deadline
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_batch_size=2, max_wait=0.01) as scope:
        with anyio.fail_after(5):
            assert await scope.submit(3) == 3
        stats = scope.statistics()
    assert fake.batches == [[3]]
    assert (stats.submitted, stats.completed) == (1, 1)


@pytest.mark.parametrize("moved", ["missing", "disagreeing"])
async def test_without_trio_internals_trio_public_lookup_serves(
    monkeypatch: pytest.MonkeyPatch, anyio_backend_name: str, moved: str
) -> None:
    """If Trio moved the fields _trio reads, submit reads Trio's public deadline, and works."""
    if anyio_backend_name != "trio":
        pytest.skip("Trio's deadline reader")
    import trio

    from batchscope import _trio

    def moved_fields() -> float:
        if moved == "missing":
            raise AttributeError("_cancel_status")
        return 0.0  # a walk that no longer agrees with Trio

    monkeypatch.setattr(_trio, "_deadline", moved_fields)
    assert loop_calls().deadline is trio.current_effective_deadline
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake, max_batch_size=2, max_wait=0.01) as scope:
        with anyio.fail_after(5):
            assert await scope.submit(3) == 3
    assert fake.batches == [[3]]
