"""The public surface: __all__ is honest, objects say they live in batchscope."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import ModuleType

import pytest

import batchscope as bs
from batchscope import _exceptions, testing

#: Every object batchscope exports, in ``__all__``'s order.
_EXPORTED = [getattr(bs, name) for name in bs.__all__]


def test_all_is_sorted_and_complete() -> None:
    """Every name in __all__ exists, once, and every public name is in it (ruff sorts it)."""
    assert len(bs.__all__) == len(set(bs.__all__))
    public = {name for name in vars(bs) if not name.startswith("_")}
    modules = {"testing", "metrics", "arrays", "ray", "asgi"}  # submodules appear once imported
    future = {"annotations"}  # from __future__ import annotations
    assert set(bs.__all__) == public - modules - future


def test_exported_objects_have_public_module() -> None:
    """Tracebacks say batchscope.ScopeClosedError, not batchscope._exceptions.ScopeClosedError."""
    for name in bs.__all__:
        assert getattr(bs, name).__module__ == "batchscope", name


def test_exception_tree() -> None:
    """Every batchscope exception derives from BatchScopeError; misuse also from RuntimeError."""
    exported = [
        obj for obj in _EXPORTED if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert {bs.DeadlineUnmeetableError, bs.WarmupError, bs.ScopeClosedError} <= set(exported)
    for exc in exported:
        assert issubclass(exc, bs.BatchScopeError), exc
    assert issubclass(bs.NoActiveScopeError, RuntimeError)
    assert issubclass(bs.BatchScopeError, Exception)


# The public classes users hold but never subclass: every exported class but Hooks, the
# exceptions and the protocols (meant to be subclassed or implemented, so left open).
_OPEN_CLASSES = (bs.Hooks, bs.AsyncCache, bs.Collator)
_FINAL = [
    obj
    for obj in _EXPORTED
    if isinstance(obj, type) and not issubclass(obj, BaseException) and obj not in _OPEN_CLASSES
] + [testing.FakeBatchFunction]
_FINAL_ARRAYS = ["PadCollator", "PadOptions", "PaddedBatch", "PaddedDict"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.final sets __final__ from 3.11")
@pytest.mark.parametrize("cls", _FINAL, ids=lambda cls: cls.__name__)
def test_public_classes_are_final(cls: type) -> None:
    """The public classes users do not subclass are marked typing.final."""
    assert getattr(cls, "__final__", False) is True


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.final sets __final__ from 3.11")
@pytest.mark.parametrize("name", _FINAL_ARRAYS)
def test_array_classes_are_final(name: str) -> None:
    """The collator and padded-batch classes of batchscope.arrays are marked typing.final."""
    pytest.importorskip("array_api_compat")
    arrays = pytest.importorskip("batchscope.arrays")
    assert getattr(getattr(arrays, name), "__final__", False) is True


def test_subclassable_classes_are_not_final() -> None:
    """Hooks and the exceptions stay open for users' subclasses."""
    for cls in (bs.Hooks, bs.BatchScopeError, bs.ScopeClosedError):
        assert not getattr(cls, "__final__", False), cls


def test_ray_pool_is_final() -> None:
    """The Ray pool and its statistics are marked typing.final (checked in the source)."""
    source = ast.parse(_RAY_SOURCE.read_text(encoding="utf-8"))
    decorated = {
        node.name: [ast.unparse(d) for d in node.decorator_list]
        for node in source.body
        if isinstance(node, ast.ClassDef)
    }
    for name in ("RayReplicaPool", "RayPoolStatistics"):
        assert "final" in decorated[name], name


_RAY_SOURCE = Path(_exceptions.__file__).with_name("ray.py")


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    modules: list[ModuleType] = [bs]
    try:
        import batchscope.arrays
    except ImportError:  # the numpy extra is not installed; arrays defines no exception
        pass
    else:
        modules.append(batchscope.arrays)
    try:
        import batchscope.ray
    except ImportError:  # Ray is not installed: read its exceptions from the source
        source = ast.parse(_RAY_SOURCE.read_text(encoding="utf-8"))
        for node in source.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {ast.unparse(base) for base in node.bases}
                if any(base.endswith(("Error", "Exception")) for base in bases):
                    found[node.name] = Exception
    else:
        modules.append(batchscope.ray)
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                found[name] = obj
    return found


def test_exception_module_docstring_draws_every_exception() -> None:
    """Every exception batchscope, .arrays and .ray export is drawn in _exceptions' tree."""
    doc = _exceptions.__doc__
    assert doc is not None
    names = _exception_classes()
    assert "ReplicaUnavailableError" in names
    missing = [name for name in names if name not in doc]
    assert not missing
