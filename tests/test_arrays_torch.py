"""PadCollator on PyTorch CPU tensors, and NumPy items converted for a PyTorch fn."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
pytest.importorskip("array_api_compat")

import batchscope as bs  # noqa: E402
from batchscope.arrays import PadCollator, PaddedBatch, PaddedDict  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("side", ["right", "left"])
async def test_tensors_round_trip_with_dtype_kept(side: str) -> None:
    """int32 tensors stay int32; split gives each item its own trimmed tensor."""
    items = [torch.arange(1, n + 1, dtype=torch.int32) for n in (3, 1, 2)]
    collator = PadCollator(padding_side=side, batch_sizes=(4, 8))  # type: ignore[arg-type]
    batch, layout = await collator.collate(items)
    assert isinstance(batch.data, torch.Tensor)
    assert batch.data.dtype == torch.int32
    assert batch.data.shape == (4, 3)
    assert batch.lengths.tolist() == [3, 1, 2, 0]
    assert batch.mask.dtype == torch.bool
    results = await collator.split(batch.data, layout)
    for got, want in zip(results, items, strict=True):
        assert torch.equal(got, want)


async def test_tokenizer_style_dict_items() -> None:
    """Dict items of tensors (input_ids, attention_mask) pad per key."""
    items = [
        {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), dtype=torch.int64)}
        for ids in ([101, 7, 102], [101, 102])
    ]
    batch, _ = await PadCollator(pad_value={"input_ids": 0}).collate(items)
    assert isinstance(batch, PaddedDict)
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


async def test_numpy_items_for_a_torch_fn() -> None:
    """xp='torch' hands fn a tensor; results come back to callers as NumPy arrays."""
    seen: list[type] = []

    def model(batch: PaddedBatch) -> Any:
        seen.append(type(batch.data))
        return batch.data.to(torch.float32) * 0.5

    items = [np.arange(n, dtype=np.int32) for n in (2, 4)]
    async with bs.BatchScope(model, collate=PadCollator(xp="torch"), max_batch_size=2) as scope:
        results = await scope.submit_many(items)
    assert seen == [torch.Tensor]
    for got, want in zip(results, items, strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, want * 0.5)


async def test_mixed_libraries_fail_the_batch() -> None:
    """A NumPy array and a tensor in one batch fail it with a TypeError naming both."""
    with pytest.raises(TypeError, match="one array library, got arrays from numpy, torch"):
        await PadCollator().collate([np.zeros(2), torch.zeros(2)])


async def test_end_to_end_bad_item_fails_only_its_batch() -> None:
    """A tensor of another dtype fails its batch; the other batch succeeds."""

    async def identity(batch: PaddedBatch) -> Any:
        return batch.data

    items = [torch.ones(2), torch.ones(1, dtype=torch.float64), torch.ones(3), torch.ones(1)]
    async with bs.BatchScope(
        identity, collate=PadCollator(), max_batch_size=2, max_wait=0
    ) as scope:
        outcomes = await scope.submit_many(items, return_exceptions=True)
    assert isinstance(outcomes[0], TypeError) and isinstance(outcomes[1], TypeError)
    assert [tuple(o.shape) for o in outcomes[2:]] == [(3,), (1,)]  # type: ignore[union-attr]
