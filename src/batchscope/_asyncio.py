"""
The caller's deadline under asyncio and uvloop: the one module of batchscope that imports
asyncio.

``submit`` records its caller's effective deadline (``anyio.current_effective_deadline()``)
on every item. Under asyncio AnyIO finds it by ``asyncio.current_task()`` (which looks up
the running loop on every call), a weak-key dictionary of task states, and a walk up the
task's cancel scopes through properties: a large share of the per-item path. Here the
loop is bound once, when a scope opens (``_completion.loop_calls``), and the same walk
reads the same fields of AnyIO's cancel scopes directly: the same value, cheaper (the
figures: docs/benchmarks.md, "Before and after").

Those fields are AnyIO's private ones. :func:`deadline_for` checks that they are where this
module reads them, on a cancel scope it builds, and returns None otherwise (a future AnyIO
that moved them): the scope then uses AnyIO's public function, the same value, slower.
``tests/test_deadline_reader.py`` asserts that the fast path is found, and that it agrees
with AnyIO under nested, shielded, cancelled and moved deadlines.
"""

from __future__ import annotations

import math
from asyncio import current_task
from collections.abc import Callable
from typing import Any
from weakref import ref

__all__ = ["deadline_for"]

_INF = math.inf
_FIELDS = ("_deadline", "_shield", "_cancel_called", "_parent_scope")


def _anyio_task_states() -> dict[Any, Any] | None:
    """AnyIO's task states (weak reference of a task -> its state), or None if moved."""
    try:
        from anyio._backends import _asyncio as backend
    except ImportError:  # pragma: no cover - a future AnyIO that moved them
        return None
    data: object = getattr(getattr(backend, "_task_states", None), "data", None)
    scope_type: Any = getattr(backend, "CancelScope", None)
    if not isinstance(data, dict) or scope_type is None:
        return None  # pragma: no cover - a future AnyIO that moved them
    probe = scope_type(deadline=1.0, shield=True)
    if not all(hasattr(probe, name) for name in _FIELDS):
        return None  # pragma: no cover - a future AnyIO that renamed them
    states: dict[Any, Any] = data  # pyright: ignore[reportUnknownVariableType]
    return states


def deadline_for(loop: Any) -> Callable[[], float] | None:
    """
    ``anyio.current_effective_deadline`` for tasks of *loop* (an asyncio event loop), or
    None if AnyIO's internals are not where this module reads them.
    """
    states = _anyio_task_states()
    if states is None:  # pragma: no cover - a future AnyIO that moved them
        return None

    def deadline() -> float:
        task = current_task(loop)
        if task is None:
            return _INF
        state = states.get(ref(task))
        if state is None:
            return _INF
        scope = state.cancel_scope
        found = _INF
        while scope is not None:
            # AnyIO's walk: the soonest deadline up to the first shield; -inf once a
            # scope on the way has been cancelled.
            if scope._cancel_called:
                return -_INF
            if scope._deadline < found:
                found = scope._deadline
            if scope._shield:
                break
            scope = scope._parent_scope
        return found

    return deadline
