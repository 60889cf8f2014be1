"""
Helpers for testing code that uses batchscope.

:class:`FakeBatchFunction` is a batch function that records every batch it is given and
can be told to fail chosen items, fail whole batches, or take time — in the spirit of
httpx's ``MockTransport``::

    from batchscope.testing import FakeBatchFunction

    fake = FakeBatchFunction(lambda x: x * 2, fail_items={3: ValueError("bad")})
    async with BatchScope(fake, max_batch_size=4) as scope:
        assert await scope.submit(2) == 4
    assert fake.batches == [[2]]
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar, final

import anyio
import attrs

__all__ = ["FakeBatchFunction"]

In = TypeVar("In")
Out = TypeVar("Out")


def _identity(item: Any) -> Any:
    return item


@final
@attrs.define(eq=False)
class FakeBatchFunction(Generic[In, Out]):
    """
    An async batch function that records its calls.

    Args:
        transform: Computes one item's result (the identity by default).
        delay: Seconds each call takes (``anyio.sleep``, so virtual clocks apply).
        fail_items: Items (hashable) whose result is the given exception instance: that
            item fails alone, the rest of its batch succeeds.
        raise_on: Items that make the *whole* batch raise the given exception.

    .. versionadded:: 0.1.0
    """

    transform: Callable[[In], Out] = _identity
    delay: float = 0.0
    fail_items: Mapping[Hashable, Exception] = attrs.Factory(dict[Hashable, Exception])
    raise_on: Mapping[Hashable, BaseException] = attrs.Factory(dict[Hashable, BaseException])
    #: Every batch received, in call order (a copy of the item list).
    batches: list[list[In]] = attrs.field(factory=list[list[In]], init=False)
    #: ``anyio.current_time()`` at the start of each call.
    call_times: list[float] = attrs.field(factory=list[float], init=False)
    #: Calls that were cancelled before they returned.
    cancelled_calls: int = attrs.field(default=0, init=False)

    @property
    def items(self) -> list[In]:
        """Every item received, in order, flattened over batches."""
        return [item for batch in self.batches for item in batch]

    async def __call__(self, items: list[In]) -> list[Out | Exception]:
        """
        Record *items* as a batch, take ``delay`` seconds, return their results.

        Raises:
            BaseException: The exception ``raise_on`` gives for an item of the batch.

        Cancellation:
            During the delay: counted in :attr:`cancelled_calls` and propagated.
        """
        self.batches.append(list(items))
        self.call_times.append(anyio.current_time())
        try:
            if self.delay:
                await anyio.sleep(self.delay)
        except anyio.get_cancelled_exc_class():
            self.cancelled_calls += 1
            raise
        for item in items:
            if isinstance(item, Hashable) and item in self.raise_on:
                raise self.raise_on[item]
        results: list[Out | Exception] = []
        for item in items:
            if isinstance(item, Hashable) and item in self.fail_items:
                results.append(self.fail_items[item])
            else:
                results.append(self.transform(item))
        return results
