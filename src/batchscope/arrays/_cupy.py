"""
The CuPy pipeline: NumPy items in, a padded batch on the GPU for fn, NumPy results out.

One batch, with two in flight under ``max_concurrent_batches=2``::

    event loop   pad rows into a pinned buffer, enqueue H2D ──► await ┐     ┌► await ► split
    h2d stream                                     [copy]             │     │
    fn           (worker thread or task)                              └ fn ┐│
    d2h stream                      waits on an event recorded after fn ─► [copy]

* Staging buffers are page-locked (pinned) host memory, so copies are truly asynchronous;
  they are kept in a small pool and reused across batches. A buffer goes back to the pool
  with the CUDA event of its last copy and is handed out again only once that event has
  completed, so a cancelled batch can never let a later one overwrite memory still being
  copied.
* Copies run on two non-blocking streams of their own (one per direction: GPUs have a
  copy engine each way), so they overlap fn's kernels on the default stream.
* The copy back waits on an event recorded on the event-loop thread's current stream
  (the legacy default stream unless the user changed it) after fn returned: fn's work
  on the default stream, or on any blocking stream, is ordered before it.
* Completion is awaited without blocking the event loop: ``wait="thread"`` (default)
  blocks a worker thread on a blocking-sync event (the thread sleeps in the driver, it
  does not spin); ``wait="poll"`` queries the event every ``poll_interval`` seconds with
  ``anyio.sleep``. An event already complete costs neither.
* No device or stream context is ever held across an ``await``: other tasks of the same
  event loop run in between and must not find their current device changed.

CuPy is imported on the first batch, never at ``import batchscope.arrays``. Nothing here
depends on the CUDA major version: ``cupy-cuda12x`` and ``cupy-cuda13x`` both work.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Literal

import anyio
import anyio.to_thread
import array_api_compat
import attrs

from ._layout import PaddingSide, Plan, fill_rows, map_arrays

__all__ = ["CupyStager", "PinnedPool", "import_cupy"]

_ALIGN = 256
_MIN_BUFFER = 1 << 20


def import_cupy() -> Any:
    """
    Import CuPy and check that a CUDA device is usable.

    Raises:
        RuntimeError: CuPy is not installed, or no CUDA device is available.
    """
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise RuntimeError(
            "PadCollator(xp='cupy') needs CuPy: install 'batchscope[cupy]' together with "
            "the CuPy build for your CUDA (cupy-cuda12x or cupy-cuda13x)"
        ) from exc
    if not cupy.is_available():
        raise RuntimeError(
            "PadCollator(xp='cupy'): CuPy is installed but no CUDA device is available "
            "(cupy.is_available() is False)"
        )
    return cupy


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


@attrs.define(eq=False)
class _Buffer:
    """One pinned host buffer and the event of the last copy that used it."""

    memory: Any
    nbytes: int
    event: Any = None

    def idle(self) -> bool:
        return self.event is None or bool(self.event.done)

    def view(self, offset: int, shape: tuple[int, ...], dtype: Any) -> Any:
        """A NumPy array of *shape* over this buffer, from byte *offset*."""
        np = importlib.import_module("numpy")
        count = 1
        for extent in shape:
            count *= extent
        return np.frombuffer(self.memory, dtype=dtype, count=count, offset=offset).reshape(shape)


class PinnedPool:
    """Pinned host buffers reused across batches; a buffer is reused once its copy is done."""

    def __init__(self, cupy: Any, max_buffers: int) -> None:
        self._cupy = cupy
        self._max = max_buffers
        self._free: list[_Buffer] = []
        #: Buffers allocated, and acquisitions served by reuse (for tests and benchmarks).
        self.allocated = 0
        self.reused = 0

    def acquire(self, nbytes: int) -> _Buffer:
        """The smallest idle buffer of at least *nbytes*, or a new one."""
        best: _Buffer | None = None
        for buffer in self._free:
            fits = buffer.nbytes >= nbytes and buffer.idle()
            if fits and (best is None or buffer.nbytes < best.nbytes):
                best = buffer
        if best is not None:
            self._free.remove(best)
            best.event = None
            self.reused += 1
            return best
        # Powers of two from 1 MiB, so slowly growing batches reuse their buffers.
        size = max(_MIN_BUFFER, 1 << max(nbytes - 1, 0).bit_length())
        self.allocated += 1
        return _Buffer(self._cupy.cuda.alloc_pinned_memory(size), size)

    def release(self, buffer: _Buffer, event: Any = None) -> None:
        """Return *buffer*; with *event*, it is reused only once that event completed."""
        buffer.event = event
        self._free.append(buffer)
        while len(self._free) > self._max:
            # Drop the smallest idle buffer; one still being copied stays until it is idle.
            idle = [candidate for candidate in self._free if candidate.idle()]
            if not idle:
                break
            self._free.remove(min(idle, key=lambda candidate: candidate.nbytes))


class CupyStager:
    """Pads NumPy items in pinned memory, copies them to the GPU, and copies results back."""

    def __init__(
        self,
        *,
        device: Any,
        wait: Literal["thread", "poll"],
        poll_interval: float,
        max_buffers: int,
    ) -> None:
        self._device_option = device
        self._wait_mode = wait
        self._poll_interval = poll_interval
        self._max_buffers = max_buffers
        self._cupy: Any = None
        self._device_id = 0
        self._h2d: Any = None
        self._d2h: Any = None
        self.pool: PinnedPool | None = None

    def _setup(self) -> Any:
        if self._cupy is not None:
            return self._cupy
        cupy = import_cupy()
        device = self._device_option
        if device is None:
            device_id = int(cupy.cuda.Device().id)
        elif isinstance(device, int) and not isinstance(device, bool):
            device_id = device
        else:
            # A cupy.cuda.Device has an int id.
            found: object = getattr(device, "id", None)
            if isinstance(device, (bool, str)) or not isinstance(found, int):
                raise TypeError(
                    f"'device' for CuPy must be a device id (int) or a cupy.cuda.Device, "
                    f"not {type(device).__name__}"
                )
            device_id = found
        with cupy.cuda.Device(device_id):
            self._h2d = cupy.cuda.Stream(non_blocking=True)
            self._d2h = cupy.cuda.Stream(non_blocking=True)
        self._device_id = device_id
        self.pool = PinnedPool(cupy, self._max_buffers)
        self._cupy = cupy
        return cupy

    def _event(self) -> Any:
        # Blocking sync: a thread waiting on it sleeps in the driver instead of spinning.
        return self._cupy.cuda.Event(block=self._wait_mode == "thread", disable_timing=True)

    async def _wait(self, event: Any) -> None:
        if event.done:
            return
        if self._wait_mode == "thread":
            await anyio.to_thread.run_sync(event.synchronize, abandon_on_cancel=True)
        else:
            # Polling on purpose: a CUDA event cannot set an anyio.Event by itself.
            while not event.done:  # noqa: ASYNC110
                await anyio.sleep(self._poll_interval)

    async def collate(self, plan: Plan, side: PaddingSide) -> tuple[dict[Any, Any], Any, Any, Any]:
        """
        Pad *plan*'s NumPy items in pinned memory and copy them to the GPU.

        Returns:
            The device arrays by key, the device lengths and mask, and a handle for
            :meth:`fetch` (unused: the layout carries everything).
        """
        cupy = self._setup()
        pool = self.pool
        assert pool is not None
        row_lengths = plan.row_lengths()
        shapes = [(plan.rows, plan.padded_length, *column.trailing) for column in plan.columns]
        offsets: list[int] = []
        total = 0
        for shape, column in zip(shapes, plan.columns, strict=True):
            offsets.append(total)
            count = 1
            for extent in shape:
                count *= extent
            total += _aligned(count * column.dtype.itemsize)
        lengths_offset = total
        total += _aligned(8 * plan.rows)
        buffer = pool.acquire(total)
        done: Any = None
        try:
            hosts: list[Any] = []
            for shape, offset, column in zip(shapes, offsets, plan.columns, strict=True):
                host = buffer.view(offset, shape, column.dtype)
                host[...] = column.pad
                fill_rows(host, column.arrays, plan.lengths, side)
                hosts.append(host)
            host_lengths = buffer.view(lengths_offset, (plan.rows,), "int64")
            host_lengths[...] = row_lengths
            base = buffer.memory.ptr
            with cupy.cuda.Device(self._device_id), self._h2d:
                try:
                    arrays: dict[Any, Any] = {}
                    for host, offset, column in zip(hosts, offsets, plan.columns, strict=True):
                        device_array = cupy.empty(host.shape, dtype=host.dtype)
                        if host.nbytes:
                            device_array.data.copy_from_host_async(
                                base + offset, host.nbytes, stream=self._h2d
                            )
                        arrays[column.key] = device_array
                    lengths = cupy.empty((plan.rows,), dtype="int64")
                    lengths.data.copy_from_host_async(
                        base + lengths_offset, host_lengths.nbytes, stream=self._h2d
                    )
                    positions = cupy.arange(plan.padded_length, dtype="int64")[None, :]
                    if side == "right":
                        mask = positions < lengths[:, None]
                    else:
                        mask = positions >= plan.padded_length - lengths[:, None]
                finally:
                    # Even after a failure halfway, the buffer is reused only once the
                    # copies already enqueued from it are done.
                    done = self._event()
                    done.record(self._h2d)
            await self._wait(done)
        finally:
            pool.release(buffer, done)
        return arrays, lengths, mask, self

    async def fetch(self, output: Any) -> Any:
        """
        Copy every CuPy array in fn's *output* back to NumPy, asynchronously.

        Returns:
            *output* with its CuPy arrays replaced by NumPy arrays (dicts, tuples and
            lists keep their structure).
        """
        cupy = self._setup()
        pool = self.pool
        assert pool is not None
        leaves: list[Any] = []

        def collect(array: Any) -> Any:
            if array_api_compat.is_cupy_array(array):
                leaves.append(array)
            return array

        map_arrays(output, collect)
        if not leaves:
            return output
        offsets: list[int] = []
        total = 0
        for leaf in leaves:
            offsets.append(total)
            total += _aligned(int(leaf.nbytes))
        buffer = pool.acquire(total)
        done: Any = None
        try:
            with cupy.cuda.Device(self._device_id):
                # fn's kernels went to the default stream (or a blocking one) before it
                # returned: an event there orders the copy back after them.
                ready = cupy.cuda.Event(disable_timing=True)
                ready.record(cupy.cuda.get_current_stream())
                self._d2h.wait_event(ready)
                base = buffer.memory.ptr
                try:
                    with self._d2h:
                        for offset, leaf in zip(offsets, leaves, strict=True):
                            contiguous = cupy.ascontiguousarray(leaf)
                            if contiguous.nbytes:
                                contiguous.data.copy_to_host_async(
                                    base + offset, contiguous.nbytes, stream=self._d2h
                                )
                finally:
                    done = self._event()
                    done.record(self._d2h)
            await self._wait(done)
            # Own copies: the pinned buffer goes back to the pool for the next batch.
            hosts: Iterator[Any] = iter(
                [
                    buffer.view(offset, tuple(leaf.shape), leaf.dtype).copy()
                    for offset, leaf in zip(offsets, leaves, strict=True)
                ]
            )
        finally:
            pool.release(buffer, done)

        def replace(array: Any) -> Any:
            return next(hosts) if array_api_compat.is_cupy_array(array) else array

        return map_arrays(output, replace)
