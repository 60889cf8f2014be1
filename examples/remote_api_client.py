"""
Fan many concurrent requests into a remote *batch* API, one HTTP call per batch (httpx).

Many remote inference services take a list of inputs per call and charge (in latency and
quota) per call. Here hundreds of concurrent callers each ``await scope.submit(text)``;
the batch function POSTs the whole batch as one request and hands every caller its own
entry of the response. The remote API reports a bad input per entry; the batch function
turns such an entry into an exception at that position, so that caller alone fails.

The "remote" service is a stand-in started by this program: a small Starlette app served
by Hypercorn on 127.0.0.1, on an ephemeral port, under asyncio or Trio.

Run it (needs ``pip install httpx hypercorn starlette``, and ``trio`` for Trio)::

    python examples/remote_api_client.py
    python examples/remote_api_client.py --backend trio --items 2000 --callers 200
"""

from __future__ import annotations

import argparse
import hashlib
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import attrs
import httpx
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import batchscope as bs

#: The remote API takes at most this many inputs per call (413 beyond).
MAX_INPUTS_PER_CALL = 64


# -- the stand-in for the remote service -------------------------------------------------


def create_remote_api(latency: float = 0.020) -> Starlette:
    """
    The remote batch API: ``POST /v1/embeddings {"inputs": [...]}``.

    Each call takes *latency* seconds whatever its size, like a network round trip. The
    response has one entry per input, ``{"embedding": [...]}`` or ``{"error": "..."}``
    (an empty input is an error). ``app.state.calls`` records the size of every call.
    """

    async def embeddings(request: Request) -> JSONResponse:
        inputs = (await request.json())["inputs"]
        if len(inputs) > MAX_INPUTS_PER_CALL:
            return JSONResponse({"detail": "too many inputs"}, status_code=413)
        request.app.state.calls.append(len(inputs))
        await anyio.sleep(latency)
        data = [
            {"embedding": list(hashlib.blake2b(text.encode(), digest_size=8).digest())}
            if text
            else {"error": "input is empty"}
            for text in inputs
        ]
        return JSONResponse({"data": data})

    app = Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"])])
    app.state.calls = []
    return app


@asynccontextmanager
async def serving(app: Starlette, *, backend: str) -> AsyncIterator[str]:
    """
    Serve *app* with Hypercorn on an ephemeral port of 127.0.0.1; yield its base URL.

    *backend* is the running event loop's, ``"asyncio"`` or ``"trio"``. The socket
    listens before the server starts, so clients may connect at once.
    """
    serve: Callable[..., Coroutine[Any, Any, None]]
    if backend == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns (and closes) it now
    config.accesslog = None
    config.loglevel = "WARNING"
    config.graceful_timeout = 5.0
    stop = anyio.Event()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(partial(serve, app, config, shutdown_trigger=stop.wait))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop.set()


# -- the client side ---------------------------------------------------------------------


class RemoteInputError(Exception):
    """The remote API refused one input of a batch."""


@attrs.frozen
class RemoteBatchEmbedder:
    """
    The batch function: one POST for the whole batch, one result per input.

    It makes exactly one attempt. A failed call (a transport error, or an HTTP error
    status from ``raise_for_status``) raises, and every caller in that batch gets that
    exception; an ``{"error": ...}`` entry fails its own caller alone.
    """

    http: httpx.AsyncClient

    async def __call__(self, texts: list[str]) -> list[list[int] | Exception]:
        response = await self.http.post("/v1/embeddings", json={"inputs": texts})
        response.raise_for_status()
        return [
            RemoteInputError(entry["error"]) if "error" in entry else entry["embedding"]
            for entry in response.json()["data"]
        ]


def scope_options() -> dict[str, Any]:
    """
    The options of the BatchScope in front of the remote API, kept in one place.

    The batch function above makes one attempt and raises on failure; resilience toward
    the remote service is the scope's: transient HTTP failures are retried with backoff,
    a breaker stops hammering an API that keeps failing, and a rate limit keeps within
    its quota (requests per second and tokens per minute).
    """
    return {
        "max_batch_size": MAX_INPUTS_PER_CALL,  # the API's own limit per call
        "max_wait": 0.010,
        "max_concurrent_batches": 4,  # calls in flight at once
        "cost": len,  # tokens, for the per-minute quota
        "retry": bs.Retry(attempts=3, on=httpx.TransportError, wait_initial=0.05, wait_max=0.5),
        "circuit_breaker": bs.CircuitBreaker(failure_threshold=5, reset_timeout=5.0),
        "rate_limit": bs.RateLimit(batches_per_second=200, cost_per_minute=6_000_000),
    }


@attrs.frozen
class Report:
    """What a run did."""

    succeeded: int
    failed: int
    http_calls: list[int]
    statistics: bs.BatchStatistics


async def run_clients(
    base_url: str, *, items: int, callers: int, time_limit: float = 60.0
) -> tuple[int, int, bs.BatchStatistics]:
    """
    *callers* concurrent tasks submit *items* texts in all (every 50th one empty).

    Returns (succeeded, failed, statistics). Bounded by *time_limit* seconds.
    """
    options = scope_options()
    limits = httpx.Limits(max_connections=options["max_concurrent_batches"])
    succeeded = failed = 0

    async def caller(scope: bs.BatchScope[str, list[int]], first: int) -> None:
        nonlocal succeeded, failed
        for i in range(first, items, callers):
            text = "" if i % 50 == 49 else f"item {i}"
            try:
                await scope.submit(text)
            except RemoteInputError:
                failed += 1
            else:
                succeeded += 1

    with anyio.fail_after(time_limit):
        async with (
            httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0) as http,
            bs.BatchScope(RemoteBatchEmbedder(http), **options) as scope,
            anyio.create_task_group() as task_group,
        ):
            for first in range(min(callers, items)):
                task_group.start_soon(caller, scope, first)
    return succeeded, failed, scope.statistics()


async def demo(*, items: int = 1_000, callers: int = 100, backend: str = "asyncio") -> Report:
    """Start the stand-in API, run the clients against it, stop it; report."""
    api = create_remote_api()
    async with serving(api, backend=backend) as base_url:
        succeeded, failed, stats = await run_clients(base_url, items=items, callers=callers)
    return Report(succeeded, failed, list(api.state.calls), stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--callers", type=int, default=100)
    args = parser.parse_args()
    report = anyio.run(
        partial(demo, items=args.items, callers=args.callers, backend=args.backend),
        backend=args.backend,
    )
    print(
        f"{report.succeeded + report.failed} items from {args.callers} concurrent callers "
        f"in {len(report.http_calls)} HTTP calls (mean {report.statistics.mean_batch_size:.1f} "
        f"inputs per call); {report.succeeded} succeeded, {report.failed} refused by the API"
    )


if __name__ == "__main__":
    main()
