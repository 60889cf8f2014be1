"""
One item through every way it can end, with what its caller sees and what the counters say.

Each case opens a fresh scope around a :class:`~batchscope.testing.FakeBatchFunction`,
submits the item ``1`` and prints: what the caller got, whether the item reached the batch
function, and the statistics counters that are not zero once the scope has exited. The
semantics page of the documentation is this program's output, explained.

Run it (only batchscope needed)::

    python examples/item_lifecycle.py                  # asyncio
    python examples/item_lifecycle.py --backend trio
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

import anyio
import attrs

import batchscope as bs
from batchscope.testing import FakeBatchFunction

COUNTERS = ("submitted", "completed", "failed", "cancelled", "rejected", "batches")


@attrs.frozen
class Ending:
    """How the item ended in one case."""

    case: str
    caller_sees: str
    reached_fn: bool
    counters: dict[str, int]
    released_by: list[str]


def _ending(
    case: str, caller_sees: str, fake: FakeBatchFunction[int, int], scope: bs.BatchScope[int, int]
) -> Ending:
    stats = scope.statistics()
    assert stats.pending == stats.running == 0  # the scope has exited: nothing is left
    counters = {name: getattr(stats, name) for name in COUNTERS if getattr(stats, name)}
    reasons = [reason for reason, count in stats.release_reasons.items() if count]
    return Ending(case, caller_sees, 1 in fake.items, counters, reasons)


def _describe(outcome: object) -> str:
    if isinstance(outcome, BaseException):
        cause = outcome.__cause__
        because = f" (__cause__: {type(cause).__name__})" if cause is not None else ""
        return f"raises {type(outcome).__name__}{because}"
    return f"returns {outcome!r}"


async def completes() -> Ending:
    """The item is batched, fn returns its result."""
    fake = FakeBatchFunction[int, int](lambda x: x * 10)
    async with bs.BatchScope(fake, max_wait=0.01) as scope:
        result = await scope.submit(1)
    return _ending("completes", _describe(result), fake, scope)


async def withdrawn_before_dispatch() -> Ending:
    """The caller gives up before its item could go: it is withdrawn, fn never sees it."""
    fake = FakeBatchFunction[int, int]()
    async with (
        bs.BatchScope(fake, max_wait=10.0) as scope,
        anyio.create_task_group() as task_group,
    ):
        try:
            # A deadline the scheduler knows of would send the item early, to be served
            # in time; this caller sets its deadline only once its item is queued (say,
            # a client that hangs up), so the item waits for max_wait and the caller's
            # timeout withdraws it.
            with anyio.fail_after(None) as caller:

                async def give_up_soon() -> None:  # runs once submit() has queued
                    caller.deadline = anyio.current_time() + 0.01

                task_group.start_soon(give_up_soon)
                await scope.submit(1)
        except TimeoutError as exc:
            seen = _describe(exc)
    return _ending("caller gives up before dispatch", seen, fake, scope)


async def cancelled_after_dispatch() -> Ending:
    """The caller gives up while its batch runs: it leaves at once; the batch goes on."""
    fake = FakeBatchFunction[int, int](delay=0.5)
    async with (
        bs.BatchScope(fake, max_batch_size=2, max_wait=10.0) as scope,
        anyio.create_task_group() as task_group,
    ):
        task_group.start_soon(scope.submit, 2)  # a companion that stays
        try:
            with anyio.fail_after(0.1):
                await scope.submit(1)  # the batch [2, 1] is full: it runs at once
        except TimeoutError as exc:
            seen = _describe(exc)
    assert fake.cancelled_calls == 0  # the companion still got its result
    return _ending("caller gives up after dispatch", seen, fake, scope)


async def batch_fails() -> Ending:
    """fn raises: every item of that batch gets that very exception."""
    fake = FakeBatchFunction[int, int](raise_on={1: ValueError("bad batch")})
    async with bs.BatchScope(fake, max_wait=0.01) as scope:
        try:
            await scope.submit(1)
        except ValueError as exc:
            seen = _describe(exc)
    return _ending("fn raises", seen, fake, scope)


async def item_fails_alone() -> Ending:
    """fn returns an exception at the item's position: that item alone fails."""
    fake = FakeBatchFunction[int, int](fail_items={1: LookupError("bad item")})
    async with bs.BatchScope(fake, max_wait=0.01) as scope:
        outcomes = await scope.submit_many([1, 2], return_exceptions=True)
    assert outcomes[1] == 2  # its batch companion succeeded
    return _ending("fn returns an exception for it", _describe(outcomes[0]), fake, scope)


async def submitted_after_close() -> Ending:
    """The scope was closed (you closed it): the submit is refused and not counted."""
    fake = FakeBatchFunction[int, int]()
    async with bs.BatchScope(fake) as scope:
        scope.close()
        try:
            await scope.submit(1)
        except bs.ScopeClosedError as exc:
            seen = _describe(exc)
    return _ending("submitted after close()", seen, fake, scope)


async def pending_when_scope_closes() -> Ending:
    """The scope closes while the item is pending: it still runs (the queue drains)."""
    fake = FakeBatchFunction[int, int]()
    result: list[int] = []
    async with bs.BatchScope(fake, max_wait=10.0) as scope:

        async def call() -> None:
            result.append(await scope.submit(1))

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            scope.close()  # the pending item is dispatched at once ("drain"), not in 10 s
    return _ending("pending when the scope closes", _describe(result[0]), fake, scope)


async def scope_breaks() -> Ending:
    """The ``async with`` body raises while the item waits: the caller outside fails."""
    fake = FakeBatchFunction[int, int]()
    seen: list[str] = []

    async def outside(scope: bs.BatchScope[int, int]) -> None:
        try:
            await scope.submit(1)
        except bs.ScopeClosedError as exc:
            seen.append(_describe(exc))

    async with anyio.create_task_group() as task_group:
        try:
            async with bs.BatchScope(fake, max_wait=10.0) as scope:
                task_group.start_soon(outside, scope)
                await anyio.wait_all_tasks_blocked()
                raise RuntimeError("the body failed")
        except RuntimeError:
            pass  # it propagated out of ``async with`` unchanged
    return _ending("the scope breaks", seen[0], fake, scope)


CASES: list[Callable[[], Awaitable[Ending]]] = [
    completes,
    withdrawn_before_dispatch,
    cancelled_after_dispatch,
    batch_fails,
    item_fails_alone,
    submitted_after_close,
    pending_when_scope_closes,
    scope_breaks,
]


async def run_all() -> list[Ending]:
    return [await case() for case in CASES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    for ending in anyio.run(run_all, backend=args.backend):
        counters = ", ".join(f"{name}={value}" for name, value in ending.counters.items())
        released = ", ".join(ending.released_by) or "-"
        print(f"{ending.case}:\n    caller {ending.caller_sees}")
        print(
            f"    reached fn: {'yes' if ending.reached_fn else 'no'}; batch released by: {released}"
        )
        print(f"    counters: {counters or 'none moved'}")


if __name__ == "__main__":
    main()
