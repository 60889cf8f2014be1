"""
A token-streaming service: server-sent events from a continuously batched generator.

``GET /generate?prompt=...&tokens=N`` streams N tokens as server-sent events
(``text/event-stream``), each one as soon as the generator's step produces it. Every
request is a row of one :class:`~batchscope.ContinuousScope`: concurrent requests share
the generator's steps, a request that ends leaves the running batch at once and a new one
joins at the next step (continuous batching), so a short request never waits for a long
one. A client that disconnects mid-stream ends its row before the next step: the
generator stops producing for it. ``GET /stats`` returns the scope's statistics and the
tokens the generator produced per prompt.

The scope opens with the app's lifespan and, at shutdown, drains (rows already running
finish) before the process exits. It runs the same under asyncio (uvicorn) and Trio
(Hypercorn's Trio worker): FastAPI, Starlette and batchscope all speak AnyIO.

Run it (needs ``pip install fastapi uvicorn httpx``, and ``hypercorn trio`` for Trio)::

    python examples/streaming_service.py                  # serve, stream 20 requests, stop
    python examples/streaming_service.py --backend trio   # the same under Trio/Hypercorn
    python examples/streaming_service.py --serve          # serve on 127.0.0.1 until Ctrl+C

With ``--serve``, try ``curl -N 'http://127.0.0.1:PORT/generate?prompt=hi&tokens=50'``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import attrs
import httpx
import sniffio
from fastapi import FastAPI, Query, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

import batchscope as bs
import batchscope.asgi as bs_asgi

#: The words the simulated generator picks its tokens from.
VOCABULARY = (
    "the",
    "model",
    "batch",
    "token",
    "stream",
    "step",
    "row",
    "join",
    "leave",
    "cache",
    "prompt",
    "decode",
    "prefill",
    "anyio",
    "trio",
    "asyncio",
    "request",
    "answer",
    "server",
    "client",
    "event",
    "sends",
    "reads",
    "each",
)
#: Most tokens one request may ask for.
MAX_TOKENS = 2_000
#: Longest prompt accepted (characters).
MAX_PROMPT_CHARS = 200


# -- the generator -----------------------------------------------------------------------


@attrs.frozen
class Prompt:
    """One request: its prompt and how many tokens it wants."""

    text: str
    tokens: int


def token(prompt: str, index: int) -> str:
    """The *index*-th token the simulated generator produces for *prompt*."""
    digest = hashlib.blake2b(f"{prompt}\0{index}".encode(), digest_size=4).digest()
    return VOCABULARY[int.from_bytes(digest, "big") % len(VOCABULARY)]


def expected_tokens(prompt: str, tokens: int) -> list[str]:
    """Every token of a request, in order: what a client must receive."""
    return [token(prompt, index) for index in range(tokens)]


@attrs.define(eq=False)
class TokenGenerator:
    """
    A stand-in for a generative model: one step produces one token for every active row.

    A step over ``r`` rows costs ``step_seconds + row_seconds * r`` (one forward pass of a
    decoder over the batch), so sharing steps is far cheaper than one step per request.
    ``produced`` counts the tokens generated per prompt: a row whose caller left
    (``row.alive`` False) gets no work, and no step runs once every caller has left.
    """

    step_seconds: float = 0.010
    row_seconds: float = 0.000_5
    produced: dict[str, int] = attrs.field(factory=dict)

    async def __call__(self, rows: list[bs.Row[Prompt]]) -> list[str | bs.End]:
        await anyio.sleep(self.step_seconds + self.row_seconds * len(rows))
        outputs: list[str | bs.End] = []
        for row in rows:
            prompt = row.item
            if not row.alive or row.steps >= prompt.tokens:
                outputs.append(bs.END)  # done, or its caller left during the step
                continue
            self.produced[prompt.text] = self.produced.get(prompt.text, 0) + 1
            outputs.append(token(prompt.text, row.steps))
        return outputs


# -- the app -----------------------------------------------------------------------------


def statistics_json(stats: bs.ContinuousStatistics) -> dict[str, Any]:
    """*stats* as plain JSON values (``nan`` percentiles, before any sample, become null)."""

    def plain(_: Any, __: Any, value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, Mapping):
            return dict(value)
        return value

    return attrs.asdict(stats, value_serializer=plain)


def server_sent_event(data: str, event: str | None = None) -> str:
    """One server-sent event (``data`` holds no newline here)."""
    return ("" if event is None else f"event: {event}\n") + f"data: {data}\n\n"


class EventStream(StreamingResponse):
    """
    A ``text/event-stream`` response that closes its body (an async generator) however
    the response ends.

    Starlette stops iterating the body when the client disconnects but does not
    ``aclose()`` it: a generator suspended at its ``yield`` (the disconnect was seen while
    sending) is left to garbage collection, which Trio reports as a ``ResourceWarning``.
    Closing it here runs its ``async with scope.stream(...)`` exit at once, under every
    backend: the row leaves before the next step.
    """

    def __init__(self, events: AsyncGenerator[str, None]) -> None:
        super().__init__(
            events, media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()


def create_app(generator: TokenGenerator | None = None, *, max_active: int = 32) -> FastAPI:
    """
    Build the service; its ContinuousScope opens and drains with the app's lifespan.

    The scope is ``app.state.scope`` (for its statistics after shutdown) and
    ``request.state.scope``; the generator is ``app.state.generator``.
    """
    model = generator if generator is not None else TokenGenerator()

    def open_scope() -> bs.ContinuousScope[Prompt, str]:
        # A fresh scope per start (tests start one app more than once); the lifespan
        # closes it at shutdown and drains: rows still running end normally.
        app.state.scope = bs.ContinuousScope(model, max_active=max_active)
        return app.state.scope

    app = FastAPI(title="batchscope token streaming", lifespan=bs_asgi.lifespan(scope=open_scope))
    app.state.generator = model

    @app.get("/generate")
    async def generate(
        request: Request,
        prompt: str = Query(min_length=1, max_length=MAX_PROMPT_CHARS),
        tokens: int = Query(default=16, ge=1, le=MAX_TOKENS),
    ) -> StreamingResponse:
        scope: bs.ContinuousScope[Prompt, str] = request.state.scope

        async def events() -> AsyncGenerator[str, None]:
            # ``async with`` ends the row however this generator stops: the stream ends,
            # the client disconnects (Starlette cancels it, or EventStream closes it).
            async with scope.stream(Prompt(prompt, tokens)) as outputs:
                try:
                    async for output in outputs:
                        yield server_sent_event(output)
                except Exception as exc:  # the row failed: say so in the stream
                    yield server_sent_event(f"{type(exc).__name__}: {exc}", event="error")
                    return
            yield server_sent_event("", event="end")

        return EventStream(events())

    @app.get("/stats")
    async def stats(request: Request) -> dict[str, Any]:
        return {
            "statistics": statistics_json(request.state.scope.statistics()),
            "produced": dict(model.produced),
        }

    return app


# -- a client reading incrementally ------------------------------------------------------


async def read_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """
    ``(event, data)`` for each server-sent event of *response*, as each arrives.

    Read it to its end (the server closes the stream after the ``end`` event): httpx's
    line iterator is a chain of async generators, which Trio wants exhausted or closed.
    """
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif not line:
            yield event, data
            event, data = "message", ""


async def stream_tokens(client: httpx.AsyncClient, prompt: str, tokens: int) -> list[str]:
    """Stream one request; return its tokens (raises if the stream does not end cleanly)."""
    received: list[str] = []
    ended = False
    params: dict[str, str | int] = {"prompt": prompt, "tokens": tokens}
    async with client.stream("GET", "/generate", params=params) as response:
        response.raise_for_status()
        async for event, data in read_events(response):
            if event == "error":
                raise RuntimeError(f"{prompt!r} failed: {data}")
            if event == "end":
                ended = True
            elif not ended:
                received.append(data)
    if not ended:
        raise RuntimeError(f"the stream of {prompt!r} ended without its end event")
    return received


async def stream_requests(
    base_url: str, *, requests: int = 20, time_limit: float = 30.0
) -> dict[str, Any]:
    """
    Stream *requests* requests of 4 to 60 tokens at once; return the server's stats.

    Every stream is checked against :func:`expected_tokens`. The whole run is bounded by
    *time_limit* seconds (``TimeoutError`` past it).
    """
    with anyio.fail_after(time_limit):
        limits = httpx.Limits(max_connections=requests + 1)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0) as client:

            async def one(index: int) -> None:
                prompt, count = f"prompt {index}", 4 + (index * 7) % 57
                if await stream_tokens(client, prompt, count) != expected_tokens(prompt, count):
                    raise AssertionError(f"wrong tokens for {prompt!r}")

            async with anyio.create_task_group() as task_group:
                for index in range(requests):
                    task_group.start_soon(one, index)
            response = await client.get("/stats")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result


# -- serving: uvicorn under asyncio, Hypercorn under Trio --------------------------------


def bind_loopback(port: int = 0) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (port 0: an ephemeral one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


@asynccontextmanager
async def serving(app: FastAPI, *, port: int = 0, shutdown_timeout: int = 10) -> AsyncIterator[str]:
    """
    Serve *app* on 127.0.0.1; yield its base URL.

    Under asyncio uvicorn serves it, under Trio Hypercorn's Trio worker (the running
    backend decides). The socket listens before the server starts, so clients may connect
    at once: they wait in the backlog until the lifespan has opened the scope. Leaving
    the block shuts the server down gracefully (open streams get *shutdown_timeout*
    seconds), then the lifespan drains the scope.
    """
    sock = bind_loopback(port)
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    if sniffio.current_async_library() == "trio":
        from hypercorn.config import Config
        from hypercorn.trio import serve

        config = Config()
        config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns (and closes) it now
        config.graceful_timeout = shutdown_timeout
        config.accesslog = None
        config.loglevel = "WARNING"
        stop = anyio.Event()
        run: Callable[[], Coroutine[Any, Any, None]] = partial(
            serve,
            app,  # type: ignore[arg-type]  # Hypercorn's ASGI types are stricter; same protocol
            config,
            shutdown_trigger=stop.wait,
        )
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(run)
            try:
                yield base_url
            finally:
                stop.set()
        return
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=shutdown_timeout,
        )
    )
    with sock:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(server.serve, [sock])
            try:
                yield base_url
            finally:
                server.should_exit = True  # uvicorn notices within 0.1 s


async def demo(requests: int) -> dict[str, Any]:
    """Serve, stream the requests, shut down; return the server's statistics."""
    async with serving(create_app()) as base_url:
        return await stream_requests(base_url, requests=requests)


async def serve_until_interrupted(port: int) -> None:
    """Serve until Ctrl+C (or SIGTERM), then shut down gracefully."""
    import signal

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with serving(create_app(), port=port) as base_url:
            print(f"serving on {base_url} (Ctrl+C to stop)", flush=True)
            async for _ in signals:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl+C")
    parser.add_argument("--port", type=int, default=0, help="with --serve (0: ephemeral)")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    if args.serve:
        anyio.run(serve_until_interrupted, args.port, backend=args.backend)
        return
    served = anyio.run(demo, args.requests, backend=args.backend)
    stats = served["statistics"]
    print(
        f"{stats['completed']} streams answered under {args.backend}: {stats['outputs']} tokens "
        f"in {stats['steps']} steps ({stats['mean_rows_per_step']:.1f} rows per step); "
        f"time to first token p50 {stats['time_to_first_output_ms']['p50']:.1f} ms, "
        f"p99 {stats['time_to_first_output_ms']['p99']:.1f} ms"
    )


if __name__ == "__main__":
    main()
