"""
The shape of one padded batch: checking the items, padding them, splitting fn's output.

These functions take the Array API namespace as an argument and use nothing else, so one
code path serves NumPy, CuPy, PyTorch and ``array_api_strict`` (the tests run it on the
latter to prove that nothing NumPy-specific slipped in). The CuPy pipeline pads into its
pinned staging buffers with the same :func:`fill_rows`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import attrs

from .._exceptions import BatchSizeMismatchError
from . import _namespace as ns

__all__ = [
    "Column",
    "Layout",
    "PadValue",
    "PaddingSide",
    "Plan",
    "Trim",
    "fill_rows",
    "make_mask",
    "map_arrays",
    "pad_column",
    "plan_batch",
    "split_output",
]

PaddingSide = Literal["right", "left"]
#: ``"auto"``: trim outputs whose axis 1 has the padded length; True: always; False: never.
Trim = Literal["auto"] | bool
#: A pad value: one scalar, or (for dict items) a mapping from key to scalar.
PadValue = int | float | bool | complex | Mapping[str, int | float | bool | complex]


@attrs.frozen(eq=False)
class Column:
    """The arrays of one key (or of plain array items) for one batch."""

    #: The dict key, or None for plain array items.
    key: str | None
    arrays: list[Any]
    #: The shape after the sequence axis, the same for every item.
    trailing: tuple[int, ...]
    dtype: Any
    pad: int | float | bool | complex


@attrs.frozen(eq=False)
class Plan:
    """A checked batch: its columns, lengths and padded shape."""

    columns: tuple[Column, ...]
    #: Whether the items were dicts (fn then gets a PaddedDict).
    keyed: bool
    #: Each item's length along axis 0, one per real item.
    lengths: tuple[int, ...]
    #: The padded sequence length (after ``pad_to_multiple_of``).
    padded_length: int
    #: Rows of the padded batch (after ``batch_sizes``), real items first.
    rows: int
    #: The items' namespace and device.
    xp: Any
    device: Any

    def row_lengths(self) -> list[int]:
        """Lengths of every row, 0 for the dummy rows that ``batch_sizes`` adds."""
        return [*self.lengths, *([0] * (self.rows - len(self.lengths)))]


@attrs.frozen(eq=False)
class Layout:
    """The context that ``collate`` hands to ``split``: how the batch was padded."""

    lengths: tuple[int, ...]
    padded_length: int
    rows: int
    side: PaddingSide
    #: Where results go back to (the items' namespace and device).
    home_xp: Any
    home_device: Any
    #: Whether the batch left the items' namespace or device for fn.
    moved: bool
    #: The CuPy pipeline's handle for this batch, or None.
    staged: Any = None


def _round_up(value: int, multiple: int | None) -> int:
    if multiple is None or value % multiple == 0:
        return value
    return value + multiple - value % multiple


def _rows(count: int, batch_sizes: tuple[int, ...] | None) -> int:
    if batch_sizes is None:
        return count
    for size in batch_sizes:
        if size >= count:
            return size
    raise ValueError(
        f"a batch of {count} items is larger than the largest of 'batch_sizes' "
        f"({batch_sizes[-1]}); give the scope max_batch_size <= {batch_sizes[-1]}"
    )


def _pad_for(pad_value: PadValue, key: str | None) -> int | float | bool | complex:
    if isinstance(pad_value, Mapping):
        if key is None:
            raise TypeError(
                "'pad_value' is a mapping of per-key pad values, but the items are "
                "arrays, not dicts of arrays"
            )
        return pad_value.get(key, 0)
    return pad_value


def _check_pad(xp: Any, column: Column) -> None:
    pad, dtype = column.pad, column.dtype
    where = "" if column.key is None else f" for key {column.key!r}"
    if xp.isdtype(dtype, "bool"):
        ok = isinstance(pad, bool) or pad in (0, 1)
    elif xp.isdtype(dtype, "integral"):
        ok = isinstance(pad, int) or (isinstance(pad, float) and pad.is_integer())
    elif xp.isdtype(dtype, "real floating"):
        ok = not isinstance(pad, complex)
    else:
        ok = True
    if not ok:
        raise TypeError(f"pad value {pad!r}{where} does not fit the items' dtype {dtype}")


def _describe(value: object) -> str:
    return f"a {ns.type_name(value)}"


def plan_batch(
    items: Sequence[Any],
    *,
    pad_value: PadValue,
    pad_to_multiple_of: int | None,
    batch_sizes: tuple[int, ...] | None,
) -> Plan:
    """
    Check *items* and work out the padded shape of their batch.

    Raises:
        TypeError: An item is not an array (or dict of arrays) like the first, the items
            come from different array libraries, their dtypes differ, or a pad value
            does not fit the dtype.
        ValueError: Trailing shapes, dict keys or devices differ, an item has no
            sequence axis, the arrays of one dict item differ in length, or the batch
            is larger than the largest of ``batch_sizes``.
    """
    if not items:
        raise ValueError("PadCollator got an empty batch")
    first = items[0]
    keyed = isinstance(first, Mapping)
    if keyed:
        first_dict = cast("Mapping[str, Any]", first)
        keys = tuple(first_dict)
        if not keys:
            raise ValueError("item 0 is an empty dict; dict items need at least one array")
        columns: dict[str | None, list[Any]] = {key: [] for key in keys}
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise TypeError(f"item {index} is {_describe(item)}, expected a dict like item 0")
            item_dict = cast("Mapping[str, Any]", item)
            if item_dict.keys() != first_dict.keys():
                raise ValueError(
                    f"item {index} has keys {sorted(item_dict)}, expected {sorted(keys)} "
                    f"like item 0"
                )
            for name in keys:
                columns[name].append(item_dict[name])
    else:
        columns = {None: list(items)}
    arrays = [array for column in columns.values() for array in column]
    for index, array in enumerate(arrays):
        if not ns.is_array(array):
            raise TypeError(
                f"item {index % len(items)} is {_describe(array)}, not an array; PadCollator "
                f"pads arrays (NumPy, CuPy, PyTorch...) or dicts of them"
            )
    xp = ns.namespace_of(arrays)
    device = ns.device_of(first_array := arrays[0])
    built: list[Column] = []
    lengths: list[int] = []
    first_key = next(iter(columns))
    for key, column in columns.items():
        where = "" if key is None else f" {key!r}"
        reference = column[0]
        if len(reference.shape) == 0:
            raise ValueError(
                f"item 0{where} is a 0-d array; items need a sequence axis (axis 0) to pad"
            )
        trailing, dtype = tuple(reference.shape[1:]), reference.dtype
        for index, array in enumerate(column):
            shape = tuple(array.shape)
            if len(shape) == 0:
                raise ValueError(
                    f"item {index}{where} is a 0-d array; items need a sequence axis "
                    f"(axis 0) to pad"
                )
            if shape[1:] != trailing:
                raise ValueError(
                    f"item {index}{where} has shape {shape}, whose trailing shape "
                    f"{shape[1:]} differs from {trailing} (item 0); only axis 0 is padded"
                )
            if array.dtype != dtype:
                raise TypeError(
                    f"item {index}{where} has dtype {array.dtype}, but item 0 has {dtype}; "
                    f"the items of one batch must share a dtype"
                )
            if array is not first_array and ns.device_of(array) != device:
                raise ValueError(
                    f"item {index}{where} is on device {ns.device_of(array)!r}, but item 0 "
                    f"is on {device!r}"
                )
            if key == first_key:
                lengths.append(shape[0])
            elif shape[0] != lengths[index]:
                raise ValueError(
                    f"item {index}: {key!r} has length {shape[0]}, but {first_key!r} has "
                    f"length {lengths[index]}; the arrays of one item must share axis 0"
                )
        built_column = Column(
            key=key,
            arrays=column,
            trailing=trailing,
            dtype=dtype,
            pad=_pad_for(pad_value, key),
        )
        _check_pad(xp, built_column)
        built.append(built_column)
    return Plan(
        columns=tuple(built),
        keyed=keyed,
        lengths=tuple(lengths),
        padded_length=_round_up(max(lengths), pad_to_multiple_of),
        rows=_rows(len(items), batch_sizes),
        xp=xp,
        device=device,
    )


def fill_rows(out: Any, arrays: Sequence[Any], lengths: Sequence[int], side: PaddingSide) -> None:
    """Copy each array into its row of *out* (already filled with the pad value)."""
    padded_length = out.shape[1]
    for row, (array, length) in enumerate(zip(arrays, lengths, strict=True)):
        if length:
            start = 0 if side == "right" else padded_length - length
            out[row, start : start + length, ...] = array


def pad_column(xp: Any, column: Column, plan: Plan, side: PaddingSide) -> Any:
    """One padded array ``(rows, padded_length, *trailing)`` in the items' namespace."""
    out = xp.full(
        (plan.rows, plan.padded_length, *column.trailing),
        column.pad,
        dtype=column.dtype,
        device=plan.device,
    )
    fill_rows(out, column.arrays, plan.lengths, side)
    return out


def make_mask(xp: Any, lengths: Any, padded_length: int, side: PaddingSide) -> Any:
    """The ``(rows, padded_length)`` boolean mask, True where a row holds real data."""
    positions = xp.reshape(
        xp.arange(padded_length, dtype=lengths.dtype, device=ns.device_of(lengths)),
        (1, padded_length),
    )
    row_lengths = xp.reshape(lengths, (-1, 1))
    if side == "right":
        return positions < row_lengths
    return positions >= padded_length - row_lengths


def map_arrays(node: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply *fn* to every array in *node* (an array, or dicts/tuples/lists of them)."""
    if ns.is_array(node):
        return fn(node)
    if isinstance(node, Mapping):
        mapping = cast("Mapping[object, object]", node)
        return {key: map_arrays(value, fn) for key, value in mapping.items()}
    if isinstance(node, tuple):
        members = cast("tuple[object, ...]", node)
        return tuple(map_arrays(value, fn) for value in members)
    if isinstance(node, list):
        elements = cast("list[object]", node)
        return [map_arrays(value, fn) for value in elements]
    return node


def _array_splitter(
    array: Any, layout: Layout, trim: Trim, copy: bool, where: str
) -> Callable[[int], Any]:
    shape = tuple(array.shape)
    if len(shape) == 0:
        raise TypeError(
            f"the batch function returned a 0-d array{where}; PadCollator splits outputs "
            f"of shape (batch, ...) per item"
        )
    if shape[0] != layout.rows:
        raise BatchSizeMismatchError(
            f"the batch function returned an array of shape {shape}{where} for a padded "
            f"batch of {layout.rows} rows; axis 0 must be the batch axis"
        )
    keeps_sequence = len(shape) >= 2 and shape[1] == layout.padded_length
    if trim is True and not keeps_sequence:
        raise ValueError(
            f"trim=True, but the output of shape {shape}{where} has no sequence axis of "
            f"the padded length {layout.padded_length} at axis 1"
        )
    lengths, padded_length = layout.lengths, layout.padded_length
    take: Callable[[int], Any]
    if trim is False or not keeps_sequence:
        take = lambda row: array[row, ...]  # noqa: E731
    elif layout.side == "right":
        take = lambda row: array[row, : lengths[row], ...]  # noqa: E731
    else:
        take = lambda row: array[row, padded_length - lengths[row] :, ...]  # noqa: E731
    if not copy:
        return take
    xp = ns.namespace_of([array])
    return lambda row: xp.asarray(take(row), copy=True)


def _splitter(
    node: Any, layout: Layout, trim: Trim, copy: bool, where: str
) -> Callable[[int], Any]:
    if ns.is_array(node):
        return _array_splitter(node, layout, trim, copy, where)
    if isinstance(node, Mapping):
        mapping = cast("Mapping[object, object]", node)
        parts = {
            key: _splitter(value, layout, trim, copy, f"{where}[{key!r}]")
            for key, value in mapping.items()
        }
        return lambda row: {key: part(row) for key, part in parts.items()}
    if isinstance(node, tuple):
        members = cast("tuple[object, ...]", node)
        pieces = [
            _splitter(value, layout, trim, copy, f"{where}[{index}]")
            for index, value in enumerate(members)
        ]
        return lambda row: tuple(piece(row) for piece in pieces)
    if isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        sequence = cast("Sequence[object]", node)
        if len(sequence) != layout.rows:
            raise BatchSizeMismatchError(
                f"the batch function returned {len(sequence)} results{where} for a padded "
                f"batch of {layout.rows} rows"
            )
        return sequence.__getitem__
    raise TypeError(
        f"the batch function returned {_describe(node)}{where}; PadCollator splits arrays "
        f"of shape (batch, ...), sequences of one result per row, and dicts or tuples of "
        f"those"
    )


def split_output(output: Any, layout: Layout, *, trim: Trim, copy: bool) -> list[Any]:
    """
    One result per real item from fn's *output*, dropping the dummy rows.

    Arrays keep their structure: a dict (tuple) output gives each item a dict (tuple).

    Raises:
        BatchSizeMismatchError: Axis 0 of an output is not the padded batch size.
        TypeError: The output is not an array, sequence, dict or tuple of those.
        ValueError: ``trim=True`` but an output has no sequence axis to trim.
    """
    take = _splitter(output, layout, trim, copy, "")
    return [take(row) for row in range(len(layout.lengths))]
