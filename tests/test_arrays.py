"""PadCollator on NumPy: padding, splitting, options, errors, and end to end in a scope."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("array_api_compat")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import batchscope as bs  # noqa: E402
import batchscope.arrays as bsa  # noqa: E402
from batchscope.arrays import PadCollator, PaddedBatch, PaddedDict  # noqa: E402

pytestmark = pytest.mark.anyio


def arange(length: int, *trailing: int, dtype: Any = "int32", start: int = 1) -> Any:
    """A (length, *trailing) array counting up from *start* (so no value equals pad 0)."""
    count = length * int(np.prod(trailing, dtype=np.int64))
    return (np.arange(count) + start).reshape(length, *trailing).astype(dtype)


def assert_same(got: Any, want: Any) -> None:
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


# --- collate: padding, lengths, mask ---------------------------------------------------


async def test_right_padding_data_lengths_and_mask() -> None:
    """Items are padded after their data; lengths and mask say which positions are real."""
    batch, _ = await PadCollator(pad_value=-1).collate([arange(2), arange(3), arange(0)])
    assert isinstance(batch, PaddedBatch)
    assert_same(batch.data, np.array([[1, 2, -1], [1, 2, 3], [-1, -1, -1]], dtype=np.int32))
    np.testing.assert_array_equal(batch.lengths, [2, 3, 0])
    np.testing.assert_array_equal(
        batch.mask, [[True, True, False], [True, True, True], [False, False, False]]
    )
    assert batch.num_items == 3
    assert batch.padded_length == 3


async def test_left_padding_puts_data_last() -> None:
    """padding_side='left' pads before each item (decoder-only generation)."""
    batch, _ = await PadCollator(padding_side="left").collate([arange(1), arange(3)])
    assert_same(batch.data, np.array([[0, 0, 1], [1, 2, 3]], dtype=np.int32))
    np.testing.assert_array_equal(batch.mask, [[False, False, True], [True, True, True]])


@pytest.mark.parametrize("dtype", ["int8", "int32", "uint16", "float16", "float32", "bool"])
async def test_dtype_is_kept(dtype: str) -> None:
    """The padded batch has the items' dtype; nothing is widened to int64 or float64."""
    batch, layout = await PadCollator().collate(
        [arange(2, 3, dtype=dtype), arange(1, 3, dtype=dtype)]
    )
    assert batch.data.dtype == np.dtype(dtype)
    results = await PadCollator().split(batch.data, layout)
    assert [result.dtype for result in results] == [np.dtype(dtype)] * 2


async def test_trailing_axes_are_kept() -> None:
    """Only axis 0 is padded: items of shape (L_i, 2, 3) make a batch (B, L, 2, 3)."""
    batch, _ = await PadCollator().collate([arange(4, 2, 3), arange(1, 2, 3)])
    assert batch.data.shape == (2, 4, 2, 3)
    assert not batch.data[1, 1:].any()


async def test_pad_to_multiple_of_rounds_the_length_up() -> None:
    """pad_to_multiple_of=8 pads a longest item of 9 to 16."""
    batch, _ = await PadCollator(pad_to_multiple_of=8).collate([arange(9), arange(2)])
    assert batch.data.shape == (2, 16)
    np.testing.assert_array_equal(batch.mask.sum(axis=1), [9, 2])


async def test_batch_sizes_add_dummy_rows_that_split_drops() -> None:
    """3 items with batch_sizes (1, 2, 4, 8) make 4 rows; the dummy row is all padding."""
    collator = PadCollator(pad_value=7, batch_sizes=(8, 4, 2, 1))
    batch, layout = await collator.collate([arange(2), arange(1), arange(3)])
    assert batch.data.shape == (4, 3)
    assert batch.num_items == 3
    assert_same(batch.data[3], np.full(3, 7, dtype=np.int32))
    np.testing.assert_array_equal(batch.lengths, [2, 1, 3, 0])
    results = await collator.split(batch.data, layout)
    assert len(results) == 3
    assert_same(results[2], arange(3))


async def test_batch_larger_than_batch_sizes_fails_with_advice() -> None:
    """A batch over the largest allowed size fails, saying which max_batch_size fits."""
    with pytest.raises(ValueError, match=r"largest of 'batch_sizes' \(2\).*max_batch_size <= 2"):
        await PadCollator(batch_sizes=(1, 2)).collate([arange(1)] * 3)


# --- dict items ------------------------------------------------------------------------


def tokens(length: int) -> dict[str, Any]:
    return {
        "input_ids": arange(length, start=100),
        "attention_mask": np.ones(length, dtype=np.int8),
    }


async def test_dict_items_pad_each_key_with_its_pad_value() -> None:
    """Tokenizer outputs: every key padded, with per-key pad values (others pad with 0)."""
    collator = PadCollator(pad_value={"input_ids": 9})
    batch, layout = await collator.collate([tokens(1), tokens(2)])
    assert isinstance(batch, PaddedDict)
    assert sorted(batch) == ["attention_mask", "input_ids"]
    assert_same(batch["input_ids"], np.array([[100, 9], [100, 101]], dtype=np.int32))
    assert_same(batch["attention_mask"], np.array([[1, 0], [1, 1]], dtype=np.int8))
    np.testing.assert_array_equal(batch.lengths, [1, 2])
    np.testing.assert_array_equal(batch.mask, [[True, False], [True, True]])
    assert batch.num_items == 2
    results = await collator.split(batch, layout)
    assert_same(results[0]["input_ids"], tokens(1)["input_ids"])
    assert_same(results[1]["attention_mask"], tokens(2)["attention_mask"])


async def test_padded_dict_unpacks_as_keyword_arguments() -> None:
    """fn can call model(**batch) on a PaddedDict."""

    def model(*, input_ids: Any, attention_mask: Any) -> Any:
        return input_ids * attention_mask

    batch, _ = await PadCollator().collate([tokens(2), tokens(1)])
    assert model(**batch).shape == (2, 2)


async def test_dict_item_with_arrays_of_different_lengths_fails() -> None:
    """The arrays of one dict item must share their length along axis 0."""
    item = {"input_ids": arange(3), "attention_mask": np.ones(2, dtype=np.int8)}
    with pytest.raises(ValueError, match=r"item 1: 'attention_mask' has length 2.*length 3"):
        await PadCollator().collate([tokens(1), item])


async def test_dict_items_with_different_keys_fail() -> None:
    """Every dict item needs the same keys as the first."""
    with pytest.raises(ValueError, match=r"item 1 has keys \['input_ids'\]"):
        await PadCollator().collate([tokens(1), {"input_ids": arange(1)}])


async def test_mapping_pad_value_needs_dict_items() -> None:
    """Per-key pad values with plain array items are a mistake, said so."""
    with pytest.raises(TypeError, match="'pad_value' is a mapping"):
        await PadCollator(pad_value={"input_ids": 0}).collate([arange(1)])


# --- split -----------------------------------------------------------------------------


async def split_of(output: Any, *lengths: int, **options: Any) -> list[Any]:
    collator = PadCollator(**options)
    _, layout = await collator.collate([arange(length) for length in lengths])
    return list(await collator.split(output, layout))


async def test_outputs_that_keep_the_sequence_axis_are_trimmed() -> None:
    """An output (B, L, H) gives each item (L_i, H)."""
    results = await split_of(np.zeros((2, 3, 4)), 1, 3)
    assert [result.shape for result in results] == [(1, 4), (3, 4)]


async def test_left_padded_outputs_are_trimmed_from_the_left() -> None:
    """With padding_side='left' each item keeps the last L_i positions."""
    output = np.arange(6).reshape(2, 3)
    results = await split_of(output, 1, 3, padding_side="left")
    np.testing.assert_array_equal(results[0], [2])
    np.testing.assert_array_equal(results[1], [3, 4, 5])


async def test_pooled_outputs_are_not_trimmed() -> None:
    """An output (B, H) without the sequence axis gives each item its row (H,)."""
    results = await split_of(np.zeros((2, 5)), 1, 3)
    assert [result.shape for result in results] == [(5,), (5,)]


async def test_trim_false_keeps_a_width_equal_to_the_padded_length() -> None:
    """trim=False: a pooled width that happens to equal the padded length stays whole."""
    results = await split_of(np.zeros((2, 3)), 1, 3, trim=False)
    assert [result.shape for result in results] == [(3,), (3,)]


async def test_trim_true_requires_the_sequence_axis() -> None:
    """trim=True: an output without the padded length at axis 1 fails the batch."""
    with pytest.raises(ValueError, match="trim=True, but the output of shape"):
        await split_of(np.zeros((2, 5)), 1, 3, trim=True)


async def test_dict_tuple_and_list_outputs_are_split_per_item() -> None:
    """Structured outputs keep their structure per item; lists give one element per row."""
    output = {"hidden": np.zeros((2, 3, 4)), "extra": (np.arange(2), ["a", "b"])}
    results = await split_of(output, 2, 3)
    assert results[0]["hidden"].shape == (2, 4)
    assert int(results[1]["extra"][0]) == 1
    assert results[1]["extra"][1] == "b"


async def test_output_with_wrong_batch_axis_is_a_size_mismatch() -> None:
    """An output whose axis 0 is not the padded batch size fails with BatchSizeMismatchError."""
    with pytest.raises(bs.BatchSizeMismatchError, match=r"shape \(3, 4\).*2 rows"):
        await split_of(np.zeros((3, 4)), 1, 2)


async def test_output_that_cannot_be_split_is_a_type_error() -> None:
    """A scalar output cannot be split per row."""
    with pytest.raises(TypeError, match="returned a float"):
        await split_of(1.5, 1, 2)


async def test_results_are_views_unless_copy_results() -> None:
    """By default results view the batch output; copy_results=True gives own memory."""
    output = np.zeros((2, 3, 4))
    views = await split_of(output, 1, 3)
    assert all(np.shares_memory(view, output) for view in views)
    copies = await split_of(output, 1, 3, copy_results=True)
    assert not any(np.shares_memory(copy, output) for copy in copies)


# --- mismatched items ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "error", "match"),
    [
        ([arange(2, 3), arange(2, 4)], ValueError, r"item 1 has shape \(2, 4\).*trailing"),
        ([arange(2), arange(2, dtype="int64")], TypeError, "item 1 has dtype int64.*int32"),
        ([arange(2), [1, 2]], TypeError, "item 1 is a list, not an array"),
        ([np.int32(3)], ValueError, "0-d array"),
        ([arange(1), tokens(1)], TypeError, "item 1 is a dict"),
        ([tokens(1), arange(1)], TypeError, "item 1 is a ndarray, expected a dict"),
    ],
)
async def test_mismatched_items_fail_with_a_clear_error(
    items: list[Any], error: type[Exception], match: str
) -> None:
    """Items that cannot share one padded array say which item and what differs."""
    with pytest.raises(error, match=match):
        await PadCollator().collate(items)


async def test_pad_value_must_fit_the_dtype() -> None:
    """A fractional pad value for integer items is refused rather than truncated."""
    with pytest.raises(TypeError, match=r"pad value 0\.5 does not fit .* int32"):
        await PadCollator(pad_value=0.5).collate([arange(1)])


# --- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"padding_side": "middle"}, ValueError, "'padding_side' must be 'right' or 'left'"),
        ({"pad_value": "0"}, TypeError, "'pad_value' must be a number"),
        ({"pad_value": {1: 0}}, TypeError, "'pad_value' as a mapping"),
        ({"pad_to_multiple_of": 0}, ValueError, "'pad_to_multiple_of' must be >= 1"),
        ({"pad_to_multiple_of": 2.0}, TypeError, "'pad_to_multiple_of' must be an int"),
        ({"batch_sizes": ()}, ValueError, "'batch_sizes' must not be empty"),
        ({"batch_sizes": (0, 2)}, ValueError, "'batch_sizes' must be >= 1"),
        ({"batch_sizes": 8}, TypeError, "'batch_sizes' must be a sequence"),
        ({"trim": 1}, ValueError, "'trim' must be 'auto' or True or False"),
        ({"copy_results": "yes"}, TypeError, "'copy_results' must be a bool"),
        ({"results_device": "gpu"}, ValueError, "'results_device' must be 'items' or 'fn'"),
        ({"xp": 3}, TypeError, "'xp' must be an array namespace"),
        ({"wait": "spin"}, ValueError, "'wait' must be 'thread' or 'poll'"),
        ({"poll_interval": 0}, ValueError, "'poll_interval' must be > 0"),
        ({"max_staging_buffers": 0}, ValueError, "'max_staging_buffers' must be >= 1"),
    ],
)
def test_invalid_options_name_the_option(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad options fail at construction, naming the option."""
    with pytest.raises(error, match=match):
        PadCollator(**options)


def test_repr_shows_the_options_that_differ() -> None:
    """The repr lists only the options changed from their defaults; batch_sizes are sorted."""
    collator = PadCollator(padding_side="left", batch_sizes=[4, 1, 2])
    assert repr(collator) == "PadCollator(padding_side='left', batch_sizes=(1, 2, 4))"
    assert collator.options.batch_sizes == (1, 2, 4)


async def test_xp_given_by_name() -> None:
    """xp='numpy' names the namespace; NumPy items then need no conversion."""
    batch, _ = await PadCollator(xp="numpy").collate([arange(2)])
    assert isinstance(batch.data, np.ndarray)


async def test_cupy_without_a_gpu_fails_the_batch_clearly() -> None:
    """xp='cupy' where CuPy or a GPU is missing fails the batch with a RuntimeError."""
    try:
        import cupy  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        pass
    else:
        if cupy.is_available():
            pytest.skip("a GPU is present: tests/test_arrays_cupy.py covers it")
    with pytest.raises(RuntimeError, match="CuPy"):
        await PadCollator(xp="cupy").collate([arange(2)])


# --- end to end through BatchScope -----------------------------------------------------


async def test_scope_with_async_fn_pads_and_splits() -> None:
    """Callers submit arrays of their own length and get their own trimmed rows back."""
    seen: list[tuple[int, ...]] = []

    async def double(batch: PaddedBatch) -> Any:
        seen.append(batch.data.shape)
        return batch.data * 2

    items = [arange(length, 2) for length in (3, 1, 2)]
    async with bs.BatchScope(double, collate=PadCollator(), max_batch_size=3) as scope:
        results = await scope.submit_many(items)
    for result, item in zip(results, items, strict=True):
        assert_same(result, item * 2)
    assert seen == [(3, 3, 2)]


async def test_scope_with_sync_fn_and_dict_items() -> None:
    """A sync fn (run in a worker thread) gets a PaddedDict; results come back per caller."""

    def embed(batch: PaddedDict) -> Any:
        return {"sum": (batch["input_ids"] * batch["attention_mask"]).sum(axis=1)}

    collator = PadCollator(batch_sizes=(4,))
    async with bs.BatchScope(embed, collate=collator, max_batch_size=4) as scope:
        results: list[Any] = await scope.submit_many([tokens(1), tokens(3)])
    assert [int(result["sum"]) for result in results] == [100, 303]


async def test_bad_item_fails_only_its_batch() -> None:
    """A dtype or shape mismatch fails its own batch's callers; other batches and later
    submits succeed, and the statistics count it."""

    async def identity(batch: PaddedBatch) -> Any:
        return batch.data

    items = [arange(1), arange(2), arange(1), arange(2, dtype="float32"), arange(3), arange(1)]
    async with bs.BatchScope(
        identity, collate=PadCollator(), max_batch_size=2, max_wait=0
    ) as scope:
        outcomes = await scope.submit_many(items, return_exceptions=True)
        assert_same(await scope.submit(arange(4)), arange(4))
    assert isinstance(outcomes[2], TypeError) and isinstance(outcomes[3], TypeError)
    assert "dtype float32" in str(outcomes[3])
    for index in (0, 1, 4, 5):
        assert_same(outcomes[index], items[index])
    stats = scope.statistics()
    assert (stats.completed, stats.failed) == (5, 2)


# --- properties ------------------------------------------------------------------------

DTYPES = ["int8", "int32", "int64", "uint8", "float16", "float32", "float64", "bool"]


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[Any], dict[str, Any]]:
    """Random items (arrays or dicts of arrays) and collator options."""
    lengths = draw(st.lists(st.integers(0, 9), min_size=1, max_size=9))
    trailing = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    keys = draw(st.sampled_from([None, ("input_ids",), ("input_ids", "attention_mask")]))
    dtypes = {key: draw(st.sampled_from(DTYPES)) for key in keys or (None,)}
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def array(length: int, dtype: str) -> Any:
        high = 2 if dtype == "bool" else 100
        return rng.integers(0, high, size=(length, *trailing)).astype(dtype)

    items: list[Any] = []
    for length in lengths:
        if keys is None:
            items.append(array(length, dtypes[None]))
        else:
            items.append({key: array(length, dtypes[key]) for key in keys})
    batch_sizes = draw(
        st.one_of(
            st.none(),
            st.lists(st.integers(1, 12), min_size=1).filter(
                lambda sizes: max(sizes) >= len(lengths)
            ),
        )
    )
    options = {
        "padding_side": draw(st.sampled_from(["right", "left"])),
        "pad_value": draw(st.sampled_from([0, 1])),
        "pad_to_multiple_of": draw(st.one_of(st.none(), st.integers(1, 8))),
        "batch_sizes": batch_sizes,
    }
    return items, options


def assert_items_equal(got: Any, want: Any) -> None:
    if isinstance(want, Mapping):
        assert isinstance(got, Mapping) and got.keys() == want.keys()
        for key in want:
            assert_same(got[key], want[key])
    else:
        assert_same(got, want)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=batches())
async def test_collate_then_split_is_the_identity(case: tuple[list[Any], dict[str, Any]]) -> None:
    """For random lengths, trailing shapes, dtypes, sides and batch sizes, splitting the
    padded batch itself gives back every item exactly, and the padding is all pad value."""
    items, options = case
    collator = PadCollator(**options)
    batch, layout = await collator.collate(items)
    arrays: Sequence[Any] = list(batch.values()) if isinstance(batch, PaddedDict) else [batch.data]
    output = batch if isinstance(batch, PaddedDict) else batch.data
    rows, padded_length = arrays[0].shape[:2]
    lengths = [
        len(next(iter(item.values()))) if isinstance(item, Mapping) else len(item) for item in items
    ]
    assert rows == len(items) if options["batch_sizes"] is None else rows in options["batch_sizes"]
    assert padded_length >= max(lengths)
    assert padded_length % (options["pad_to_multiple_of"] or 1) == 0
    np.testing.assert_array_equal(batch.mask.sum(axis=1), [*lengths, *[0] * (rows - len(items))])
    for array in arrays:
        padding = array[~batch.mask]
        assert (padding == options["pad_value"]).all()
    results = await collator.split(output, layout)
    assert len(results) == len(items)
    for got, want in zip(results, items, strict=True):
        assert_items_equal(got, want)


# --- packaging -------------------------------------------------------------------------


def test_public_names_say_batchscope_arrays() -> None:
    """__all__ is sorted and complete; reprs and tracebacks name the public module."""
    assert bsa.__all__ == sorted(bsa.__all__)
    public = {name for name in vars(bsa) if not name.startswith("_")} - {"annotations"}
    assert set(bsa.__all__) == public
    for name in bsa.__all__:
        assert getattr(bsa, name).__module__ == "batchscope.arrays", name


def run_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_core_imports_without_numpy() -> None:
    """`import batchscope` works where NumPy (and array-api-compat) cannot be imported."""
    run_python(
        "import sys; sys.modules['numpy'] = None; sys.modules['array_api_compat'] = None\n"
        "import batchscope, batchscope.testing\n"
    )


def test_importing_arrays_imports_no_gpu_library() -> None:
    """`import batchscope.arrays` imports neither CuPy nor PyTorch."""
    run_python(
        "import sys, batchscope.arrays\n"
        "assert 'cupy' not in sys.modules and 'torch' not in sys.modules, sys.modules.keys()\n"
    )
