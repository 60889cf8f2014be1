"""The public surface: __all__ is honest, objects say they live in batchscope."""

from __future__ import annotations

import batchscope as bs


def test_all_is_sorted_and_complete() -> None:
    """Every name in __all__ exists, once, and every public name is in it (ruff sorts it)."""
    assert len(bs.__all__) == len(set(bs.__all__))
    public = {name for name in vars(bs) if not name.startswith("_")}
    modules = {"testing", "metrics", "arrays", "ray"}  # submodules appear once imported
    future = {"annotations"}  # from __future__ import annotations
    assert set(bs.__all__) == public - modules - future


def test_exported_objects_have_public_module() -> None:
    """Tracebacks say batchscope.ScopeClosedError, not batchscope._exceptions.ScopeClosedError."""
    for name in bs.__all__:
        assert getattr(bs, name).__module__ == "batchscope", name


def test_exception_tree() -> None:
    """Every batchscope exception derives from BatchScopeError; misuse also from RuntimeError."""
    for exc in (
        bs.ScopeClosedError,
        bs.QueueFullError,
        bs.ItemTooLargeError,
        bs.BatchSizeMismatchError,
        bs.CircuitOpenError,
        bs.NoActiveScopeError,
    ):
        assert issubclass(exc, bs.BatchScopeError)
    assert issubclass(bs.NoActiveScopeError, RuntimeError)
    assert issubclass(bs.BatchScopeError, Exception)
