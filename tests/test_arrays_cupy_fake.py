"""
The CuPy pipeline's bookkeeping, on every machine: a fake ``cupy`` module backed by NumPy.

The fake (``tests/fake_cupy.py``) copies synchronously but reports its CUDA events as
pending for a few queries, so the pipeline's waiting, pinned-buffer pool and copy layout
run exactly as on a GPU. It proves the Python side (offsets, pool reuse, event waits,
result routing); only tests/test_arrays_cupy.py on a real GPU proves the CUDA side.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("array_api_compat")

import batchscope as bs  # noqa: E402
from batchscope.arrays import PadCollator, PaddedBatch, PaddedDict  # noqa: E402
from fake_cupy import Event, FakeArray, fake_cupy  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def cupy(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module


def pool_of(collator: PadCollator) -> Any:
    stager = collator._stager  # the pool is what these tests are about
    assert stager is not None and stager.pool is not None
    return stager.pool


@pytest.mark.parametrize("wait", ["thread", "poll"])
@pytest.mark.parametrize("side", ["right", "left"])
async def test_staged_round_trip(wait: str, side: str) -> None:
    """fn sees device arrays padded right; callers get NumPy results of their own."""
    seen: list[Any] = []

    def model(batch: PaddedBatch) -> Any:
        seen.append((type(batch.data), batch.lengths.tolist(), batch.mask.sum(axis=1).tolist()))
        return batch.data * 2

    items = [np.arange(1, 3 * n + 1, dtype=np.int16).reshape(n, 3) for n in (2, 4, 1)]
    collator = PadCollator(
        xp="cupy",
        wait=wait,  # type: ignore[arg-type]
        padding_side=side,  # type: ignore[arg-type]
        batch_sizes=(4,),
        pad_to_multiple_of=8,
    )
    async with bs.BatchScope(model, collate=collator, max_batch_size=4) as scope:
        results: list[Any] = await scope.submit_many(items)
    assert seen == [(FakeArray, [2, 4, 1, 0], [2, 4, 1, 0])]
    for got, want in zip(results, items, strict=True):
        assert type(got) is np.ndarray and got.dtype == np.int16
        np.testing.assert_array_equal(got, want * 2)


async def test_pinned_buffers_are_reused() -> None:
    """Batch after batch reuses the same pinned buffers (one each way)."""

    async def model(batch: PaddedBatch) -> Any:
        return batch.data.sum(axis=1)

    collator = PadCollator(xp="cupy")
    async with bs.BatchScope(model, collate=collator, max_batch_size=4) as scope:
        for _ in range(10):
            await scope.submit_many([np.ones((n, 2), np.float32) for n in (1, 2, 3, 4)])
    pool = pool_of(collator)
    assert (pool.allocated, pool.reused) == (1, 19)


async def test_dict_items_and_outputs_through_the_pipeline() -> None:
    """Dict items stage every key; dict and tuple outputs come back per item."""

    def model(batch: PaddedDict) -> Any:
        ids = batch["input_ids"]
        return {"ids": ids + 1, "both": (ids.sum(axis=1), ["x", "y"])}

    items = [
        {"input_ids": np.arange(1, n + 1, dtype=np.int32), "attention_mask": np.ones(n, np.int8)}
        for n in (3, 1)
    ]
    async with bs.BatchScope(model, collate=PadCollator(xp="cupy")) as scope:
        results: list[Any] = await scope.submit_many(items)
    np.testing.assert_array_equal(results[0]["ids"], [2, 3, 4])
    np.testing.assert_array_equal(results[1]["ids"], [2])
    assert int(results[0]["both"][0]) == 6 and results[1]["both"][1] == "y"


async def test_busy_buffers_are_not_handed_out() -> None:
    """A buffer released with a pending event is reused only once the event is done."""
    collator = PadCollator(xp="cupy")
    await collator.collate([np.ones(2)])
    pool = pool_of(collator)
    buffer = pool.acquire(10)
    pending = Event()
    pool.release(buffer, pending)
    assert pool.acquire(10) is not buffer  # pending: a fresh one
    pending.synchronize()
    assert pool.acquire(10) is buffer


async def test_device_option_must_name_a_cuda_device() -> None:
    """device='cuda' is a PyTorch spelling; CuPy needs an id or a Device."""
    with pytest.raises(TypeError, match="'device' for CuPy must be a device id"):
        await PadCollator(xp="cupy", device="cuda").collate([np.ones(2)])
