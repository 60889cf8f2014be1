"""PadCollator on array-api-strict: proves the padding path uses only the Array API."""

from __future__ import annotations

from typing import Any

import pytest

xp = pytest.importorskip("array_api_strict")
pytest.importorskip("array_api_compat")

import batchscope as bs  # noqa: E402
from batchscope.arrays import PadCollator, PaddedBatch, PaddedDict  # noqa: E402

pytestmark = pytest.mark.anyio


def arange(length: int, *trailing: int, dtype: Any = None) -> Any:
    count = length
    for extent in trailing:
        count *= extent
    return xp.reshape(xp.arange(1, count + 1, dtype=dtype or xp.int32), (length, *trailing))


def equal(a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(xp.all(a == b))


@pytest.mark.parametrize("side", ["right", "left"])
async def test_collate_and_split_round_trip(side: str) -> None:
    """Padding, lengths, mask and split work on strict arrays; the dtype is kept."""
    items = [arange(2, 3), arange(4, 3), arange(1, 3)]
    collator = PadCollator(padding_side=side, pad_value=-1, batch_sizes=(4,), pad_to_multiple_of=8)  # type: ignore[arg-type]
    batch, layout = await collator.collate(items)
    assert isinstance(batch, PaddedBatch)
    assert batch.data.shape == (4, 8, 3)
    assert batch.data.dtype == xp.int32
    assert equal(batch.lengths, xp.asarray([2, 4, 1, 0], dtype=xp.int64))
    assert int(xp.sum(xp.astype(batch.mask, xp.int32))) == 7
    assert bool(xp.all(batch.data[3, ...] == -1))
    results = await collator.split(batch.data, layout)
    assert all(equal(got, want) for got, want in zip(results, items, strict=True))


async def test_dict_items_and_copies() -> None:
    """Dict items pad per key; copy_results copies through xp.asarray(copy=True)."""
    items = [{"ids": arange(n), "mask": xp.ones((n,), dtype=xp.int8)} for n in (3, 1)]
    collator = PadCollator(pad_value={"ids": 5}, copy_results=True)
    batch, layout = await collator.collate(items)
    assert isinstance(batch, PaddedDict)
    assert equal(batch["ids"][1, ...], xp.asarray([1, 5, 5], dtype=xp.int32))
    results = await collator.split(batch, layout)
    assert equal(results[1]["ids"], items[1]["ids"])
    assert equal(results[0]["mask"], items[0]["mask"])


async def test_mismatched_dtype_is_reported() -> None:
    """Strict arrays of different dtypes fail the batch with a TypeError."""
    with pytest.raises(TypeError, match="dtype"):
        await PadCollator().collate([arange(1), arange(1, dtype=xp.int64)])


async def test_end_to_end_in_a_scope() -> None:
    """A scope batches strict arrays through PadCollator under every backend."""

    async def plus_one(batch: PaddedBatch) -> Any:
        return batch.data + 1

    items = [arange(n) for n in (1, 2, 3)]
    async with bs.BatchScope(plus_one, collate=PadCollator(), max_batch_size=3) as scope:
        results = await scope.submit_many(items)
    assert all(equal(got, want + 1) for got, want in zip(results, items, strict=True))
