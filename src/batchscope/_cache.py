"""
The cache and in-flight deduplication in front of the queue.

``cache=`` takes any ``MutableMapping`` (``cachetools.LRUCache``, ``TTLCache``, a dict),
used synchronously on the event loop, or an object with ``async get(key)`` (returning
the value or :data:`MISSING`) and ``async set(key, value)`` — a remote cache. A hit skips
the queue; a cached ``None`` is a hit; failures are never cached.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar, cast, final

import anyio
import anyio.lowlevel

from ._items import (
    ABANDONED,
    DONE,
    EXPIRED,
    NO_KEY,
    POOLED,
    QUEUED,
    RUNNING,
    CallbackItem,
    Item,
    WaitedItem,
)
from ._lifecycle import ScopeState

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["MISSING", "AsyncCache", "CacheAdapter", "CacheFront", "Missing", "namespaced"]

In = TypeVar("In")
Out = TypeVar("Out")


@final
class Missing:
    """The type of :data:`MISSING`."""

    _instance: Missing | None = None

    def __new__(cls) -> Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "batchscope.MISSING"

    def __bool__(self) -> bool:
        return False


#: What :meth:`AsyncCache.get` returns for a key it does not hold.
MISSING: Final = Missing()


class AsyncCache(Protocol):
    """
    An asynchronous cache (Redis, memcached...) for ``BatchScope(cache=...)``.

    .. versionadded:: 0.1.0
    """

    async def get(self, key: Any) -> Any:
        """
        Return the value stored for *key*, or :data:`MISSING`.

        Cancellation:
            The caller of ``submit`` is cancelled while waiting: nothing is queued and
            the submit counts as cancelled.
        """
        ...

    async def set(self, key: Any, value: Any) -> None:
        """
        Store *value* for *key*.

        Cancellation:
            Called from the batch's task after every caller has its result; cancelled
            only when the scope is, and then the value is simply not stored.
        """
        ...


class CacheAdapter:
    """One interface over sync mappings and async caches."""

    def __init__(self, cache: object) -> None:
        get = getattr(cache, "get", None)
        set_ = getattr(cache, "set", None)
        if inspect.iscoroutinefunction(get) and inspect.iscoroutinefunction(set_):
            self.is_async = True
        elif isinstance(cache, MutableMapping):
            self.is_async = False
        else:
            raise TypeError(
                f"'cache' must be a MutableMapping (e.g. cachetools.LRUCache) or an "
                f"object with async get() and set(), got {type(cache).__name__}"
            )
        self._cache: object = cache

    def get_nowait(self, key: Hashable) -> Any:
        """Look *key* up in a sync mapping; MISSING when absent."""
        mapping = cast("MutableMapping[Hashable, Any]", self._cache)
        try:
            return mapping[key]
        except KeyError:
            return MISSING

    async def get(self, key: Hashable) -> Any:
        if self.is_async:
            return await cast(AsyncCache, self._cache).get(key)
        return self.get_nowait(key)

    def set_nowait(self, key: Hashable, value: Any) -> None:
        cast("MutableMapping[Hashable, Any]", self._cache)[key] = value

    async def set(self, key: Hashable, value: Any) -> None:
        if self.is_async:
            await cast(AsyncCache, self._cache).set(key, value)
        else:
            self.set_nowait(key, value)


class _NamespacedMapping(MutableMapping[Hashable, Any]):
    """A view of a mapping whose keys are ``(namespace, key)`` underneath."""

    def __init__(self, mapping: MutableMapping[Hashable, Any], namespace: object) -> None:
        self._mapping = mapping
        self._namespace = namespace

    def __getitem__(self, key: Hashable) -> Any:
        return self._mapping[(self._namespace, key)]

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._mapping[(self._namespace, key)] = value

    def __delitem__(self, key: Hashable) -> None:
        del self._mapping[(self._namespace, key)]

    def __iter__(self) -> Iterator[Hashable]:
        for stored in list(self._mapping):
            if isinstance(stored, tuple):
                pair = cast("tuple[object, ...]", stored)
                if len(pair) == 2 and pair[0] is self._namespace:
                    yield pair[1]

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _NamespacedAsyncCache:
    """An async cache whose keys are ``(namespace, key)`` underneath."""

    def __init__(self, cache: AsyncCache, namespace: object) -> None:
        self._cache = cache
        self._namespace = namespace

    async def get(self, key: Any) -> Any:
        return await self._cache.get((self._namespace, key))

    async def set(self, key: Any, value: Any) -> None:
        await self._cache.set((self._namespace, key), value)


def namespaced(cache: object, namespace: object) -> object:
    """
    *cache* seen through keys ``(namespace, key)``: one shared cache, separate entries.

    What a batched method's instances use, so that one instance's result never answers
    another instance's call.
    """
    if CacheAdapter(cache).is_async:
        return _NamespacedAsyncCache(cast(AsyncCache, cache), namespace)
    return _NamespacedMapping(cast("MutableMapping[Hashable, Any]", cache), namespace)


def _left(item: CallbackItem[Any, Any]) -> None:
    """The callback of an item whose caller left (it leads callers who joined later)."""


class CacheFront(Generic[In, Out]):
    """
    What stands between ``submit`` and the queue when a scope has a cache or a ``key``.

    A hit is answered at once (the queue never sees it). With ``key=``, a submit (or an
    item of ``submit_many``/``map``) whose key is already pending or running does not
    queue a second item: it waits for the same one, which counts one more waiter
    (``Item.waiters``); the item is withdrawn or its batch abandoned only when its last
    waiter has left. An abandoned item stays the key's leader while the call of fn that
    covers it runs: an identical submit then rejoins it instead of computing again.
    Results are cached when the batch ends; failures never are.
    """

    def __init__(
        self, engine: Engine[In, Out], cache: object, key: Callable[[In], Hashable] | None
    ) -> None:
        self._engine = engine
        self._cache = None if cache is None else CacheAdapter(cache)
        self._key_fn = key
        #: Leaders of in-flight deduplicated keys.
        self._inflight: dict[Hashable, Item[In, Out]] = {}

    def forget(self, item: Item[In, Out]) -> None:
        """Drop *item* from the in-flight keys, if it leads one."""
        if item.key is not NO_KEY and self._inflight.get(item.key) is item:
            del self._inflight[item.key]

    def register(self, item: Item[In, Out]) -> None:
        """*item*, about to be queued, leads its key (with ``key=``)."""
        if self._key_fn is not None:
            self._inflight[item.key] = item

    def leader(self, key: Hashable) -> Item[In, Out] | None:
        """
        The item computing *key* already (with ``key=``), for another caller to join.

        An abandoned item whose result will still arrive is running again, with no
        waiter yet: the joining caller counts itself in (``waiters``, statistics).
        """
        if self._key_fn is None:
            return None
        leader = self._inflight.get(key)
        if leader is None:
            return None
        state = leader.state
        if state == ABANDONED and self._engine.executor.will_end(leader):
            leader.state = RUNNING
            leader.waiters = 0
            leader.batch.live += 1
            if isinstance(leader, CallbackItem):
                leader.signal = _left  # its own caller left: only the joiners hear of it
            return leader
        if state in (QUEUED, POOLED, EXPIRED, RUNNING):
            return leader
        return None

    def follow(
        self,
        value: In,
        key: Hashable,
        index: int,
        deadline: float,
        callback: Callable[[CallbackItem[In, Out]], None],
    ) -> CallbackItem[In, Out] | None:
        """
        An item of ``submit_many``/``map`` joins the item computing *key*, if any.

        Returns its FOLLOWING item (counted as deduplicated; the caller counted the
        submit), which ends with the leader's outcome; None when no item computes *key*.
        """
        leader = self.leader(key)
        if leader is None:
            return None
        engine = self._engine
        recorder = engine.recorder
        recorder.deduplicated += 1
        leader.waiters += 1
        if leader.state == RUNNING:
            recorder.running += 1
        else:
            recorder.pending += 1
        if deadline > leader.deadline:
            leader.deadline = deadline
            engine.scheduler.revive_now(leader)
        follower = CallbackItem[In, Out](value, 0, 0.0, engine.clock(), deadline, index, callback)
        leader.lead(follower)
        return follower

    async def settle(self, items: list[Item[In, Out]]) -> None:
        """After a batch: cache the successes, release the in-flight keys."""
        cache = self._cache
        for item in items:
            key = item.key
            if key is NO_KEY:
                continue
            self.forget(item)
            if cache is not None and item.state == DONE and item.error is None:
                try:
                    await cache.set(key, item.result)
                except Exception:
                    self._engine.log.log(
                        logging.ERROR,
                        "cache-set",
                        "batchscope: storing a result in the cache failed",
                        exc=True,
                    )

    def _key_of(self, value: In) -> Hashable:
        key_fn = self._key_fn
        if key_fn is None:
            key: object = value
        else:
            try:
                key = key_fn(value)
            except Exception as exc:
                raise ValueError(
                    f"the 'key' function raised {type(exc).__name__} for this item: {exc}"
                ) from exc
        try:
            hash(key)
        except TypeError:
            if key_fn is not None:
                raise TypeError(
                    f"the 'key' function must return a hashable key, got {type(key).__name__}"
                ) from None
            raise TypeError(
                f"the cache key of this item ({type(key).__name__}) is not hashable; "
                f"pass key= to BatchScope to derive a hashable key"
            ) from None
        return key

    async def lookup(self, value: In) -> tuple[Hashable, Any]:
        """
        The item's key and its cached result (MISSING on a miss); counts hits, misses.

        The caller has counted the submit already: while an async cache looks the key up,
        it counts as ``admitting``.
        """
        key = self._key_of(value)
        cache = self._cache
        if cache is None:
            return key, MISSING
        recorder = self._engine.recorder
        if not cache.is_async:
            hit = cache.get_nowait(key)
        else:
            recorder.admitting += 1
            try:
                hit = await cache.get(key)
            finally:
                recorder.admitting -= 1
        if hit is MISSING:
            recorder.cache_misses += 1
        else:
            recorder.cache_hits += 1
        return key, hit

    async def submit(self, item: In, priority: float) -> Out:
        """``submit()`` through the cache and in-flight deduplication."""
        engine = self._engine
        if engine.state is not ScopeState.OPEN:
            raise engine.closed_now()
        recorder = engine.recorder
        recorder.submitted += 1
        try:
            key, hit = await self.lookup(item)
        except Exception:
            engine.reject("bad_key")
            raise
        except BaseException:
            recorder.cancelled += 1  # cancelled during an async cache look-up
            raise
        if hit is not MISSING:
            recorder.completed += 1
            try:
                await anyio.lowlevel.checkpoint()
            except BaseException:
                recorder.completed -= 1  # the caller sees its cancellation, not the hit
                recorder.cancelled += 1
                raise
            return cast(Out, hit)
        deadline = engine.deadline()
        leader = self.leader(key)
        if leader is None:
            cost = await engine.admit(item, count=False)
            # While this call waited for room, an identical one may have been queued.
            leader = self.leader(key)
            if leader is None:
                waited = engine.item_type(
                    item, priority, cost, engine.clock(), deadline, engine.new_signal()
                )
                waited.key = key
                engine.queue(waited)
                if self._key_fn is not None:
                    self._inflight[key] = waited
                return await engine.wait(waited)
            engine.room.release()
        # Someone is computing this key already: wait for the same item.
        recorder.deduplicated += 1
        leader.waiters += 1
        if leader.state == RUNNING:
            recorder.running += 1
        else:
            recorder.pending += 1
        if deadline > leader.deadline:
            leader.deadline = deadline
            # Set aside for the first caller's deadline? This one can wait longer.
            engine.scheduler.revive_now(leader)
        # A follower parks on an event of its own, whatever kind of item leads.
        return await engine.wait(cast("WaitedItem[In, Out]", leader), follower=True)
