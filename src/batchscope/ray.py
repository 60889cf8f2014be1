"""
Run each formed batch on a pool of Ray actors: model replicas on this machine or a cluster.

batchscope keeps forming batches where the requests arrive; :class:`RayReplicaPool` is an
async batch function that sends each batch to the least-loaded live replica and awaits its
results, so every feature of :class:`~batchscope.BatchScope` applies unchanged (collators,
per-item exception results, ``retry=``, ``batch_timeout=``, cancellation)::

    import ray
    import batchscope as bs
    from batchscope.ray import RayReplicaPool

    ray.init()  # or ray.init(address="ray://head:10001") for a cluster
    async with RayReplicaPool(Model, num_replicas=2, actor_options={"num_gpus": 1}) as pool:
        async with bs.BatchScope(pool, max_concurrent_batches=pool.capacity) as scope:
            y = await scope.submit(x)

Results are awaited natively under asyncio (``await ref``) and in a worker thread
(``ray.get``) under Trio, whose event loop cannot await Ray's object refs. A replica that
dies with a batch is replaced and the batch runs again on another replica; an exception
raised by the model reaches the batch's callers with its own type. Needs the ``ray``
extra: ``pip install 'batchscope[ray]'``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, cast, final

import anyio
import anyio.to_thread
import attrs
from anyio import AsyncContextManagerMixin

from ._durations import check_int, positive_seconds
from ._exceptions import BatchScopeError
from ._lifecycle import ScopeState

try:
    import ray
    import ray.actor
    import ray.exceptions
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "batchscope.ray needs Ray, which is not installed: pip install 'batchscope[ray]'"
    ) from _missing

try:
    from sniffio import current_async_library as _current_backend
except ImportError:  # pragma: no cover - Trio requires sniffio: without it, we are on asyncio

    def _current_backend() -> str:
        return "asyncio"


#: Ray's API is only partly typed (unknown type parameters): we call it through Any.
_ray: Any = ray
#: A replica unreachable for now, perhaps restarting (not in older Ray versions).
_ACTOR_UNAVAILABLE: Any = getattr(ray.exceptions, "ActorUnavailableError", ())

__all__ = ["RayPoolStatistics", "RayReplicaPool", "ReplicaUnavailableError"]


class ReplicaUnavailableError(BatchScopeError):
    """
    No replica could run a batch: replicas died and could not be replaced, a replica did
    not start within ``replica_start_timeout`` (the cluster lacks the resources asked for
    in ``actor_options``, or it is gone), or a batch failed on ``max_replica_retries + 1``
    replicas in turn. ``__cause__`` holds Ray's own error where there is one.

    .. versionadded:: 0.1.0
    """


@final
@attrs.frozen(kw_only=True)
class RayPoolStatistics:
    """
    A snapshot of a pool's counters, returned by :meth:`RayReplicaPool.statistics`.

    .. versionadded:: 0.1.0
    """

    #: Batch calls sent to replicas (a batch retried on another replica counts twice).
    batches: int
    #: Batches whose model raised (the error went to the batch's callers).
    failed: int
    #: Batches cancelled while on a replica (``ray.cancel`` was called on their task).
    cancelled: int
    #: Batches sent again to another replica after theirs died or failed to start.
    retried_on_other_replica: int
    #: Dead actors replaced by a new one.
    replicas_restarted: int
    #: Replicas retired for good (not replaceable, or their replacement failed to start).
    replicas_lost: int
    #: Replicas that can take batches now (started or starting).
    live_replicas: int
    #: Batches running now, over all replicas.
    in_flight: int
    #: Batches running now on each replica, by replica index.
    in_flight_per_replica: tuple[int, ...]
    #: The most batches ever running at once on each replica.
    peak_in_flight_per_replica: tuple[int, ...]
    #: Batch calls sent to each replica.
    batches_per_replica: tuple[int, ...]


@attrs.define(eq=False)
class _Replica:
    """One replica slot: the actor serving it now, and its load."""

    index: int
    #: The actor handle serving this slot now (replaced when it dies).
    handle: Any
    #: ``__ray_ready__`` of a replica still starting; None once it has answered.
    ready: Any = None
    #: ``anyio.current_time()`` when the actor was created (bounds its start).
    created: float = 0.0
    dead: bool = False
    in_flight: int = 0
    peak: int = 0
    batches: int = 0
    #: Object refs of cancelled batches that may still be running there (sync actors
    #: cannot be interrupted); the router prefers replicas without them.
    lingering: list[Any] = attrs.Factory(list[Any])


@functools.cache
def _host_class() -> Any:
    """
    The actor class that hosts one model instance.

    Defined in a function so that cloudpickle ships it by value: the cluster's workers
    need Ray and the model's own module, not batchscope.
    """

    class ModelHost:
        def __init__(self, model_cls: Any, method: str, args: Any, kwargs: Any) -> None:
            self._call = getattr(model_cls(*args, **kwargs), method)

        def run(self, batch: Any) -> Any:
            return self._call(batch)

    ModelHost.__qualname__ = ModelHost.__name__ = "BatchscopeModelHost"
    return ray.remote(ModelHost)


def _unwrap(error: ray.exceptions.RayTaskError) -> BaseException:
    """The model's own exception (its type, its message), chained to Ray's error."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, Exception):
        if cause.__cause__ is None:
            cause.__cause__ = error  # keeps the remote traceback in the report
        return cause
    unwrapped: BaseException = cast("Any", error).as_instanceof_cause()
    return unwrapped


@final
class RayReplicaPool(AsyncContextManagerMixin):
    """
    An async batch function that runs each batch on a pool of Ray actors.

    The pool creates ``num_replicas`` actors, each holding one instance of *model_cls*
    (built with ``model_cls(*init_args, **init_kwargs)`` in the actor), and sends each
    batch to the live replica with the fewest batches in flight, at most
    ``max_concurrent_batches_per_replica`` at a time on each. The model's *method*
    (``__call__`` by default) takes the batch and returns one result per item, as a
    local batch function does; an ``Exception`` instance among the results fails that
    item alone. Give the scope ``max_concurrent_batches=pool.capacity``::

        async with RayReplicaPool(Model, num_replicas=2) as pool:
            async with BatchScope(pool, max_concurrent_batches=pool.capacity) as scope:
                ...

    Ray must be initialized first (``ray.init(...)``): the pool never starts a cluster
    by itself. Entering the pool starts the actors and waits until each has built its
    model; leaving it kills the actors it created.

    Failures: a replica that dies with a batch (``RayActorError``) is replaced by a new
    actor and the batch runs again on another replica, up to *max_replica_retries*
    times; an exception raised by the model reaches the batch's callers with its own
    type (Ray's error, with the remote traceback, is its ``__cause__``). A replica that
    does not start within *replica_start_timeout* seconds is retired; when no replica
    is left, calls fail with :class:`ReplicaUnavailableError`.

    Args:
        model_cls: The model class (plain, or already decorated with ``@ray.remote``).
        *init_args: Positional arguments for ``model_cls``.
        num_replicas: How many actors to start.
        actor_options: Options for each actor (``ray.remote(...).options(**...)``):
            ``num_gpus``, ``num_cpus``, ``resources``, ``max_concurrency`` (run a
            replica's batches in threads at once; the model must be thread-safe),
            ``runtime_env``...
        max_concurrent_batches_per_replica: Batches sent to one replica at a time. More
            than one queues the next batch at the actor while the current one runs
            (hiding the round trip), or runs them at once with ``max_concurrency``.
        method: The model's method that takes a batch.
        max_replica_retries: How many times one batch is sent to another replica after
            its replica died or failed to start.
        replica_start_timeout: Seconds an actor may take to start (build its model).
        **init_kwargs: Keyword arguments for ``model_cls``.

    Raises:
        TypeError: An option has the wrong type.
        ValueError: An option is out of range. The message names the option.

    .. versionadded:: 0.1.0
    """

    _handles: list[Any] | None
    _model_cls: Any
    _init_args: tuple[Any, ...]
    _init_kwargs: dict[str, Any]
    _actor_options: dict[str, Any]

    def __init__(
        self,
        model_cls: Any,
        /,
        *init_args: Any,
        num_replicas: int = 2,
        actor_options: Mapping[str, Any] | None = None,
        max_concurrent_batches_per_replica: int = 1,
        method: str = "__call__",
        max_replica_retries: int = 3,
        replica_start_timeout: float | timedelta = 120.0,
        **init_kwargs: Any,
    ) -> None:
        if not callable(model_cls):
            raise TypeError(f"'model_cls' must be a class, got {type(model_cls).__name__}")
        if actor_options is not None and not isinstance(actor_options, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"'actor_options' must be a mapping, not {type(actor_options).__name__}"
            )
        check_int("num_replicas", num_replicas, minimum=1)
        self._setup(
            num_replicas=num_replicas,
            per_replica=max_concurrent_batches_per_replica,
            method=method,
            max_replica_retries=max_replica_retries,
            replica_start_timeout=replica_start_timeout,
        )
        self._model_cls = model_cls
        self._init_args = init_args
        self._init_kwargs = init_kwargs
        self._actor_options = dict(actor_options or {})

    @classmethod
    def from_handles(
        cls,
        handles: Sequence[Any],
        /,
        *,
        max_concurrent_batches_per_replica: int = 1,
        method: str = "__call__",
        max_replica_retries: int = 3,
        replica_start_timeout: float | timedelta = 120.0,
    ) -> RayReplicaPool:
        """
        A pool over actors you created yourself; batches go to ``handle.<method>``.

        The pool neither kills these actors on exit nor replaces one that dies: a dead
        one is retired and its batch runs on another (give the actors ``max_restarts``
        to have Ray restart them instead).

        Args:
            handles: Ray actor handles, one per replica.
            max_concurrent_batches_per_replica: Batches sent to one actor at a time.
            method: The actor method that takes a batch.
            max_replica_retries: How many times one batch is sent to another replica.
            replica_start_timeout: Seconds an actor may take to answer at first.

        Raises:
            TypeError: An option has the wrong type.
            ValueError: *handles* is empty, or an option is out of range.

        .. versionadded:: 0.1.0
        """
        handles = list(handles)
        if not handles:
            raise ValueError("'handles' must hold at least one actor handle")
        for handle in handles:
            if not isinstance(handle, ray.actor.ActorHandle):
                raise TypeError(f"'handles' must hold Ray actor handles, got {handle!r}")
        pool = cls.__new__(cls)
        pool._setup(
            num_replicas=len(handles),
            per_replica=max_concurrent_batches_per_replica,
            method=method,
            max_replica_retries=max_replica_retries,
            replica_start_timeout=replica_start_timeout,
        )
        pool._handles = handles
        return pool

    def _setup(
        self,
        *,
        num_replicas: int,
        per_replica: int,
        method: str,
        max_replica_retries: int,
        replica_start_timeout: float | timedelta,
    ) -> None:
        check_int("max_concurrent_batches_per_replica", per_replica, minimum=1)
        check_int("max_replica_retries", max_replica_retries, minimum=0)
        if not isinstance(method, str) or not method.isidentifier():  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"'method' must be a method name, got {method!r}")
        start_timeout = positive_seconds("replica_start_timeout", replica_start_timeout)
        self._num_replicas = num_replicas
        self._per_replica = per_replica
        self._max_retries = max_replica_retries
        self._method = method
        self._start_timeout = start_timeout
        self._handles = None
        self._model_cls = None
        self._init_args = ()
        self._init_kwargs = {}
        self._actor_options = {}
        self._replicas: list[_Replica] = []
        self._state = ScopeState.NEW
        self._changed: anyio.Event | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._rotation = 0
        self._counts = dict.fromkeys(
            ("batches", "failed", "cancelled", "retried", "restarted", "lost"), 0
        )

    def __repr__(self) -> str:
        return f"<RayReplicaPool {self._num_replicas} replicas, {self._state.value}>"

    @property
    def capacity(self) -> int:
        """Batches the pool runs at once: replicas times the per-replica limit."""
        return self._num_replicas * self._per_replica

    @property
    def handles(self) -> tuple[Any, ...]:
        """The actor handles serving each replica now, by replica index."""
        return tuple(replica.handle for replica in self._replicas)

    def statistics(self) -> RayPoolStatistics:
        """
        A frozen snapshot of the pool's counters.

        .. versionadded:: 0.1.0
        """
        replicas = self._replicas
        counts = self._counts
        return RayPoolStatistics(
            batches=counts["batches"],
            failed=counts["failed"],
            cancelled=counts["cancelled"],
            retried_on_other_replica=counts["retried"],
            replicas_restarted=counts["restarted"],
            replicas_lost=counts["lost"],
            live_replicas=sum(not replica.dead for replica in replicas),
            in_flight=sum(replica.in_flight for replica in replicas),
            in_flight_per_replica=tuple(replica.in_flight for replica in replicas),
            peak_in_flight_per_replica=tuple(replica.peak for replica in replicas),
            batches_per_replica=tuple(replica.batches for replica in replicas),
        )

    # -- lifetime ------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[RayReplicaPool, None]:
        if self._state is not ScopeState.NEW:
            raise RuntimeError("a RayReplicaPool can be opened only once; create a new one")
        if not ray.is_initialized():
            raise RuntimeError(
                "Ray is not initialized: call ray.init(...) (ray.init(address=...) for a "
                "cluster) before opening a RayReplicaPool"
            )
        self._changed = anyio.Event()
        # Cancelled batches leave their thread behind until Ray answers: room for those.
        self._limiter = anyio.CapacityLimiter(2 * self.capacity)
        try:
            if self._handles is None:
                handles = await anyio.to_thread.run_sync(self._spawn_all)
            else:
                handles = self._handles
            now = anyio.current_time()
            self._replicas = [
                _Replica(index, handle, handle.__ray_ready__.remote(), now)
                for index, handle in enumerate(handles)
            ]
            for replica in self._replicas:
                await self._ensure_started(replica, replica.handle)
            self._state = ScopeState.OPEN
            yield self
        finally:
            self._state = ScopeState.CLOSED
            if self._handles is None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await anyio.to_thread.run_sync(self._kill, self.handles, abandon_on_cancel=True)

    def _spawn(self) -> Any:
        """Create one actor (blocks briefly: Ray registers the class on first use)."""
        options = self._actor_options
        if isinstance(self._model_cls, _ray.actor.ActorClass):
            actor_cls: Any = self._model_cls
            if options:
                actor_cls = actor_cls.options(**options)
            return actor_cls.remote(*self._init_args, **self._init_kwargs)
        host = _host_class()
        if options:
            host = host.options(**options)
        return host.remote(self._model_cls, self._method, self._init_args, self._init_kwargs)

    def _spawn_all(self) -> list[Any]:
        return [self._spawn() for _ in range(self._num_replicas)]

    @staticmethod
    def _kill(handles: Sequence[Any]) -> None:
        for handle in handles:
            with contextlib.suppress(Exception):  # already gone, or Ray is shut down
                _ray.kill(handle, no_restart=True)

    def _submit(self, handle: Any, batch: Any) -> Any:
        """Start the remote call of *batch* on *handle*; return its object ref."""
        if self._handles is None and not isinstance(self._model_cls, _ray.actor.ActorClass):
            return handle.run.remote(batch)
        return getattr(handle, self._method).remote(batch)

    # -- the batch function --------------------------------------------------------------

    async def __call__(self, batch: Any) -> Any:
        """
        Run *batch* on a replica and return the model's results.

        Args:
            batch: The batch (a list of items, or a collator's output).

        Returns:
            What the model's method returned.

        Raises:
            ReplicaUnavailableError: No replica could run the batch.
            RuntimeError: The pool is not open.
            Exception: The model's own exception, with its own type.

        Cancellation:
            While waiting for a replica: nothing was sent. While the batch runs: the
            Ray task is cancelled (``ray.cancel``; a task queued at the actor never runs,
            a running one on a plain actor runs on, since Ray cannot interrupt it, and
            can check ``ray.get_runtime_context().is_canceled()``), its slot is freed at
            once and its late result is discarded.

        .. versionadded:: 0.1.0
        """
        if self._state is not ScopeState.OPEN:
            raise RuntimeError(
                f"the RayReplicaPool is {self._state.value}: use it inside `async with pool:`"
            )
        avoid: set[int] = set()
        failures = 0
        while True:
            replica = await self._acquire(avoid)
            handle = replica.handle
            try:
                await self._ensure_started(replica, handle)
                return await self._run(replica, handle, batch)
            except (ray.exceptions.RayActorError, _StartFailedError) as exc:
                error = (exc.__cause__ if isinstance(exc, _StartFailedError) else None) or exc
                failures += 1
                if failures > self._max_retries:
                    raise ReplicaUnavailableError(
                        f"the batch failed on {failures} replicas in turn; last error: {error!r}"
                    ) from error
                avoid.add(replica.index)
                self._counts["retried"] += 1
                if not isinstance(exc, _StartFailedError):
                    await self._replace(replica, handle, exc)
            finally:
                self._release(replica)

    async def _run(self, replica: _Replica, handle: Any, batch: Any) -> Any:
        ref = self._submit(handle, batch)
        self._counts["batches"] += 1
        replica.batches += 1
        try:
            return await self._wait(ref)
        except ray.exceptions.RayTaskError as exc:
            self._counts["failed"] += 1
            raise _unwrap(exc)  # noqa: B904 - _unwrap chains Ray's error as __cause__
        except Exception:
            raise  # Ray's own errors (a dead replica...): the task is over
        except BaseException:
            # Cancelled (all callers gone, batch_timeout, scope closing): stop the
            # remote task; nothing awaits it any more.
            self._counts["cancelled"] += 1
            replica.lingering.append(ref)
            with contextlib.suppress(Exception):  # the task or the cluster is already gone
                _ray.cancel(ref)
            raise

    async def _wait(self, ref: Any) -> Any:
        """Await *ref*: natively under asyncio, in a worker thread elsewhere (Trio)."""
        if _current_backend() == "asyncio":
            return await ref
        return await anyio.to_thread.run_sync(
            _ray.get, ref, abandon_on_cancel=True, limiter=self._limiter
        )

    # -- routing -------------------------------------------------------------------------

    async def _acquire(self, avoid: set[int]) -> _Replica:
        """Take a slot on the least-loaded live replica, waiting for one to free up."""
        while True:
            live = [replica for replica in self._replicas if not replica.dead]
            if not live:
                raise ReplicaUnavailableError(
                    f"no live replica: all {len(self._replicas)} died and could not be "
                    f"replaced (see the Ray logs, or is the cluster gone?)"
                )
            free = [replica for replica in live if replica.in_flight < self._per_replica]
            if free:
                count = len(self._replicas)
                rotation = self._rotation
                best = min(
                    free,
                    key=lambda r: (
                        r.index in avoid,
                        r.in_flight + self._lingering(r),
                        r.ready is not None,
                        (r.index - rotation) % count,
                    ),
                )
                self._rotation = best.index + 1
                best.in_flight += 1
                best.peak = max(best.peak, best.in_flight)
                return best
            assert self._changed is not None
            await self._changed.wait()

    def _release(self, replica: _Replica) -> None:
        replica.in_flight -= 1
        self._notify()

    def _notify(self) -> None:
        assert self._changed is not None
        self._changed.set()
        self._changed = anyio.Event()

    @staticmethod
    def _lingering(replica: _Replica) -> int:
        """Cancelled batches still running on *replica* (pruned as they end)."""
        refs = replica.lingering
        if refs:
            _, replica.lingering = _ray.wait(refs, num_returns=len(refs), timeout=0)
        return len(replica.lingering)

    # -- failures ------------------------------------------------------------------------

    async def _ensure_started(self, replica: _Replica, handle: Any) -> None:
        """Wait (bounded) until a new actor has built its model; retire it if it fails."""
        ready = replica.ready
        if ready is None or replica.handle is not handle:
            return
        remaining = replica.created + self._start_timeout - anyio.current_time()
        try:
            with anyio.fail_after(max(remaining, 0.0)):
                await self._wait(ready)
        except (TimeoutError, ray.exceptions.RayError) as exc:
            if replica.handle is handle and not replica.dead:
                replica.dead = True
                self._counts["lost"] += 1
                self._notify()
                if self._handles is None:
                    self._kill([handle])
            if self._state is ScopeState.NEW:
                why = (
                    f"did not start within {self._start_timeout:g} s (does the cluster "
                    f"have the resources in actor_options, is it still up?)"
                    if isinstance(exc, TimeoutError)
                    else f"failed to start: {exc!r}"
                )
                raise ReplicaUnavailableError(f"replica {replica.index} {why}") from exc
            raise _StartFailedError from exc
        if replica.handle is handle:
            replica.ready = None

    async def _replace(self, replica: _Replica, handle: Any, error: BaseException) -> None:
        """Replace the dead actor *handle* of *replica* (once, whoever notices first)."""
        if replica.handle is not handle or replica.dead:
            return
        if isinstance(error, _ACTOR_UNAVAILABLE):
            return  # unreachable for now (restarting, network): Ray decides if it died
        replica.dead = True
        if self._handles is not None:
            self._counts["lost"] += 1
            self._notify()
            return
        self._kill([handle])
        new: Any = None
        with anyio.CancelScope(shield=True):
            try:
                new = await anyio.to_thread.run_sync(self._spawn)
            except Exception:
                self._counts["lost"] += 1  # the cluster refuses new actors: retire the slot
                self._notify()
                return
        replica.handle = new
        replica.ready = new.__ray_ready__.remote()
        replica.created = anyio.current_time()
        replica.lingering = []
        replica.dead = False
        self._counts["restarted"] += 1
        self._notify()


class _StartFailedError(Exception):
    """A replica chosen for a batch failed to start (``__cause__`` says how)."""
