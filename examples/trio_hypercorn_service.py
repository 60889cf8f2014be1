"""
The embedding service of ``fastapi_service.py``, unchanged, under Trio with Hypercorn.

FastAPI and Starlette run on AnyIO, and so does batchscope, so the very same app (its
lifespan opens the :class:`~batchscope.BatchScope`) runs on Trio when a Trio server
serves it: here Hypercorn's Trio worker. Only the serving code differs, and it is plain
Trio: ``nursery.start(hypercorn.trio.serve, ...)`` returns once the app's lifespan has
started and the socket listens, and an event is the shutdown trigger.

Run it (needs ``pip install fastapi hypercorn httpx trio``) from the repository root::

    python examples/trio_hypercorn_service.py            # serve, send 200 requests, stop
    python examples/trio_hypercorn_service.py --serve    # serve on 127.0.0.1 until Ctrl+C
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
from fastapi import FastAPI
from hypercorn.config import Config
from hypercorn.trio import serve

sys.path.insert(0, str(Path(__file__).parent))
from fastapi_service import create_app, send_requests


@asynccontextmanager
async def serving(
    app: FastAPI, *, port: int = 0, shutdown_timeout: float = 10.0
) -> AsyncIterator[str]:
    """
    Serve *app* with Hypercorn's Trio worker on 127.0.0.1; yield its base URL.

    Leaving the block triggers a graceful shutdown: open connections get
    *shutdown_timeout* seconds to finish, then the lifespan drains the scope.
    """
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.graceful_timeout = shutdown_timeout
    config.accesslog = None
    config.loglevel = "WARNING"
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        # start() returns when Hypercorn reports the addresses it listens on, which is
        # after the lifespan (and so the BatchScope) has started.
        binds: list[str] = await nursery.start(
            # Hypercorn's ASGI types are stricter than Starlette's; the protocol is the same.
            partial(serve, app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        )
        try:
            yield binds[0]
        finally:
            stop.set()


async def demo(requests: int, concurrency: int) -> dict[str, Any]:
    """Serve, send the requests, shut down; return the server's statistics."""
    async with serving(create_app()) as base_url:
        return await send_requests(base_url, requests=requests, concurrency=concurrency)


async def serve_until_interrupted(port: int) -> None:
    """Serve until Ctrl+C (or SIGTERM), then shut down gracefully."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with serving(create_app(), port=port) as base_url:
            print(f"serving on {base_url} (Ctrl+C to stop)", flush=True)
            async for _ in signals:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl+C")
    parser.add_argument("--port", type=int, default=0, help="with --serve (0: ephemeral)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve_until_interrupted, args.port)
        return
    stats = trio.run(demo, args.requests, args.concurrency)
    print(
        f"{stats['completed']} requests answered in {stats['batches']} batches "
        f"(mean batch size {stats['mean_batch_size']:.1f}) under Trio"
    )


if __name__ == "__main__":
    main()
