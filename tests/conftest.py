"""
Backends for every async test: asyncio (in debug mode, but for the real-clock tier),
asyncio + uvloop and trio, where installed. Tests marked ``virtual_time`` run instead on a
virtual clock that jumps ahead whenever every task is blocked: Trio's
``MockClock(autojump_threshold=0)`` and, for asyncio, a looptime event loop — a fresh
clock per test, so timing is exact.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from typing import Any

import pytest

Backend = tuple[str, dict[str, Any]]


def _uvloop_factory() -> Any:
    import uvloop

    return uvloop.new_event_loop


def _looptime_factory() -> Any:
    import looptime

    return lambda: looptime.new_event_loop(start=0.0)


def _mock_clock() -> Any:
    import trio.testing

    return trio.testing.MockClock(autojump_threshold=0)


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


REAL: dict[str, Callable[[], Backend]] = {"asyncio": lambda: ("asyncio", {"debug": True})}
if _installed("uvloop"):
    REAL["asyncio+uvloop"] = lambda: ("asyncio", {"loop_factory": _uvloop_factory()})
if _installed("trio"):
    REAL["trio"] = lambda: ("trio", {})


def _looptime_usable() -> bool:
    # looptime before 0.9 can stall a test that cancels a waiter (fixed upstream in 0.9,
    # which needs Python 3.11).
    try:
        version = importlib.metadata.version("looptime")
    except importlib.metadata.PackageNotFoundError:
        return False
    return tuple(int(part) for part in version.split(".")[:2]) >= (0, 9)


VIRTUAL: dict[str, Callable[[], Backend]] = {}
if _looptime_usable():
    VIRTUAL["asyncio+looptime"] = lambda: ("asyncio", {"loop_factory": _looptime_factory()})
if _installed("trio"):
    VIRTUAL["trio+mockclock"] = lambda: ("trio", {"clock": _mock_clock()})

BACKENDS = {**REAL, **VIRTUAL}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "virtual_time: run on a virtual autojump clock (asyncio and trio)"
    )
    config.addinivalue_line(
        "markers",
        "realclock: the real-clock tier (deadlines, statistics races, chaos) under a CPU hog; "
        "nox runs it on the newest Python, on every backend",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "anyio_backend" in metafunc.fixturenames:
        names = VIRTUAL if metafunc.definition.get_closest_marker("virtual_time") else REAL
        # No virtual clock installed (Python 3.10 without Trio): those tests skip.
        metafunc.parametrize("anyio_backend", list(names), indirect=True)


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> Backend:
    """
    The backend and its options, built fresh for each test (a new clock each time).

    The real-clock tier runs plain asyncio without debug mode: it stands for a loaded
    production loop, and debug mode's checks on every step (timing and logging slow
    callbacks, recording where each coroutine was created), competing with the CPU hog
    for the GIL, stretched single steps to 0.9 s on a 2-core CI machine. Every other
    test keeps debug mode.
    """
    name, options = BACKENDS[request.param]()
    if options.get("debug") and request.node.get_closest_marker("realclock"):
        options = {**options, "debug": False}
    return name, options


class CpuHog:
    """
    A thread that keeps the CPU busy in pure Python, so the event loop's thread competes
    for the GIL and its timers fire late, as on a loaded real server.

    ``start()``/``stop()`` may be called several times; ``stop()`` joins the thread.
    """

    def __init__(self) -> None:
        import threading

        self._threading = threading
        self._stop = threading.Event()
        self._thread: Any = None
        #: Loop iterations done, so a test can show the hog really ran.
        self.spins = 0

    def _spin(self) -> None:
        while not self._stop.is_set():
            total = 0
            for i in range(20_000):
                total += i * i
            self.spins += 1

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = self._threading.Thread(
                target=self._spin, name="batchscope test cpu hog", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


@pytest.fixture
def cpu_hog() -> Any:
    """
    A running :class:`CpuHog` for real-clock tests (stopped at teardown).

    Real-clock tests assert outcomes and generous bounds, never tight times: a real loop's
    timers fire late, which is what this makes happen.
    """
    hog = CpuHog()
    hog.start()
    try:
        yield hog
    finally:
        hog.stop()
