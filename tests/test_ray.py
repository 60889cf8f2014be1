"""
batchscope.ray against a real local Ray cluster, bound to loopback only.

One cluster serves the whole session (``ray.init(num_cpus=2)``, started by the
``ray_cluster`` fixture and shut down at the end). Tests run in real time: they wait on
actors in other processes. Actors that must be caught mid-batch are held there by the
test (a marker file says the batch has started; the model waits for a release file), so
nothing depends on how fast this machine is.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

# Ray reads this when it is imported: without it, Ray listens on the machine's external
# interface too, even when told 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")

import batchscope as bs  # noqa: E402
from batchscope.ray import RayReplicaPool, ReplicaUnavailableError  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The workers must unpickle the test models without importing this module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _listening() -> dict[tuple[str, str], set[int]]:
    """``(address, port)`` of every listening TCP socket -> the pids that own it, if shown."""
    done = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    found: dict[tuple[str, str], set[int]] = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            address, _, port = fields[3].rpartition(":")
            pids = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
            found.setdefault((address.strip("[]"), port), set()).update(pids)
    return found


def _ray_pids() -> set[int]:
    """This process and its descendants: the driver and the local cluster it started."""
    import psutil  # type: ignore[import-untyped, unused-ignore]  # a dependency of Ray

    me = psutil.Process()
    return {me.pid, *(child.pid for child in me.children(recursive=True))}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[set[tuple[str, str]]]:
    """A local Ray cluster on 127.0.0.1; yields the listening sockets from before it."""
    before = set(_listening()) if shutil.which("ss") else set()
    from ray._private import ray_constants

    # Ray was imported before this module set the variable (by another module, say).
    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        yield before
    finally:
        ray.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = enabled


class Doubler:
    """Doubles each item; ``"bad"`` is a per-item error; ``"boom"`` makes the batch raise."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def __call__(self, batch: list[Any]) -> list[Any]:
        if "boom" in batch:
            raise KeyError("boom")
        time.sleep(self.delay)
        return [ValueError(f"bad item {x!r}") if x == "bad" else x * 2 for x in batch]


class WhoAmI:
    """Answers each item with the actor's process id, after *delay* seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, batch: list[Any]) -> list[int]:
        time.sleep(self.delay)
        return [os.getpid()] * len(batch)


class Held:
    """Touches ``<dir>/started-<item>``, then holds the batch until ``<dir>/release``."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.cancelled = False

    def __call__(self, batch: list[Any]) -> list[Any]:
        for item in batch:
            (self.directory / f"started-{item}").touch()
        deadline = time.monotonic() + 60
        while not (self.directory / "release").exists() and time.monotonic() < deadline:
            if ray.get_runtime_context().is_canceled():
                self.cancelled = True
                raise RuntimeError("cancelled")
            time.sleep(0.01)
        return [(item, os.getpid()) for item in batch]

    def was_cancelled(self) -> bool:
        return self.cancelled


class Concurrency:
    """Records how many batches run at once in this (threaded) actor."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __call__(self, batch: list[Any]) -> list[Any]:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.05)
        with self.lock:
            self.now -= 1
        return batch

    def get_peak(self) -> int:
        return self.peak


async def _started(directory: Path, item: object) -> None:
    """Wait until the held model has started the batch holding *item*."""
    with anyio.fail_after(60):
        while not (directory / f"started-{item}").exists():  # noqa: ASYNC110 - another process
            await anyio.sleep(0.01)


async def test_results_route_back_per_item(ray_cluster: object) -> None:
    """Batches run on the replicas and every caller gets its own result or error."""
    async with (
        RayReplicaPool(Doubler, num_replicas=2) as pool,
        bs.BatchScope(pool, max_batch_size=4, max_concurrent_batches=pool.capacity) as scope,
    ):
        results = await scope.submit_many([1, 2, "bad", 3, 4, 5], return_exceptions=True)
    assert results[:2] == [2, 4] and results[3:] == [6, 8, 10]
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad item 'bad'"
    stats = pool.statistics()
    assert stats.batches == scope.statistics().batches >= 2
    assert stats.in_flight == 0 and stats.failed == 0


async def test_model_exception_keeps_its_type(ray_cluster: object) -> None:
    """An exception raised by the model reaches every caller of its batch as its own type."""
    async with (
        RayReplicaPool(Doubler, num_replicas=1) as pool,
        bs.BatchScope(pool, max_batch_size=2, max_wait=1) as scope,
    ):
        with pytest.raises(KeyError, match="boom") as caught:
            await scope.submit_many(["boom", 1])
        assert await scope.submit(21) == 42
    assert type(caught.value) is KeyError
    assert isinstance(caught.value.__cause__, ray.exceptions.RayTaskError)
    assert pool.statistics().failed == 1


async def test_least_loaded_routing_uses_both_replicas(ray_cluster: object) -> None:
    """Two batches at once go to two different replicas."""
    async with (
        RayReplicaPool(WhoAmI, 0.5, num_replicas=2) as pool,
        bs.BatchScope(pool, max_batch_size=1, max_concurrent_batches=pool.capacity) as scope,
    ):
        pids = await scope.submit_many(["a", "b"])
    assert len(set(pids)) == 2
    assert pool.statistics().batches_per_replica == (1, 1)
    assert pool.statistics().peak_in_flight_per_replica == (1, 1)


async def test_per_replica_limit_holds(ray_cluster: object) -> None:
    """No replica runs more than max_concurrent_batches_per_replica batches at once."""
    async with (
        RayReplicaPool(
            ray.remote(Concurrency),
            num_replicas=2,
            max_concurrent_batches_per_replica=2,
            actor_options={"max_concurrency": 8},
        ) as pool,
        # The scope would run 8 at once: the pool holds each replica to 2.
        bs.BatchScope(pool, max_batch_size=1, max_concurrent_batches=8) as scope,
    ):
        assert await scope.submit_many(list(range(16))) == list(range(16))
        refs = [handle.get_peak.remote() for handle in pool.handles]
        peaks = await anyio.to_thread.run_sync(ray.get, refs)
    assert max(peaks) <= 2
    assert max(pool.statistics().peak_in_flight_per_replica) == 2
    assert pool.capacity == 4


async def test_killed_replica_batch_runs_on_another(ray_cluster: object, tmp_path: Path) -> None:
    """A replica killed mid-batch: the batch completes elsewhere and the actor is replaced."""
    async with (
        RayReplicaPool(Held, str(tmp_path), num_replicas=2) as pool,
        bs.BatchScope(pool, max_batch_size=1, max_concurrent_batches=pool.capacity) as scope,
    ):
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def call() -> None:
                results.append(await scope.submit("x"))

            tg.start_soon(call)
            await _started(tmp_path, "x")
            busy = pool.statistics().in_flight_per_replica.index(1)
            victim = pool.handles[busy]
            (tmp_path / "started-x").unlink()
            ray.kill(victim, no_restart=True)
            await _started(tmp_path, "x")  # running again, on the other replica
            (tmp_path / "release").touch()
        [(item, _pid)] = results
        stats = pool.statistics()
        assert item == "x"
        assert stats.retried_on_other_replica == 1 and stats.replicas_restarted == 1
        assert stats.cancelled == 0 and stats.replicas_lost == 0
        assert stats.batches_per_replica[1 - busy] == 1
        assert pool.handles[busy] is not victim
        # The replacement serves batches.
        more: list[Any] = await scope.submit_many(["y", "z"])
        assert [item for item, _ in more] == ["y", "z"]
    assert pool.statistics().live_replicas == 2


async def test_cancelled_batch_cancels_the_ray_task(ray_cluster: object, tmp_path: Path) -> None:
    """When every caller of a running batch leaves, its Ray task is cancelled."""
    async with (
        RayReplicaPool(ray.remote(Held), str(tmp_path), num_replicas=1) as pool,
        bs.BatchScope(pool, max_batch_size=1) as scope,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope.submit, "x")
            await _started(tmp_path, "x")
            tg.cancel_scope.cancel()
        with anyio.fail_after(60):
            while pool.statistics().in_flight:  # noqa: ASYNC110 - the pool has no event for it
                await anyio.sleep(0.01)
        ref = pool.handles[0].was_cancelled.remote()
        cancelled = await anyio.to_thread.run_sync(ray.get, ref)
        assert cancelled
        assert pool.statistics().cancelled == 1
        assert scope.statistics().cancelled == 1
        (tmp_path / "release").touch()
        assert (await scope.submit("y"))[0] == "y"


async def test_pool_without_live_replicas_fails_fast(ray_cluster: object) -> None:
    """A pool whose only (borrowed) actor is gone fails calls instead of hanging."""
    handle = ray.remote(Doubler).remote()
    pool = RayReplicaPool.from_handles([handle])
    async with pool, bs.BatchScope(pool, max_batch_size=1) as scope:
        assert await scope.submit(1) == 2
        ray.kill(handle, no_restart=True)
        with pytest.raises(ReplicaUnavailableError):
            await scope.submit(2)
        with pytest.raises(ReplicaUnavailableError, match="no live replica"):
            await scope.submit(3)
    assert pool.statistics().replicas_lost == 1


async def test_unschedulable_replica_start_is_bounded(ray_cluster: object) -> None:
    """Replicas that cannot start (no such resource) fail the pool's start, not hang it."""
    pool = RayReplicaPool(
        Doubler,
        num_replicas=1,
        actor_options={"resources": {"no-such-resource": 1}},
        replica_start_timeout=1.0,
    )
    with anyio.fail_after(60), pytest.raises(ReplicaUnavailableError, match="did not start"):
        async with pool:
            pass


async def test_example_runs_on_two_replicas(ray_cluster: object) -> None:
    """examples/ray_replicas.py serves its items through two replicas."""
    pytest.importorskip("numpy")
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    ray_replicas = importlib.import_module("ray_replicas")
    ray.cloudpickle.register_pickle_by_value(ray_replicas)
    result = await ray_replicas.measure(ray_replicas.make_items(300), 2, 0.0, 64)
    assert result["items_per_s"] > 0 and result["mean_batch_size"] > 1
    assert all(batches > 0 for batches in result["batches_per_replica"])


class Broken:
    """A model that cannot be built."""

    def __init__(self) -> None:
        raise OSError("no weights here")


async def test_model_that_fails_to_build_fails_the_start(ray_cluster: object) -> None:
    """A replica whose model raises in __init__ fails the pool's start with the reason."""
    with anyio.fail_after(60), pytest.raises(ReplicaUnavailableError, match="no weights here"):
        async with RayReplicaPool(Broken, num_replicas=1):
            pass


def test_pool_options_are_validated() -> None:
    """Bad options raise at construction, naming the option."""
    with pytest.raises(ValueError, match="'num_replicas'"):
        RayReplicaPool(Doubler, num_replicas=0)
    with pytest.raises(TypeError, match="'max_concurrent_batches_per_replica'"):
        RayReplicaPool(Doubler, max_concurrent_batches_per_replica=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'replica_start_timeout'"):
        RayReplicaPool(Doubler, replica_start_timeout=0)
    with pytest.raises(ValueError, match="'handles'"):
        RayReplicaPool.from_handles([])


def test_import_without_ray_says_how_to_install() -> None:
    """Without Ray, importing batchscope works and batchscope.ray names the extra."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import batchscope\n"
        "try:\n    import batchscope.ray\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'batchscope[ray]'" in done.stdout


def test_cluster_listens_on_loopback_only(ray_cluster: set[tuple[str, str]]) -> None:
    """Every socket the Ray cluster listens on is bound to a loopback address."""
    if shutil.which("ss") is None:
        pytest.skip("needs `ss` (iproute2)")
    listening = _listening()
    ours = _ray_pids()
    if any(listening.values()):  # ss shows owners: the sockets of our processes
        mine = {socket for socket, pids in listening.items() if pids & ours}
    else:  # no owners shown: the sockets opened since the cluster started
        mine = set(listening) - ray_cluster
    assert mine, "the Ray cluster opened no listening socket?"
    exposed = []
    for address, port in mine:
        host = re.sub(r"^::ffff:", "", address.split("%")[0])
        if host == "*" or not ipaddress.ip_address(host).is_loopback:
            exposed.append(f"{address}:{port}")
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
