"""The option list is one: BatchScope, @batch, BlockingBatchScope and ScopeConfig agree."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Collection
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest

import batchscope as bs
from batchscope import _config, _continuous_values

# Options of BatchScope that are not configuration values (ScopeConfig does not hold them).
_NOT_CONFIG = {"hooks", "collate"}


def _keywords(function: Callable[..., Any], *, skip: Collection[str] = ()) -> dict[str, Any]:
    parameters = inspect.signature(function).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in skip
    }


def _annotations(function: Callable[..., Any], *, skip: Collection[str] = ()) -> dict[str, Any]:
    parameters = inspect.signature(function).parameters.values()
    return {
        p.name: p.annotation
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in skip
    }


def _scope_options() -> dict[str, Any]:
    return _keywords(bs.BatchScope.__init__)


def test_batch_decorator_takes_every_scope_option() -> None:
    """bs.batch() spells out BatchScope's options, same names and defaults, no **options."""
    assert _keywords(bs.batch) == _scope_options()
    kinds = {p.kind for p in inspect.signature(bs.batch).parameters.values()}
    assert kinds == {inspect.Parameter.KEYWORD_ONLY}


def test_blocking_scope_takes_every_scope_option() -> None:
    """BlockingBatchScope() spells out BatchScope's options, same names, defaults, types."""
    skip = {"backend", "backend_options"}
    assert _keywords(bs.BlockingBatchScope.__init__, skip=skip) == _scope_options()
    assert _annotations(bs.BlockingBatchScope.__init__, skip=skip) == _annotations(
        bs.BatchScope.__init__
    )
    kinds = {p.kind for p in inspect.signature(bs.BlockingBatchScope.__init__).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds


def test_scope_config_fields_are_the_scope_options() -> None:
    """ScopeConfig's fields are BatchScope's configuration options, same defaults."""
    fields = {f.name: f.default for f in attrs.fields(bs.ScopeConfig)}
    options = {k: v for k, v in _scope_options().items() if k not in _NOT_CONFIG}
    assert fields == options


def test_configure_methods_agree() -> None:
    """BlockingBatchScope.configure takes what BatchScope.configure takes, all config fields."""
    scope = _keywords(bs.BatchScope.configure)
    assert _keywords(bs.BlockingBatchScope.configure) == scope
    assert _annotations(bs.BlockingBatchScope.configure) == _annotations(bs.BatchScope.configure)
    assert set(scope) <= {f.name for f in attrs.fields(bs.ScopeConfig)}
    assert set(scope.values()) == {None}


def test_blocking_configure_takes_auto_wait() -> None:
    """BlockingBatchScope.configure switches to max_wait='auto' with a target_latency."""
    scope = bs.BlockingBatchScope[int, int](lambda items: items)
    scope.configure(max_wait="auto", target_latency=0.05)
    assert scope.scope.config.max_wait == "auto"
    assert scope.scope.config.target_latency == 0.05


@pytest.mark.parametrize(
    ("cls", "module"),
    [(bs.ScopeConfig, _config), (bs.ContinuousConfig, _continuous_values)],
    ids=["ScopeConfig", "ContinuousConfig"],
)
def test_every_config_field_has_a_doc_comment(cls: type, module: ModuleType) -> None:
    """Each option field is documented by a ``#:`` comment (what the API reference shows)."""
    source = Path(str(module.__file__)).read_text(encoding="utf-8")
    lines = source.splitlines()
    node = next(
        n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == cls.__name__
    )
    documented: set[str] = set()
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            above = statement.lineno - 2
            while lines[above].strip().startswith("#") and not lines[above].strip().startswith(
                "#:"
            ):
                above -= 1
            if lines[above].strip().startswith("#:"):
                documented.add(statement.target.id)
    missing = sorted({f.name for f in attrs.fields(cls)} - documented)
    assert not missing, f"{cls.__name__} fields without a #: doc: {missing}"
