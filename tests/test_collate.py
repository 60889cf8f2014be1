"""The collator seam: fn gets a collated batch, results come back per item."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import batchscope as bs

pytestmark = pytest.mark.anyio


class JoinCollator:
    """Collates strings into one comma-joined string; splits the upper-cased result."""

    def __init__(self) -> None:
        self.contexts: list[int] = []

    async def collate(self, items: list[str]) -> tuple[str, int]:
        if any("," in item for item in items):
            raise ValueError("items may not contain commas")
        self.contexts.append(len(items))
        return ",".join(items), len(items)

    async def split(self, output: Any, context: int) -> Sequence[str | Exception]:
        parts: list[str] = output.split(",")
        assert len(parts) == context
        return parts


async def test_fn_receives_the_collated_batch_and_results_are_split() -> None:
    """fn sees collate()'s output; each caller gets its own part of split()'s result."""
    seen: list[str] = []

    async def upper(joined: str) -> str:
        seen.append(joined)
        return joined.upper()

    collator = JoinCollator()
    async with bs.BatchScope[str, str](upper, collate=collator, max_batch_size=3) as scope:
        assert await scope.submit_many(["a", "b", "c"]) == ["A", "B", "C"]
    assert seen == ["a,b,c"]
    assert collator.contexts == [3]


async def test_sync_fn_with_collator_runs_in_a_thread() -> None:
    """A sync fn gets the collated input in its worker thread."""

    def upper(joined: str) -> str:
        return joined.upper()

    async with bs.BatchScope[str, str](upper, collate=JoinCollator()) as scope:
        assert await scope.submit("x") == "X"


async def test_collate_error_fails_that_batch_only() -> None:
    """An exception from collate() fails every item of its batch; the scope goes on."""

    async def echo(joined: str) -> str:
        return joined

    async with bs.BatchScope[str, str](
        echo, collate=JoinCollator(), max_batch_size=2, max_wait=0
    ) as scope:
        outcomes = await scope.submit_many(["a", "b,", "c", "d"], return_exceptions=True)
    assert isinstance(outcomes[0], ValueError) and isinstance(outcomes[1], ValueError)
    assert outcomes[2:] == ["c", "d"]


def test_collate_must_be_a_collator() -> None:
    """Something without async collate()/split() is rejected at construction."""
    with pytest.raises(TypeError, match="'collate' must be a collator"):
        bs.BatchScope(lambda items: items, collate=object())  # type: ignore[call-overload]
