"""
The package's layers, as ``batchscope/__init__.py`` states them, hold: no import runs
upward (``TYPE_CHECKING`` imports included).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

import batchscope

PACKAGE = Path(batchscope.__file__).parent

#: Each private module's layer, lowest first; a module imports its own layer or below.
LAYERS: dict[str, int] = {
    # values: options, exceptions, events, counters, the queue bound
    "_durations": 0,
    "_exceptions": 0,
    "_resilience": 0,
    "_config": 0,
    "_hooks": 0,
    "_statistics": 0,
    "_room": 0,
    "_progress": 0,
    "_markers": 0,
    "_continuous_values": 0,
    "_lifecycle": 0,
    # items: the per-item record and how its caller parks
    "_items": 1,
    "_completion": 1,
    "_trio": 1,
    "_asyncio": 1,
    "_batchinfo": 1,
    # pools and policies
    "_pending": 2,
    "_bucketing": 2,
    "_partitions": 2,
    "_runtime": 2,
    # the engine: shared state, scheduler, executor, cache front, map
    "_engine": 3,
    "_admission": 3,
    "_scheduler": 3,
    "_executor": 3,
    "_slots": 3,
    "_cache": 3,
    "_map": 3,
    "_device": 3,
    "_streaming": 3,
    "_adaptive": 3,
    "_stepper": 3,
    "_warmup": 3,
    "_wiring": 3,
    # the façade
    "_scope": 4,
    "_decorator": 4,
    "_blocking": 4,
    "_continuous": 4,
    "__init__": 4,
}
#: Beside the layers: they use the public surface (façade and values), never the engine.
BESIDE = ("arrays", "ray", "metrics", "testing", "_demo", "__main__", "asgi")
#: The allowed exceptions: the public hook signatures ``Hooks.scope_opened(scope)`` and
#: ``Hooks.continuous_opened(scope)`` (``TYPE_CHECKING`` imports only).
ALLOWED = {("_hooks", "_scope"), ("_hooks", "_continuous")}


def _module_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(relative.parts)


def _imports(path: Path) -> set[str]:
    """The batchscope modules *path* imports (top-level name under the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package_parts = _module_of(path).split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not node.module:  # from . import x
                    found.update(".".join([*base, alias.name]) for alias in node.names)
                    continue
            elif node.module and node.module.split(".")[0] == "batchscope":
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                found.add(".".join(target))
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "batchscope" and len(parts) > 1:
                    found.add(".".join(parts[1:]))
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_private_module_has_a_layer() -> None:
    """Each module of the package is in a layer, or beside them (the test stays complete)."""
    tops = {_top(_module_of(path)) for path in _sources()}
    unknown = tops - set(LAYERS) - set(BESIDE)
    assert not unknown, f"give these modules a layer in tests/test_layers.py: {unknown}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: _module_of(p))
def test_no_import_runs_upward(path: Path) -> None:
    """A layered module imports only its own layer or lower ones."""
    here = _top(_module_of(path))
    if here not in LAYERS:
        pytest.skip("beside the layers: see test_beside_modules_use_the_public_surface")
    upward = {
        target
        for target in map(_top, _imports(path))
        if target in LAYERS and LAYERS[target] > LAYERS[here] and (here, target) not in ALLOWED
    }
    assert not upward, f"{here} (layer {LAYERS[here]}) imports upward: {sorted(upward)}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: _module_of(p))
def test_beside_modules_use_the_public_surface(path: Path) -> None:
    """arrays, ray, metrics, testing and the demo never import the engine's layers."""
    here = _top(_module_of(path))
    if here in LAYERS:
        pytest.skip("a layered module: see test_no_import_runs_upward")
    inner = {
        target
        for target in map(_top, _imports(path))
        if target in LAYERS and 0 < LAYERS[target] < 4
    }
    assert not inner, f"{here} reaches into the engine's layers: {sorted(inner)}"


def test_the_engine_does_not_import_the_facade() -> None:
    """The lower modules speak to the Engine: none imports _scope (the hook aside)."""
    importers = {
        _top(_module_of(path)) for path in _sources() if "_scope" in map(_top, _imports(path))
    }
    assert importers <= {
        "_hooks",
        "_decorator",
        "_blocking",
        "__init__",
        "metrics",
        "_demo",
        "asgi",
    }


def _body(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """A function's parameters and body, its name and docstring left out."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return ast.dump(function.args) + "".join(ast.dump(statement) for statement in body)


#: Classes whose methods count too: the two engines (a scope's, a continuous scope's)
#: keep failure, refuse callers and wait for room alike, through ``_lifecycle``.
ENGINES = {("_engine", "Engine"), ("_stepper", "Stepper")}


def test_no_function_is_written_twice() -> None:
    """
    No two module-level functions of the package, or methods of its two engines, are
    copies (validators such as a positive int or a choice among an option's literals
    live once, in ``_durations``; what both engines do as they fail or refuse, in
    ``_lifecycle``).
    """
    seen: dict[str, list[str]] = {}
    for path in _sources():
        module = _module_of(path)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                seen.setdefault(_body(node), []).append(f"{module}.{node.name}")
            elif isinstance(node, ast.ClassDef) and (module, node.name) in ENGINES:
                for method in node.body:
                    if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        name = f"{module}.{node.name}.{method.name}"
                        seen.setdefault(_body(method), []).append(name)
    copies = [names for names in seen.values() if len(names) > 1]
    assert not copies, f"copies of one function: {copies}"


def test_the_scope_states_are_spelt_once() -> None:
    """
    A scope's states are :class:`ScopeState` (``_lifecycle``): no other module spells
    ``"open"`` or ``"closing"`` (the blocking scope and the Ray pool had their own sets).
    """
    spelt = sorted(
        f"{_module_of(path)}:{node.lineno}"
        for path in _sources()
        if _module_of(path) != "_lifecycle"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in ("open", "closing")
    )
    assert not spelt, f"use ScopeState instead of the strings at {spelt}"


def _prose(path: Path) -> list[tuple[int, str]]:
    """The comments and docstrings of *path*, with their line numbers."""
    source = path.read_text(encoding="utf-8")
    found = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                found.append((node.body[0].lineno, docstring))
    return found


#: Words that give a measurement away: a per-item time, a rate, "measured: ...".
MEASURED = re.compile(
    r"µs|\bus/item\b|items/s\b|\bmeasured:|\d+(\.\d+)?x (slower|faster)|\d padded/real"
)


def test_measured_numbers_live_on_the_benchmarks_page() -> None:
    """Code comments and docstrings state reasons; measured figures are in docs/benchmarks.md."""
    found = [
        f"{_module_of(path)}:{line}"
        for path in _sources()
        for line, text in _prose(path)
        if MEASURED.search(text)
    ]
    assert not found, f"move these figures to docs/benchmarks.md: {found}"
