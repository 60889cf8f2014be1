"""
The CuPy pipeline on a real GPU: pinned staging, async copies, overlap, cancellation.

Runs only where CuPy is installed and a CUDA device is available (``nox -s gpu``);
skipped cleanly everywhere else.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("array_api_compat")
cupy: Any = pytest.importorskip("cupy")
if not cupy.is_available():
    pytest.skip("no CUDA device (cupy.is_available() is False)", allow_module_level=True)

import batchscope as bs  # noqa: E402
from batchscope.arrays import PadCollator, PaddedBatch, PaddedDict  # noqa: E402

pytestmark = pytest.mark.anyio


def items_of(*lengths: int, dtype: str = "int32", width: int = 3) -> list[Any]:
    rng = np.random.default_rng(sum(lengths))
    return [rng.integers(1, 100, size=(n, width)).astype(dtype) for n in lengths]


def pool_of(collator: PadCollator) -> Any:
    stager = collator._stager  # the pool is what this test is about
    assert stager is not None and stager.pool is not None
    return stager.pool


@pytest.mark.parametrize("wait", ["thread", "poll"])
@pytest.mark.parametrize("side", ["right", "left"])
async def test_numpy_items_go_through_the_gpu_and_back(wait: str, side: str) -> None:
    """fn gets CuPy arrays (data, lengths, mask); callers get NumPy results, dtype kept."""
    seen: list[Any] = []

    def model(batch: PaddedBatch) -> Any:
        seen.append((type(batch.data), batch.data.dtype, type(batch.mask)))
        return batch.data * 2

    items = items_of(3, 1, 4, dtype="int16")
    collator = PadCollator(xp="cupy", wait=wait, padding_side=side, batch_sizes=(4,))  # type: ignore[arg-type]
    async with bs.BatchScope(model, collate=collator, max_batch_size=4) as scope:
        results = await scope.submit_many(items)
    assert seen == [(cupy.ndarray, np.dtype("int16"), cupy.ndarray)]
    for got, want in zip(results, items, strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want * 2)
        assert got.dtype == np.int16


async def test_mask_and_lengths_on_the_device() -> None:
    """The device mask and lengths match the items, dummy rows included."""
    collator = PadCollator(xp="cupy", batch_sizes=(4,))
    batch, layout = await collator.collate(items_of(2, 3))
    assert cupy.asnumpy(batch.lengths).tolist() == [2, 3, 0, 0]
    assert cupy.asnumpy(batch.mask).sum(axis=1).tolist() == [2, 3, 0, 0]
    results = await collator.split(batch.data, layout)
    assert [r.shape for r in results] == [(2, 3), (3, 3)]


async def test_pinned_buffers_are_reused_across_batches() -> None:
    """Many batches allocate a handful of pinned buffers and reuse them after that."""

    def model(batch: PaddedBatch) -> Any:
        return batch.data.sum(axis=2)

    collator = PadCollator(xp="cupy")
    async with bs.BatchScope(
        model, collate=collator, max_batch_size=8, max_concurrent_batches=2
    ) as scope:
        for _ in range(20):
            await scope.submit_many(items_of(*range(1, 9)))
    pool = pool_of(collator)
    assert pool.allocated <= 4
    assert pool.reused >= 36


async def test_dict_items_and_structured_outputs() -> None:
    """Tokenizer-style dicts go to the GPU per key; dict outputs come back per item."""

    def model(batch: PaddedDict) -> Any:
        ids = batch["input_ids"]
        return {"ids": ids + 1, "pooled": (ids * batch["attention_mask"]).sum(axis=1)}

    items = [
        {"input_ids": np.arange(1, n + 1, dtype=np.int32), "attention_mask": np.ones(n, np.int8)}
        for n in (2, 5)
    ]
    async with bs.BatchScope(model, collate=PadCollator(xp="cupy")) as scope:
        results: list[Any] = await scope.submit_many(items)
    np.testing.assert_array_equal(results[0]["ids"], [2, 3])
    assert int(results[1]["pooled"]) == 15


async def test_results_can_stay_on_the_device() -> None:
    """results_device='fn' leaves results as CuPy arrays."""
    collator = PadCollator(xp="cupy", results_device="fn")
    batch, layout = await collator.collate(items_of(1, 2))
    results = await collator.split(batch.data, layout)
    assert all(isinstance(result, cupy.ndarray) for result in results)


async def test_cupy_items_are_padded_on_the_device() -> None:
    """Items already on the GPU are padded there and results stay there."""
    items = [cupy.arange(n, dtype=cupy.float32) for n in (1, 3)]
    batch, layout = await PadCollator().collate(items)
    assert isinstance(batch.data, cupy.ndarray)
    results = await PadCollator().split(batch.data, layout)
    assert cupy.asnumpy(results[1]).tolist() == [0.0, 1.0, 2.0]


async def test_overlapping_batches_and_cancelled_callers_keep_results_right() -> None:
    """Two batches in flight, callers timing out at random: every result that arrives is
    the caller's own, and pinned buffers still being copied are never reused early."""

    def model(batch: PaddedBatch) -> Any:
        out = batch.data.astype(cupy.float32)
        for _ in range(20):
            out = cupy.sqrt(out * out + 1.0) - 1.0 + out * 0  # busy kernels, same values
        return batch.data.astype(cupy.float32) * 3

    rng = np.random.default_rng(0)
    collator = PadCollator(xp="cupy", max_staging_buffers=2)
    wrong: list[int] = []

    async def caller(index: int, scope: bs.BatchScope[Any, Any]) -> None:
        item = np.full((int(rng.integers(1, 64)), 16), index, dtype=np.int32)
        with anyio.move_on_after(float(rng.uniform(0, 0.01))):
            result = await scope.submit(item)
            if not np.array_equal(result, item * 3):
                wrong.append(index)

    async with (
        bs.BatchScope(
            model, collate=collator, max_batch_size=16, max_concurrent_batches=2
        ) as scope,
        anyio.create_task_group() as tg,
    ):
        for index in range(400):
            tg.start_soon(caller, index, scope)
    assert wrong == []


async def test_event_loop_is_not_blocked_by_a_slow_gpu_batch() -> None:
    """While the GPU works on a long batch, the event loop keeps ticking."""

    def slow(batch: PaddedBatch) -> Any:
        out = batch.data.astype(cupy.float32)
        for _ in range(2000):
            out = out * 1.0001
        return out

    worst = 0.0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            before = anyio.current_time()
            await anyio.sleep(0.001)
            worst = max(worst, anyio.current_time() - before - 0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with bs.BatchScope(slow, collate=PadCollator(xp="cupy")) as scope:
            await scope.submit(np.ones((4096, 256), dtype=np.float32))
        done.set()
    assert worst < 0.05
