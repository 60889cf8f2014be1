"""
batchscope in an ASGI web service (Starlette, FastAPI): a lifespan and error responses.

:func:`lifespan` opens scopes with the application and drains them at shutdown (texts
already submitted still run before the server exits); :func:`add_exception_handlers`
maps what batchscope raises to HTTP answers a client or a load balancer understands:

======================================================  ======  ==================
raised by ``submit``                                    status  ``Retry-After``
======================================================  ======  ==================
:class:`~batchscope.QueueFullError` (full queue)        429     the drain estimate
:class:`~batchscope.DeadlineUnmeetableError`            429     the drain estimate
:class:`~batchscope.CircuitOpenError` (open breaker)    503     the breaker's reset
:class:`~batchscope.ScopeClosedError` (shutting down)   503     none
``TimeoutError`` (the request's own deadline passed)    504     none
======================================================  ======  ==================

``Retry-After`` is whole seconds, rounded up, at least 1 (HTTP's delta-seconds).

Needs Starlette (FastAPI is built on it): ``pip install 'batchscope[asgi]'``.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Union

try:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
except ImportError as _error:  # pragma: no cover - exercised without starlette
    raise ImportError(
        "batchscope.asgi needs Starlette; install the 'asgi' extra: pip install 'batchscope[asgi]'"
    ) from _error

from ._continuous import ContinuousScope
from ._decorator import BatchedFunction
from ._exceptions import (
    CircuitOpenError,
    DeadlineUnmeetableError,
    QueueFullError,
    ScopeClosedError,
)
from ._scope import BatchScope

__all__ = ["add_exception_handlers", "error_response", "exception_handlers", "lifespan"]

#: What :func:`lifespan` opens: a scope (batched or continuous), a ``@bs.batch`` function
#: (its ``serving()``), or a callable that builds a scope when the application starts.
Servable = Union[  # noqa: UP007 - a runtime alias, Python 3.10
    BatchScope[Any, Any],
    ContinuousScope[Any, Any],
    BatchedFunction[Any, Any],
    Callable[[], Union[BatchScope[Any, Any], ContinuousScope[Any, Any]]],  # noqa: UP007
]


def lifespan(
    **scopes: Servable,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """
    A lifespan for ``Starlette(lifespan=...)`` / ``FastAPI(lifespan=...)`` that opens
    *scopes* when the application starts and drains them when it shuts down.

    Each keyword names a scope in the request state: ``lifespan(embed=scope)`` makes the
    open scope ``request.state.embed``. A value may be a :class:`~batchscope.BatchScope`
    or a :class:`~batchscope.ContinuousScope`, a ``@bs.batch`` function (its
    :meth:`~batchscope.BatchedFunction.serving` is entered; ``request.state.name`` is
    the function), or a callable with no arguments that builds a scope (so that one
    application object can be started more than once, as tests do).

    Scopes open in the order given and close in reverse. At shutdown the server stops
    taking requests first; then each scope closes, its queued items still run, and the
    lifespan returns once they have.

    Returns:
        The lifespan function: ``app -> async context manager`` yielding the state.

    Cancellation:
        If the server cancels the lifespan, every scope is cancelled: items still
        queued fail with :class:`~batchscope.ScopeClosedError` and nothing keeps running.

    .. versionadded:: 0.2.0
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncGenerator[dict[str, Any], None]:
        async with AsyncExitStack() as stack:
            state: dict[str, Any] = {}
            for name, servable in scopes.items():
                if isinstance(servable, BatchedFunction):
                    await stack.enter_async_context(servable.serving())
                    state[name] = servable
                    continue
                scope = (
                    servable if isinstance(servable, (BatchScope, ContinuousScope)) else servable()
                )
                state[name] = await stack.enter_async_context(scope)
            yield state

    return run


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def error_response(exc: Exception) -> Response | None:
    """
    The HTTP response for *exc* by the table above, or None when it maps to none.

    .. versionadded:: 0.2.0
    """
    if isinstance(exc, (QueueFullError, DeadlineUnmeetableError)):
        return JSONResponse(
            {"detail": str(exc)},
            status_code=429,
            headers={"Retry-After": _retry_after(exc.retry_after)},
        )
    if isinstance(exc, CircuitOpenError):
        return JSONResponse(
            {"detail": str(exc)},
            status_code=503,
            headers={"Retry-After": _retry_after(exc.retry_after)},
        )
    if isinstance(exc, ScopeClosedError):
        return JSONResponse({"detail": str(exc)}, status_code=503)
    if isinstance(exc, TimeoutError):
        return JSONResponse({"detail": "the request's deadline passed"}, status_code=504)
    return None


async def _handle(request: Request, exc: Exception) -> Response:
    response = error_response(exc)
    if response is None:  # pragma: no cover - only registered for mapped types
        raise exc
    return response


def exception_handlers() -> Mapping[type[Exception], Callable[..., Awaitable[Response]]]:
    """
    The handlers, for ``Starlette(exception_handlers=...)`` or FastAPI's.

    .. versionadded:: 0.2.0
    """
    return dict.fromkeys(
        (QueueFullError, DeadlineUnmeetableError, CircuitOpenError, ScopeClosedError, TimeoutError),
        _handle,
    )


def add_exception_handlers(app: Any) -> None:
    """
    Register the handlers on a Starlette or FastAPI *app* (``app.add_exception_handler``).

    .. versionadded:: 0.2.0
    """
    for kind, handler in exception_handlers().items():
        app.add_exception_handler(kind, handler)
