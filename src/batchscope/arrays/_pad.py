"""
PadCollator: variable-length arrays in, one padded batch for fn, results split back.

The collator implements :class:`batchscope.Collator`. ``collate`` checks the items and
pads them along axis 0 (see :mod:`._layout`), on the items' own array library unless
``xp``/``device`` ask for another; when the target is CuPy and the items are NumPy arrays,
the batch goes through the pinned-memory pipeline of :mod:`._cupy`. ``split`` brings fn's
output back to where the items came from and cuts it into one result per caller.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast, final, overload

import anyio.lowlevel
import attrs

from .._durations import check_int, positive_int, positive_seconds
from . import _namespace as ns
from ._layout import (
    Layout,
    PaddingSide,
    PadValue,
    Trim,
    make_mask,
    map_arrays,
    pad_column,
    plan_batch,
    split_output,
)

if TYPE_CHECKING:
    from ._cupy import CupyStager

__all__ = ["PadCollator", "PadOptions", "PaddedBatch", "PaddedDict"]

ResultsDevice = Literal["items", "fn"]
CudaWait = Literal["thread", "poll"]


@final
@attrs.frozen(eq=False)
class PaddedBatch:
    """
    What fn receives from a :class:`PadCollator` when the items are arrays.

    Rows past :attr:`num_items` are the dummy rows that ``batch_sizes`` adds (length 0,
    all padding); their outputs are dropped.

    .. versionadded:: 0.1.0
    """

    #: The padded array, shape ``(rows, padded_length, *trailing)``, the items' dtype.
    data: Any
    #: Each row's real length, shape ``(rows,)``, int64, on the same device as ``data``.
    lengths: Any
    #: Boolean ``(rows, padded_length)``, True where a row holds real data.
    mask: Any
    #: Real items in the batch (the first rows).
    num_items: int

    @property
    def padded_length(self) -> int:
        """The padded sequence length (axis 1 of :attr:`data`)."""
        return int(self.data.shape[1])


@final
class PaddedDict(Mapping[str, Any]):
    """
    What fn receives from a :class:`PadCollator` when the items are dicts of arrays.

    A read-only mapping from each key to its padded array (so ``model(**batch)`` works),
    plus the attributes of :class:`PaddedBatch`: ``lengths``, ``mask``, ``num_items``.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_arrays", "lengths", "mask", "num_items")

    def __init__(self, arrays: dict[str, Any], *, lengths: Any, mask: Any, num_items: int) -> None:
        self._arrays = arrays
        #: Each row's real length, shape ``(rows,)``, int64.
        self.lengths: Any = lengths
        #: Boolean ``(rows, padded_length)``, True where a row holds real data.
        self.mask: Any = mask
        #: Real items in the batch (the first rows).
        self.num_items: int = num_items

    def __getitem__(self, key: str) -> Any:
        return self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        return f"PaddedDict({self._arrays!r}, num_items={self.num_items})"


def _one_of(*allowed: object) -> Any:
    def check(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
        # Compare types too: 1 == True, but trim=1 is a mistake.
        if not any(type(value) is type(choice) and value == choice for choice in allowed):
            choices = " or ".join(repr(choice) for choice in allowed)
            raise ValueError(f"{attribute.name!r} must be {choices}, got {value!r}")

    return check


def _is_scalar(value: object) -> bool:
    return isinstance(value, (int, float, complex))


def _pad_value(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, Mapping):
        for key, pad in cast("Mapping[object, object]", value).items():
            if not isinstance(key, str) or not _is_scalar(pad):
                raise TypeError(
                    f"'pad_value' as a mapping must map str keys to numbers, got {key!r}: {pad!r}"
                )
    elif not _is_scalar(value):
        raise TypeError(
            f"'pad_value' must be a number or a mapping of key to number, not {ns.type_name(value)}"
        )


def _optional_positive(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_int(attribute.name, value, minimum=1)


def _batch_sizes(value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"'batch_sizes' must be a sequence of ints such as (1, 2, 4, 8), "
            f"not {ns.type_name(value)}"
        )
    sizes = cast("Sequence[int]", value)
    if not sizes:
        raise ValueError("'batch_sizes' must not be empty")
    for size in sizes:
        check_int("batch_sizes", size, minimum=1)
    return tuple(sorted(set(sizes)))


def _poll_interval(value: float) -> float:
    return positive_seconds("poll_interval", value)


def _bool(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name!r} must be a bool, not {ns.type_name(value)}")


def _namespace(_: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    ns.check_namespace_spec(value)


@final
@attrs.frozen(kw_only=True)
class PadOptions:
    """The validated options of a :class:`PadCollator` (see there for their meaning)."""

    pad_value: PadValue = attrs.field(default=0, validator=_pad_value)
    padding_side: PaddingSide = attrs.field(default="right", validator=_one_of("right", "left"))
    xp: ns.NamespaceSpec = attrs.field(default=None, validator=_namespace)
    device: Any = None
    pad_to_multiple_of: int | None = attrs.field(default=None, validator=_optional_positive)
    batch_sizes: tuple[int, ...] | None = attrs.field(default=None, converter=_batch_sizes)
    trim: Trim = attrs.field(default="auto", validator=_one_of("auto", True, False))
    copy_results: bool = attrs.field(default=False, validator=_bool)
    results_device: ResultsDevice = attrs.field(default="items", validator=_one_of("items", "fn"))
    wait: CudaWait = attrs.field(default="thread", validator=_one_of("thread", "poll"))
    poll_interval: float = attrs.field(default=0.0002, converter=_poll_interval)
    max_staging_buffers: int = attrs.field(default=4, validator=positive_int)


@final
class PadCollator:
    """
    Pads variable-length arrays into one batch array; splits fn's output per item.

    Items are arrays of shape ``(L_i, ...)`` -- or dicts of such arrays, as tokenizers
    return (``input_ids``, ``attention_mask``, ...), every array of one item with the
    same ``L_i``. Each batch is padded along axis 0 to the longest item and fn receives a
    :class:`PaddedBatch` (``data``, ``lengths``, ``mask``) or, for dict items, a
    :class:`PaddedDict`. The dtype is the items' own (int32 token ids stay int32). fn
    returns arrays of shape ``(rows, ...)`` (or dicts/tuples of them, or a sequence of one
    result per row); each caller gets its row, trimmed back to its length when the output
    keeps the sequence axis::

        async with BatchScope(model, collate=PadCollator(pad_value=0)) as scope:
            hidden = await scope.submit(np.array([101, 2023, 102], dtype=np.int32))

    Items whose trailing shapes, dtypes, dict keys, devices or array libraries differ
    fail their batch (``ValueError``/``TypeError`` naming the item), and that batch only.

    Works on any Array API library through ``array-api-compat``: NumPy, CuPy, PyTorch.
    With ``xp=cupy`` (or ``"cupy"``) and NumPy items, batches go through a GPU pipeline:
    padded into pinned host buffers reused across batches, copied to the GPU on a
    non-blocking stream, results copied back asynchronously, and completion awaited
    without blocking the event loop; with ``max_concurrent_batches=2`` the next batch is
    padded and copied while the current one computes. fn must leave its GPU work on the
    CuPy default (null) stream or a blocking stream of its own, or synchronize its own
    non-blocking streams before returning, so that the copy back starts after it.

    Args:
        pad_value: The pad value, or for dict items a mapping from key to pad value
            (missing keys pad with 0), such as ``{"input_ids": tokenizer.pad_token_id}``.
        padding_side: ``"right"`` pads after each item, ``"left"`` before it
            (decoder-only generation).
        xp: The array library fn computes with: a namespace module or its name
            (``"numpy"``, ``"cupy"``, ``"torch"``). None: the items' own. Items of another
            library are converted once per batch (NumPy to CuPy through the GPU pipeline).
        device: The device fn's batch goes to (``"cuda"`` for PyTorch, a device id for
            CuPy). None: the items' device (CuPy: the current device).
        pad_to_multiple_of: Round the padded length up to a multiple of this (tensor
            cores, compiled kernels).
        batch_sizes: Allowed batch sizes, such as ``(1, 2, 4, 8, 16, 32)``: a batch is
            padded with dummy rows (length 0) up to the next allowed size, so kernels and
            allocator blocks are reused (TF Serving's ``allowed_batch_sizes``). A batch
            larger than the largest fails with ``ValueError``: give the scope
            ``max_batch_size`` no larger.
        trim: ``"auto"``: an output whose axis 1 has the padded length is trimmed back
            to each item's length; ``True``: every output must be, and is; ``False``:
            never trim (pooled outputs whose width could equal the padded length).
        copy_results: Give each caller a copy of its row rather than a view into the
            batch output (a view keeps the whole output alive while any caller holds it).
        results_device: ``"items"``: results go back to the items' library and device
            (one transfer per batch); ``"fn"``: they stay where fn made them.
        wait: How the GPU pipeline awaits a CUDA event. ``"thread"`` (default): a worker
            thread blocks on the event (blocking-sync, so it sleeps rather than spins),
            the lowest added latency; ``"poll"``: the event loop polls it every
            ``poll_interval`` seconds, no thread at all.
        poll_interval: Seconds between polls with ``wait="poll"``.
        max_staging_buffers: Pinned host buffers kept for reuse by the GPU pipeline (at
            least one per concurrent batch and direction).

    Raises:
        TypeError: An option has the wrong type. The message names the option.
        ValueError: An option is out of range. The message names the option.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_options", "_stager", "_target")

    def __init__(
        self,
        *,
        pad_value: PadValue = 0,
        padding_side: PaddingSide = "right",
        xp: ns.NamespaceSpec = None,
        device: Any = None,
        pad_to_multiple_of: int | None = None,
        batch_sizes: Sequence[int] | None = None,
        trim: Trim = "auto",
        copy_results: bool = False,
        results_device: ResultsDevice = "items",
        wait: CudaWait = "thread",
        poll_interval: float = 0.0002,
        max_staging_buffers: int = 4,
    ) -> None:
        self._options = PadOptions(
            pad_value=pad_value,
            padding_side=padding_side,
            xp=xp,
            device=device,
            pad_to_multiple_of=pad_to_multiple_of,
            batch_sizes=batch_sizes,
            trim=trim,
            copy_results=copy_results,
            results_device=results_device,
            wait=wait,
            poll_interval=poll_interval,
            max_staging_buffers=max_staging_buffers,
        )
        self._target: Any = None
        self._stager: CupyStager | None = None

    @property
    def options(self) -> PadOptions:
        """The validated options."""
        return self._options

    def __repr__(self) -> str:
        fields = attrs.fields(PadOptions)
        changed = [
            f"{field.name}={getattr(self._options, field.name)!r}"
            for field in fields
            if getattr(self._options, field.name) != field.default
        ]
        return f"PadCollator({', '.join(changed)})"

    def _target_namespace(self) -> Any:
        if self._target is None and self._options.xp is not None:
            self._target = ns.resolve_namespace(self._options.xp)
        return self._target

    def _cupy_stager(self) -> CupyStager:
        if self._stager is None:
            from ._cupy import CupyStager

            options = self._options
            self._stager = CupyStager(
                device=options.device,
                wait=options.wait,
                poll_interval=options.poll_interval,
                max_buffers=options.max_staging_buffers,
            )
        return self._stager

    @overload
    async def collate(self, items: Sequence[Mapping[str, Any]]) -> tuple[PaddedDict, Layout]: ...

    @overload
    async def collate(self, items: Sequence[Any]) -> tuple[PaddedBatch, Layout]: ...

    async def collate(self, items: Sequence[Any]) -> tuple[PaddedBatch | PaddedDict, Layout]:
        """
        Pad *items* into one batch for fn.

        Returns:
            The :class:`PaddedBatch` (or :class:`PaddedDict`) for fn, and the layout
            that :meth:`split` needs.

        Raises:
            TypeError: Items of different dtypes or libraries, or not arrays.
            ValueError: Items of different trailing shapes, keys or devices, or more
                items than the largest of ``batch_sizes``.

        Cancellation:
            Nothing is kept. In the GPU pipeline, a staging buffer whose copy is still
            running is reused only once that copy has finished.

        .. versionadded:: 0.1.0
        """
        await anyio.lowlevel.checkpoint()
        options = self._options
        side = options.padding_side
        plan = plan_batch(
            items,
            pad_value=options.pad_value,
            pad_to_multiple_of=options.pad_to_multiple_of,
            batch_sizes=options.batch_sizes,
        )
        staged: Any = None
        if ns.names_cupy(options.xp) and ns.is_numpy(plan.xp):
            arrays, lengths, mask, staged = await self._cupy_stager().collate(plan, side)
            moved = True
        else:
            target = self._target_namespace()
            xp = plan.xp
            arrays = {column.key: pad_column(xp, column, plan, side) for column in plan.columns}
            dest = xp if target is None else target
            moved = dest.__name__ != xp.__name__ or (
                options.device is not None and options.device != plan.device
            )
            if moved:
                arrays = {key: ns.move(a, dest, options.device) for key, a in arrays.items()}
            first = next(iter(arrays.values()))
            lengths = dest.asarray(plan.row_lengths(), dtype=dest.int64, device=ns.device_of(first))
            mask = make_mask(dest, lengths, plan.padded_length, side)
        layout = Layout(
            lengths=plan.lengths,
            padded_length=plan.padded_length,
            rows=plan.rows,
            side=side,
            home_xp=plan.xp,
            home_device=plan.device,
            moved=moved,
            staged=staged,
        )
        batch: PaddedBatch | PaddedDict
        if plan.keyed:
            keyed = {str(key): array for key, array in arrays.items()}
            batch = PaddedDict(keyed, lengths=lengths, mask=mask, num_items=len(items))
        else:
            batch = PaddedBatch(data=arrays[None], lengths=lengths, mask=mask, num_items=len(items))
        return batch, layout

    async def split(self, output: Any, context: Layout) -> list[Any]:
        """
        Cut fn's *output* into one result per item, dropping dummy rows.

        Returns:
            One result per item, in order: its row of each output array (in the items'
            library and device unless ``results_device="fn"``), trimmed to its length
            where the output keeps the sequence axis.

        Raises:
            BatchSizeMismatchError: An output's axis 0 is not the padded batch size.
            TypeError: fn returned something that cannot be split per row.

        Cancellation:
            The results are dropped. A copy back from the GPU still running finishes on
            its own; its pinned buffer is reused only after that.

        .. versionadded:: 0.1.0
        """
        await anyio.lowlevel.checkpoint()
        options = self._options
        if options.results_device == "items":
            if context.staged is not None:
                output = await self._cupy_stager().fetch(output)
            elif context.moved:
                home_xp, home_device = context.home_xp, context.home_device
                output = map_arrays(output, lambda array: ns.move(array, home_xp, home_device))
        return split_output(output, context, trim=options.trim, copy=options.copy_results)
