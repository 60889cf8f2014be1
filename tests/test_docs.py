"""
The Python code blocks of docs/*.md and README.md run, so the documentation cannot rot.

Every ```` ```python ```` block is one of three kinds:

- a whole program: it runs for real, as a reader would run it (real clock; a CPU hog makes
  the loop's timers late, as on a loaded machine);
- a test module (it defines ``async def test_...`` functions): each test function runs under
  asyncio and Trio, on a virtual clock, as the page tells readers to run it;
- a fragment that cannot run alone: the line before its fence says so, in a comment the
  reader does not see, with the reason: ``% skip: REASON`` (a MyST comment, in docs/) or
  ``<!-- skip: REASON -->`` (README.md, which GitHub renders). A fragment is still compiled,
  so its syntax stays valid. Keep these few: a snippet that does not run can rot.

A block that imports an optional package skips when that package is missing.
"""

from __future__ import annotations

import ast
import inspect
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})python\s*$")
_SKIP = re.compile(r"^(?:%|<!--)\s*skip:\s*(?P<reason>.*?)\s*(?:-->)?\s*$")


@dataclass(frozen=True)
class Snippet:
    """One ```python block: where it is, its code, and why it is skipped (if it is)."""

    path: Path
    line: int
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def compile(self) -> Any:
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if self.skip is not None else 0
        return compile(self.code, str(self.path), "exec", flags=flags, dont_inherit=True)

    def tests(self) -> list[str]:
        """The names of the ``async def test_*`` functions this block defines."""
        return [
            node.name
            for node in ast.parse(self.code).body
            if isinstance(node, ast.AsyncFunctionDef) and node.name.startswith("test_")
        ]

    def imports(self) -> list[str]:
        """The modules this block imports, to skip it when one is not installed."""
        names: list[str] = []
        for node in ast.walk(ast.parse(self.code)):
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
        return names


def snippets(path: Path) -> Iterator[Snippet]:
    """The ```python blocks of one Markdown page, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opened = _FENCE.match(lines[index])
        if opened is None:
            index += 1
            continue
        end = index + 1
        while not lines[end].startswith(opened["fence"]):
            end += 1
        marker = _SKIP.match(lines[index - 1]) if index else None
        skip = marker["reason"] if marker else None
        # Blank lines keep the page's line numbers in tracebacks.
        code = "\n" * (index + 1) + "\n".join(lines[index + 1 : end]) + "\n"
        yield Snippet(path, index + 1, code, skip)
        index = end + 1


SNIPPETS = [snippet for page in PAGES for snippet in snippets(page)]
PROGRAMS = [s for s in SNIPPETS if s.skip is None and not s.tests()]
TESTS = [(s, name) for s in SNIPPETS if s.skip is None for name in s.tests()]


def _require_imports(snippet: Snippet) -> None:
    for module in snippet.imports():
        pytest.importorskip(module, exc_type=ImportError)


def _execute(snippet: Snippet) -> dict[str, Any]:
    """Run the block as a module of its own; the logging setup it makes is undone after."""
    _require_imports(snippet)
    loggers = [logging.getLogger(), logging.getLogger("batchscope")]
    saved = [(logger.handlers[:], logger.level) for logger in loggers]
    namespace: dict[str, Any] = {"__name__": "docs_snippet"}
    try:
        exec(snippet.compile(), namespace)
    except ImportError as exc:
        # An optional part used without its extra (map(progress=True) without rich).
        if "pip install 'batchscope[" not in str(exc):
            raise
        pytest.skip(f"{snippet.id}: {exc}")
    finally:
        for logger, (handlers, level) in zip(loggers, saved, strict=True):
            logger.handlers[:] = handlers
            logger.setLevel(level)
    return namespace


def test_the_pages_have_snippets() -> None:
    """The extraction finds the blocks (a changed fence syntax would silently test nothing)."""
    assert len(PROGRAMS) >= 30
    assert len(TESTS) >= 2
    assert {s.path.name for s in PROGRAMS} >= {"README.md", "index.md", "testing.md"}


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.skip is not None], ids=lambda s: s.id)
def test_fragment_compiles(snippet: Snippet) -> None:
    """A block marked skip has a reason and valid syntax; it is reported as skipped."""
    assert snippet.skip, f"{snippet.id}: say why the block cannot run (% skip: REASON)"
    snippet.compile()
    pytest.skip(f"{snippet.id}: {snippet.skip}")


#: A log line a program's comment shows: ``# stderr: batchscope: ...`` or
#: ``# WARNING batchscope: ...`` (the first line of it, a trailing ``;`` dropped).
_LOG_LINE = re.compile(
    r"#\s*(?:(?:stderr:|DEBUG|INFO|WARNING|ERROR)\s+)?(?P<line>batchscope: .*?);?\s*$"
)


def quoted_log_lines(snippet: Snippet) -> list[str]:
    """The batchscope log lines the block's comments say it prints."""
    return [m["line"] for line in snippet.code.splitlines() if (m := _LOG_LINE.search(line))]


def test_pages_quote_log_lines() -> None:
    """The resilience and logging pages show the log lines their programs print."""
    quoted = [line for s in PROGRAMS for line in quoted_log_lines(s)]
    assert len(quoted) >= 5, quoted


@pytest.mark.parametrize("snippet", PROGRAMS, ids=lambda s: s.id)
def test_program_runs(snippet: Snippet, cpu_hog: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A whole program in the docs runs as printed, on a loaded machine."""
    with caplog.at_level(logging.INFO, logger="batchscope"):
        _execute(snippet)
    # Each log line a comment shows is what the program logged (the page shows it as
    # printed: "1 item", never "1 item(s)").
    logged = [record.getMessage() for record in caplog.records if record.name == "batchscope"]
    for line in quoted_log_lines(snippet):
        assert any(message.startswith(line) for message in logged), (snippet.id, line, logged)


@pytest.mark.virtual_time
@pytest.mark.parametrize(("snippet", "name"), TESTS, ids=[f"{s.id}::{name}" for s, name in TESTS])
def test_test_function_passes(
    snippet: Snippet, name: str, anyio_backend: tuple[str, dict[str, Any]]
) -> None:
    """A test function in the docs passes, under asyncio and Trio, on a virtual clock."""
    test: Callable[[], Any] = _execute(snippet)[name]
    assert not inspect.signature(test).parameters, f"{name}: fixtures are not supported here"
    backend, options = anyio_backend
    anyio.run(test, backend=backend, backend_options=options)
