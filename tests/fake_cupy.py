"""
A fake ``cupy`` module backed by NumPy, for the CuPy pipeline's tests on every machine.

Device arrays are a NumPy subclass whose ``data`` is a device pointer that copies with
``memmove``; the fake copies synchronously but reports its CUDA events as pending for a
few queries, so the pipeline's waiting, pinned-buffer pool and copy layout run exactly as
on a GPU. Besides what ``PadCollator(xp="cupy")`` needs, it has the few functions the GPU
benchmark's model uses (``asarray``, ``asnumpy``, ``tanh``, ``Device().synchronize()``).
Install it with ``monkeypatch.setitem(sys.modules, "cupy", fake_cupy())``.
"""

from __future__ import annotations

import ctypes
import types
from typing import Any

import numpy as np
from numpy import ndarray

__all__ = ["Device", "Event", "FakeArray", "Pinned", "Stream", "fake_cupy"]


class DevicePointer:
    def __init__(self, array: Any) -> None:
        self.array = array

    def copy_from_host_async(self, source: int, size: int, stream: Any = None) -> None:
        assert stream is not None and stream.non_blocking
        ctypes.memmove(self.array.ctypes.data, source, size)

    def copy_to_host_async(self, target: int, size: int, stream: Any = None) -> None:
        assert stream is not None and stream.non_blocking
        ctypes.memmove(target, self.array.ctypes.data, size)


class FakeArray(ndarray[Any, Any]):
    @property
    def data(self) -> DevicePointer:  # type: ignore[override]
        return DevicePointer(self)


class Pinned(bytearray):
    @property
    def ptr(self) -> int:
        return ctypes.addressof((ctypes.c_char * len(self)).from_buffer(self))


class Event:
    def __init__(self, block: bool = False, disable_timing: bool = False) -> None:
        self.block = block
        self.queries = 0

    def record(self, stream: Any = None) -> None:
        self.queries = 0

    @property
    def done(self) -> bool:
        self.queries += 1
        return self.queries > 2  # pending for the first two queries

    def synchronize(self) -> None:
        self.queries = 3


class Stream:
    def __init__(self, non_blocking: bool = False) -> None:
        self.non_blocking = non_blocking
        self.waited: list[Event] = []

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def wait_event(self, event: Event) -> None:
        self.waited.append(event)


class Device:
    #: Device-wide synchronizations, across all instances (for tests to assert on).
    synchronized = 0

    def __init__(self, device_id: int = 0) -> None:
        self.id = device_id

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def synchronize(self) -> None:
        Device.synchronized += 1


def _to_device(array: Any) -> FakeArray:
    return np.array(array).view(FakeArray)  # a copy, as a transfer makes


def _to_host(array: Any) -> ndarray[Any, Any]:
    return np.array(array).view(ndarray)


def fake_cupy() -> types.ModuleType:
    """A fresh fake ``cupy`` module (install it in ``sys.modules``)."""
    cupy = types.ModuleType("cupy")
    FakeArray.__module__ = "cupy"
    cuda = types.SimpleNamespace(
        Device=Device,
        Stream=Stream,
        Event=Event,
        alloc_pinned_memory=Pinned,
        get_current_stream=lambda: Stream(),
    )
    cupy.__dict__.update(
        ndarray=FakeArray,
        cuda=cuda,
        is_available=lambda: True,
        empty=lambda shape, dtype: np.empty(shape, dtype).view(FakeArray),
        arange=lambda n, dtype: np.arange(n, dtype=dtype).view(FakeArray),
        ascontiguousarray=lambda a: np.ascontiguousarray(a).view(FakeArray),
        asarray=_to_device,
        asnumpy=_to_host,
        tanh=np.tanh,
    )
    return cupy
