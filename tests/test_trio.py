"""
The caller's deadline as ``submit`` reads it under Trio (``_trio.deadline_reader``): a walk
of Trio's cancel statuses that must give the value of ``trio.current_effective_deadline()``.
"""

from __future__ import annotations

import itertools
import math
from contextlib import ExitStack

import anyio
import anyio.lowlevel
import pytest

from batchscope._completion import loop_calls

pytestmark = pytest.mark.anyio

#: One cancel scope of a nest: (deadline offset or None, shield, cancelled).
LEVELS = list(itertools.product((None, 5.0, 9.0), (False, True), (False, True)))


@pytest.fixture
def trio_only(anyio_backend_name: str) -> None:
    if anyio_backend_name != "trio":
        pytest.skip("Trio's deadline reader")


def _nests(depth: int) -> list[tuple[tuple[float | None, bool, bool], ...]]:
    return [nest for n in range(depth + 1) for nest in itertools.product(LEVELS, repeat=n)]


@pytest.mark.usefixtures("trio_only")
async def test_the_fast_path_is_found_under_trio() -> None:
    """Under Trio the scope reads deadlines through _trio's own walk (else CI fails)."""
    import trio

    deadline = loop_calls().deadline
    assert deadline is not trio.current_effective_deadline
    assert deadline.__module__ == "batchscope._trio"


@pytest.mark.usefixtures("trio_only")
async def test_the_deadline_agrees_with_trio_in_every_nest() -> None:
    """Nested, shielded and cancelled scopes up to three deep: the same value as Trio's."""
    import trio

    deadline = loop_calls().deadline
    now = anyio.current_time()
    checked = 0
    for nest in _nests(3):
        with ExitStack() as stack:
            for offset, shield, cancelled in nest:
                scope = stack.enter_context(
                    trio.CancelScope(
                        deadline=math.inf if offset is None else now + offset, shield=shield
                    )
                )
                if cancelled:
                    scope.cancel()
            assert deadline() == trio.current_effective_deadline(), nest
            checked += 1
    assert checked == sum(len(LEVELS) ** n for n in range(4))


@pytest.mark.usefixtures("trio_only")
async def test_a_moved_relative_and_inherited_deadline_agree_with_trio() -> None:
    """A deadline moved after entry, a relative one, and one inherited by a child task."""
    import trio

    deadline = loop_calls().deadline
    seen: list[tuple[float, float]] = []

    async def child() -> None:
        seen.append((deadline(), trio.current_effective_deadline()))

    with trio.CancelScope() as outer:
        assert deadline() == trio.current_effective_deadline() == math.inf
        outer.deadline = anyio.current_time() + 30
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
        seen.append((deadline(), trio.current_effective_deadline()))
        with trio.CancelScope(relative_deadline=10):
            seen.append((deadline(), trio.current_effective_deadline()))
            await anyio.lowlevel.checkpoint()
        outer.deadline = math.inf
        seen.append((deadline(), trio.current_effective_deadline()))
    assert all(mine == theirs for mine, theirs in seen)
    assert seen[0][0] == seen[1][0] > seen[2][0] and seen[3][0] == math.inf
