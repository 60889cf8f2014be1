"""
Room in the queue: ``max_queue_size`` places for pending items.

A semaphore, with the per-item path of a counter: taking a place is a decrement, and a
batch hands back all of its places at once (``release(n)``, O(1) when nobody waits).
Only a caller that finds the queue full parks, first come first served, on an
``anyio.Event`` of its own; ``anyio.Semaphore`` does the same work with a backend object
and a call per place, which the per-item path pays for on every item.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from ._hooks import HookRunner

__all__ = ["AdmissionCounts", "Room", "wait_counted"]


class AdmissionCounts(Protocol):
    """
    The counters a wait for room, or a refusal, moves (a scope's and a continuous
    scope's recorder).
    """

    admitting: int
    cancelled: int
    rejected: int


async def wait_counted(room: Room, recorder: AdmissionCounts, hooks: HookRunner | None) -> None:
    """
    Wait for a place in *room*, counted as ``admitting`` meanwhile: a caller cancelled
    while it waits counts as ``cancelled`` (and the hooks hear ``item_cancelled``).
    """
    recorder.admitting += 1  # counted, not yet queued
    try:
        await room.take()
    except BaseException:
        recorder.admitting -= 1
        recorder.cancelled += 1
        if hooks is not None:
            hooks.call("item_cancelled", False)
        raise
    recorder.admitting -= 1


class Room:
    """``size`` places; :meth:`take_nowait` or :meth:`take` one, :meth:`release` *n*."""

    __slots__ = ("_waiters", "free")

    def __init__(self, size: int) -> None:
        #: Places nobody holds or is being handed.
        self.free: int = size
        self._waiters: deque[anyio.Event] = deque()

    @property
    def waiting(self) -> int:
        """Callers parked in :meth:`take`."""
        return len(self._waiters)

    def take_nowait(self) -> bool:
        """Take a place if one is free; False if not."""
        if self.free:  # never while callers wait: release() hands places to them first
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """
        Wait for a place, first come first served.

        Cancellation:
            While waiting: no place is held; one handed over at that very moment is
            passed on to the next waiter.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self.take_nowait():
            await anyio.lowlevel.cancel_shielded_checkpoint()  # holds the place: no leaving
            return
        handed = anyio.Event()
        self._waiters.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():
                self.release(1)  # handed a place while leaving: pass it on
            else:
                self._waiters.remove(handed)
            raise

    def release(self, count: int = 1) -> None:
        """Give *count* places back, handing them to waiters first."""
        waiters = self._waiters
        while count and waiters:
            waiters.popleft().set()
            count -= 1
        self.free += count
