"""
Array namespaces: which library a batch is computed with, found through array-api-compat.

Everything in :mod:`batchscope.arrays` is written against the Python Array API standard;
``array_api_compat.array_namespace`` gives the standard namespace for NumPy, CuPy and
PyTorch arrays (and any library that implements the standard itself, such as
``array_api_strict``). CuPy and PyTorch are never imported here: a namespace given by name
is imported when the first batch needs it, and the ``is_*`` checks of array-api-compat look
at ``sys.modules`` only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import array_api_compat

from .._durations import type_name

# array-api-compat's signatures mention array types of libraries that may be missing.
_is_array_api_obj: Callable[[object], bool] = array_api_compat.is_array_api_obj  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
_device: Callable[[Any], Any] = array_api_compat.device  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

__all__ = [
    "NamespaceSpec",
    "check_namespace_spec",
    "device_of",
    "is_array",
    "is_numpy",
    "move",
    "names_cupy",
    "namespace_of",
    "resolve_namespace",
    "type_name",
]

#: What ``xp=`` accepts: a namespace module (``numpy``, ``cupy``, ``torch``, an
#: ``array_api_compat`` wrapper, ``array_api_strict``...), the name of one, or None.
NamespaceSpec = ModuleType | str | None

# Libraries whose own module is not an Array API namespace: array-api-compat wraps them.
_WRAPPED = frozenset({"numpy", "cupy", "torch", "dask.array"})


def check_namespace_spec(value: object) -> None:
    """
    Raise TypeError unless *value* can name an array namespace (``xp=``).

    Raises:
        TypeError: *value* is neither a module, a string nor None.
    """
    if value is not None and not isinstance(value, (ModuleType, str)):
        raise TypeError(
            f"'xp' must be an array namespace module (numpy, cupy, torch, ...), "
            f"its name, or None, not {type_name(value)}"
        )


def resolve_namespace(spec: ModuleType | str) -> Any:
    """
    Return the Array API namespace that *spec* names.

    ``numpy``, ``cupy`` and ``torch`` (module or name) become their array-api-compat
    wrappers; any other module is taken as a namespace already.

    Raises:
        ImportError: *spec* names a module that is not installed.
    """
    if isinstance(spec, str):
        try:
            module = importlib.import_module(spec)
        except ImportError as exc:
            raise ImportError(f"xp={spec!r} names an array library that is not installed") from exc
    else:
        module = spec
    name = module.__name__
    if name in _WRAPPED:
        return importlib.import_module(f"array_api_compat.{name.replace('.', '_')}")
    return module


def is_array(value: object) -> bool:
    """Whether *value* is an array of a library that array-api-compat knows."""
    return _is_array_api_obj(value)


def is_numpy(xp: Any) -> bool:
    """Whether *xp* is NumPy's namespace (bare or wrapped)."""
    return bool(array_api_compat.is_numpy_namespace(xp))


def names_cupy(spec: NamespaceSpec) -> bool:
    """Whether ``xp=`` *spec* names CuPy, without importing it."""
    if spec is None:
        return False
    name = spec if isinstance(spec, str) else spec.__name__
    return name in ("cupy", "array_api_compat.cupy")


def namespace_of(arrays: Sequence[Any]) -> Any:
    """
    The one namespace that every array of *arrays* belongs to.

    Raises:
        TypeError: The arrays come from different libraries.
    """
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        libraries = sorted({type(array).__module__.split(".")[0] for array in arrays})
        raise TypeError(
            f"the items of one batch must all come from one array library, "
            f"got arrays from {', '.join(libraries)}"
        ) from exc


def device_of(array: Any) -> Any:
    """The device *array* lives on (``"cpu"`` for NumPy)."""
    return _device(array)


def move(array: Any, xp: Any, device: Any) -> Any:
    """
    Return *array* in namespace *xp* on *device* (the array itself when it is already).

    Within one namespace this is ``to_device``; across namespaces the array goes through
    the host (``to_device(..., "cpu")``) into ``xp.asarray``, which NumPy and PyTorch CPU
    tensors share without a copy.

    Raises:
        TypeError: The array cannot be moved there.
    """
    source = array_api_compat.array_namespace(array)
    if source is xp or source.__name__ == xp.__name__:
        if device is None or device_of(array) == device:
            return array
        return array_api_compat.to_device(array, device)
    try:
        if not is_numpy(source) and is_numpy(xp):
            array = array_api_compat.to_device(array, "cpu")
        return xp.asarray(array, device=device) if device is not None else xp.asarray(array)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"cannot move a {type_name(array)} array to {xp.__name__}"
            f"{'' if device is None else f' on device {device!r}'}: {exc}"
        ) from exc
