"""
The server of ``tests/test_http_overload.py``, run as a process of its own.

A Starlette app behind ``batchscope.asgi`` (its lifespan opens the scope, its exception
handlers answer refusals) serves ``GET /square?x=N`` through a :class:`~batchscope.BatchScope`
with ``admission="deadline"``. Each request carries its deadline in the ``x-deadline``
header, as Unix time (client and server share the host's clock, so the time a request
spent in the client and the HTTP stack before the handler counts against it); the handler
turns it into ``anyio.fail_after`` around ``submit``. The model takes *batch_seconds* per
batch of at most *max_batch_size* items, so its capacity is
``max_batch_size / batch_seconds`` requests a second, whatever the load.

Usage::

    python tests/http_overload_server.py {uvicorn,uvicorn-uvloop,hypercorn-trio} \\
        [--batch-seconds S] [--max-batch-size N]

It binds 127.0.0.1 only (an ephemeral port, a listen backlog of 4096), prints
``READY <port>`` once the scope is open, serves until SIGTERM, shuts down gracefully (the
lifespan drains the scope) and prints one JSON line: the scope's final statistics and the
count of responses it sent per status code.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import batchscope as bs
import batchscope.asgi as bs_asgi

#: The listen backlog: a burst of connections waits in it rather than being reset.
BACKLOG = 4096


class CountStatuses:
    """ASGI middleware: count the responses sent, per status code."""

    def __init__(self, app: ASGIApp, counts: Counter[int]) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counts[message["status"]] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


class Service:
    """The app, its scope and what it answered."""

    def __init__(self, batch_seconds: float, max_batch_size: int) -> None:
        self.batch_seconds = batch_seconds
        self.max_batch_size = max_batch_size
        self.statuses: Counter[int] = Counter()
        self.scope: bs.BatchScope[int, int] | None = None
        self.on_ready: Callable[[], None] = lambda: None

    async def model(self, xs: list[int]) -> list[int]:
        """A fixed time per batch: the capacity is max_batch_size / batch_seconds."""
        await anyio.sleep(self.batch_seconds)
        return [x * x for x in xs]

    def open_scope(self) -> bs.BatchScope[int, int]:
        self.scope = bs.BatchScope(
            self.model,
            max_batch_size=self.max_batch_size,
            max_wait=0.002,
            admission="deadline",
        )
        return self.scope

    def app(self) -> ASGIApp:
        opened = bs_asgi.lifespan(scope=self.open_scope)

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
            async with opened(app) as state:
                self.on_ready()
                yield state

        async def square(request: Request) -> JSONResponse:
            scope: bs.BatchScope[int, int] = request.state.scope
            x = int(request.query_params["x"])
            left = float(request.headers["x-deadline"]) - time.time()
            with anyio.fail_after(left):
                return JSONResponse({"y": await scope.submit(x)})

        app = Starlette(routes=[Route("/square", square)], lifespan=lifespan)
        bs_asgi.add_exception_handlers(app)
        return CountStatuses(app, self.statuses)

    def report(self) -> str:
        """The final statistics and the statuses sent, as one JSON line."""
        assert self.scope is not None
        stats = self.scope.statistics()
        fields: tuple[str, ...] = ("submitted", "completed", "failed", "cancelled", "rejected")
        fields += ("admitting", "pending", "running", "in_flight", "batches", "mean_batch_size")
        report: dict[str, Any] = {name: getattr(stats, name) for name in fields}
        report["statuses"] = {str(code): count for code, count in sorted(self.statuses.items())}
        return json.dumps(report)


def ready(port: int) -> None:
    print(f"READY {port}", flush=True)


def serve_uvicorn(service: Service, loop: str) -> None:
    """uvicorn on a socket bound here; uvicorn itself turns SIGTERM into a graceful exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(BACKLOG)
    service.on_ready = partial(ready, sock.getsockname()[1])
    config = uvicorn.Config(
        service.app(),
        loop=loop,
        lifespan="on",
        log_level="warning",
        access_log=False,
        backlog=BACKLOG,
        timeout_graceful_shutdown=5,
    )
    # uvicorn turns SIGTERM into a graceful shutdown, then raises it again once it has
    # returned; handled here, it lets the report be printed and the process exit with 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])


def serve_hypercorn_trio(service: Service) -> None:
    """Hypercorn's Trio worker, shut down gracefully on SIGTERM."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.backlog = BACKLOG
    config.graceful_timeout = 5
    config.accesslog = None
    config.loglevel = "WARNING"

    async def main() -> None:
        stop = trio.Event()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                # start() returns once the lifespan has opened the scope and it listens.
                binds: list[str] = await nursery.start(
                    # Hypercorn's ASGI types are stricter than Starlette's; same protocol.
                    partial(serve, service.app(), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
                )
                ready(int(binds[0].rsplit(":", 1)[1]))
                async for _ in signals:
                    break
                stop.set()

    trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("server", choices=["uvicorn", "uvicorn-uvloop", "hypercorn-trio"])
    parser.add_argument("--batch-seconds", type=float, default=0.05)
    parser.add_argument("--max-batch-size", type=int, default=4)
    args = parser.parse_args()
    service = Service(args.batch_seconds, args.max_batch_size)
    if args.server == "hypercorn-trio":
        serve_hypercorn_trio(service)
    else:
        serve_uvicorn(service, "uvloop" if args.server == "uvicorn-uvloop" else "asyncio")
    print(service.report(), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
