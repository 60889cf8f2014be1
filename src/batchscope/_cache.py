"""
Result cache and in-flight deduplication keys.

``cache=`` takes any ``MutableMapping`` (``cachetools.LRUCache``, ``TTLCache``, a dict),
used synchronously on the event loop, or an object with ``async get(key)`` (returning
the value or :data:`MISSING`) and ``async set(key, value)`` — a remote cache. A hit skips
the queue; a cached ``None`` is a hit; failures are never cached.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, MutableMapping
from typing import Any, Final, Protocol, cast, final

__all__ = ["MISSING", "AsyncCache", "CacheAdapter", "Missing"]


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
        """Return the value stored for *key*, or :data:`MISSING`."""
        ...

    async def set(self, key: Any, value: Any) -> None:
        """Store *value* for *key*."""
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
