"""Room in the queue: a counter on the per-item path, FIFO waiters when full."""

from __future__ import annotations

import anyio
import pytest

from batchscope._room import Room

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def test_places_are_taken_and_given_back_in_bulk() -> None:
    room = Room(3)
    assert [room.take_nowait() for _ in range(4)] == [True, True, True, False]
    room.release(2)
    assert room.free == 2
    assert room.take_nowait()


async def test_waiters_are_served_first_come_first_served() -> None:
    room = Room(1)
    assert room.take_nowait()
    served: list[int] = []

    async def wait(n: int) -> None:
        await room.take()
        served.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(wait, n)
            await anyio.sleep(0.1)
        assert room.waiting == 3
        room.release(2)  # two places: for the first two waiters (who then run in any order)
        await anyio.sleep(0.1)
        assert sorted(served) == [0, 1]
        assert not room.take_nowait()  # nothing free while the third still waits
        room.release(1)
    assert served[2] == 2
    assert room.free == 0


async def test_a_waiter_cancelled_as_it_is_handed_a_place_passes_it_on() -> None:
    room = Room(1)
    assert room.take_nowait()
    got: list[str] = []
    leaving = anyio.CancelScope()

    async def first() -> None:
        with leaving:
            await room.take()
            got.append("first")

    async def second() -> None:
        await room.take()
        got.append("second")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.sleep(0.1)
        tg.start_soon(second)
        await anyio.sleep(0.1)
        leaving.cancel()
        room.release(1)  # handed to "first" as it leaves: it passes the place on
    assert got == ["second"]
    assert (room.free, room.waiting) == (0, 0)


async def test_take_with_a_free_place_is_a_checkpoint() -> None:
    room = Room(1)
    with anyio.CancelScope() as cancelled:
        cancelled.cancel()
        await room.take()
    assert cancelled.cancelled_caught
    assert room.free == 1  # a cancelled take holds nothing
