"""
An embedding service: FastAPI on uvicorn (asyncio), every request batched by batchscope.

Each ``POST /embed`` carries one text; batchscope groups the texts of concurrent requests
into batches and calls the model once per batch. The :class:`~batchscope.BatchScope` is
opened by ``batchscope.asgi.lifespan`` (``request.state.scope``, also on ``app.state``):
it starts before the first request is served and, at shutdown, drains (texts already
submitted still run) before the process exits. ``GET /stats``
returns ``scope.statistics()`` as JSON.

Requests are bounded twice: a body over ``MAX_BODY_BYTES`` is refused with 413 before it
is read in full, and a text over ``MAX_TEXT_CHARS`` (or an empty one) with 422.

Run it (needs ``pip install fastapi uvicorn httpx``)::

    python examples/fastapi_service.py            # serve, send 200 requests, print stats, stop
    python examples/fastapi_service.py --serve    # serve on 127.0.0.1 until Ctrl+C

With ``--serve``, try ``curl -X POST http://127.0.0.1:PORT/embed -H 'content-type:
application/json' -d '{"text": "hello"}'`` and ``curl http://127.0.0.1:PORT/stats``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import httpx
import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import batchscope as bs
import batchscope.asgi as bs_asgi

#: Length of every embedding vector.
DIM = 16
#: Longest text accepted (characters); longer ones get 422.
MAX_TEXT_CHARS = 1_000
#: Largest request body accepted (bytes); larger ones get 413.
MAX_BODY_BYTES = 8 * 1024


# -- the model ---------------------------------------------------------------------------


@attrs.frozen
class FakeEmbedder:
    """
    A stand-in for an embedding model: deterministic vectors, a cost that favours batches.

    Like a forward pass on an accelerator, a call costs a fixed overhead plus a little per
    text, so one call for 32 texts is far cheaper than 32 calls for one. The vector of a
    text is derived from its hash: the same text always gets the same unit vector.
    """

    call_seconds: float = 0.010
    item_seconds: float = 0.000_2

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        await anyio.sleep(self.call_seconds + self.item_seconds * len(texts))
        return [embed_one(text) for text in texts]


def embed_one(text: str) -> list[float]:
    """The vector :class:`FakeEmbedder` returns for *text*."""
    digest = hashlib.blake2b(text.encode(), digest_size=DIM).digest()
    raw = [byte - 127.5 for byte in digest]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


# -- the app -----------------------------------------------------------------------------


class EmbedRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class EmbedResponse(BaseModel):
    embedding: list[float]


class LimitBodySize:
    """
    ASGI middleware: answer 413 to a request whose body exceeds *max_bytes*.

    A ``Content-Length`` over the limit is refused before anything is read. Otherwise the
    body is read here, at most *max_bytes* of it (so a chunked upload cannot get past the
    limit either), and handed to the app in one piece.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client disconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            more_body = message.get("more_body", False)
        body_read = False

        async def replay() -> Message:
            nonlocal body_read
            if body_read:
                return await receive()  # what comes after the body: a disconnect
            body_read = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = b'{"detail":"request body too large"}'
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def statistics_json(stats: bs.BatchStatistics) -> dict[str, Any]:
    """*stats* as plain JSON values (``nan`` percentiles, before any sample, become null)."""

    def plain(_: Any, __: Any, value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, Mapping):
            return dict(value)
        return value

    return attrs.asdict(stats, value_serializer=plain)


def create_app(
    model: FakeEmbedder | None = None,
    *,
    max_batch_size: int = 32,
    max_wait: float = 0.005,
    deadline: float | None = None,
) -> FastAPI:
    """
    Build the service; its BatchScope opens and closes with the app's lifespan.

    With *deadline* (seconds), each request gets that long: one the backlog cannot serve
    in time is refused at once with 429 and ``Retry-After`` (``admission="deadline"``),
    one that runs out of time anyway gets 504.
    """
    embedder = model if model is not None else FakeEmbedder()

    def open_scope() -> bs.BatchScope[str, list[float]]:
        scope = bs.BatchScope(
            embedder,
            max_batch_size=max_batch_size,
            max_wait=max_wait,
            admission="queue" if deadline is None else "deadline",
        )
        app.state.scope = scope  # also on app.state, for its statistics after shutdown
        return scope

    # The scope opens before the first request is served (request.state.scope); at
    # shutdown, after the server stops taking requests, it drains: texts already
    # submitted still run. Refusals become 429/503/504 with Retry-After.
    app = FastAPI(title="batchscope embedding service", lifespan=bs_asgi.lifespan(scope=open_scope))
    bs_asgi.add_exception_handlers(app)
    app.add_middleware(LimitBodySize, max_bytes=MAX_BODY_BYTES)

    @app.post("/embed")
    async def embed(body: EmbedRequest, request: Request) -> EmbedResponse:
        scope: bs.BatchScope[str, list[float]] = request.state.scope
        if deadline is None:
            return EmbedResponse(embedding=await scope.submit(body.text))
        with anyio.fail_after(deadline):
            return EmbedResponse(embedding=await scope.submit(body.text))

    @app.get("/stats")
    async def stats(request: Request) -> dict[str, Any]:
        return statistics_json(request.state.scope.statistics())

    return app


# -- a bounded load of concurrent clients ------------------------------------------------


async def send_requests(
    base_url: str, *, requests: int = 200, concurrency: int = 50, time_limit: float = 30.0
) -> dict[str, Any]:
    """
    POST *requests* texts from *concurrency* concurrent clients; return the server's stats.

    Every response is checked against :func:`embed_one`. The whole run is bounded by
    *time_limit* seconds (``TimeoutError`` past it).
    """
    limits = httpx.Limits(max_connections=concurrency)
    with anyio.fail_after(time_limit):
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0) as client:

            async def worker(first: int) -> None:
                for i in range(first, requests, concurrency):
                    text = f"request number {i}"
                    response = await client.post("/embed", json={"text": text})
                    response.raise_for_status()
                    if response.json()["embedding"] != embed_one(text):
                        raise AssertionError(f"wrong embedding for {text!r}")

            async with anyio.create_task_group() as task_group:
                for first in range(min(concurrency, requests)):
                    task_group.start_soon(worker, first)
            response = await client.get("/stats")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result


# -- serving -----------------------------------------------------------------------------


def bind_loopback(port: int = 0) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (port 0: an ephemeral one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


@asynccontextmanager
async def serving(app: FastAPI, *, shutdown_timeout: int = 10) -> AsyncIterator[str]:
    """
    Serve *app* with uvicorn on an ephemeral loopback port; yield its base URL.

    The socket listens before uvicorn starts, so clients may connect at once: their
    connections wait in the backlog until the lifespan has opened the scope. Leaving the
    block shuts uvicorn down gracefully (then the lifespan drains the scope), bounded by
    *shutdown_timeout* seconds.
    """
    with bind_loopback() as sock:
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=shutdown_timeout,
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(server.serve, [sock])
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True  # uvicorn notices within 0.1 s


async def demo(requests: int, concurrency: int) -> dict[str, Any]:
    """Serve, send the requests, shut down; return the server's statistics."""
    async with serving(create_app()) as base_url:
        return await send_requests(base_url, requests=requests, concurrency=concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl+C")
    parser.add_argument("--port", type=int, default=0, help="with --serve (0: ephemeral)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    if args.serve:
        uvicorn.run(create_app(), host="127.0.0.1", port=args.port)
        return
    stats = anyio.run(demo, args.requests, args.concurrency, backend="asyncio")
    print(
        f"{stats['completed']} requests answered in {stats['batches']} batches "
        f"(mean batch size {stats['mean_batch_size']:.1f}); "
        f"latency p50 {stats['latency_ms']['p50']:.1f} ms, p99 {stats['latency_ms']['p99']:.1f} ms"
    )


if __name__ == "__main__":
    main()
