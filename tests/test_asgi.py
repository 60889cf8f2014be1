"""batchscope.asgi: the lifespan, the error responses, and a real server under overload."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

import batchscope as bs  # noqa: E402
import batchscope.asgi as bs_asgi  # noqa: E402
from batchscope.testing import FakeBatchFunction  # noqa: E402

pytestmark = pytest.mark.anyio


def _app(error: Exception) -> Starlette:
    async def fail(request: Request) -> JSONResponse:
        raise error

    app = Starlette(routes=[Route("/", fail)])
    bs_asgi.add_exception_handlers(app)
    return app


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (bs.QueueFullError("full", 0.2), 429, "1"),
        (bs.DeadlineUnmeetableError("late", 2.1), 429, "3"),
        (bs.CircuitOpenError("open", 29.5), 503, "30"),
        (bs.ScopeClosedError("closed"), 503, None),
        (TimeoutError(), 504, None),
    ],
)
async def test_errors_map_to_status_and_retry_after(
    error: Exception, status: int, retry_after: str | None
) -> None:
    """Full queue and unmeetable deadline are 429, closed and open circuit 503, timeout 504."""
    transport = httpx.ASGITransport(app=_app(error))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/")
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    assert "detail" in response.json()


async def test_open_breaker_says_when_it_resets() -> None:
    """A submit refused by an open breaker carries the time left until its trial."""
    fake = FakeBatchFunction[int, int](raise_on={1: ValueError("down")})
    breaker = bs.CircuitBreaker(failure_threshold=1, reset_timeout=30.0)
    async with bs.BatchScope(fake, max_wait=0, circuit_breaker=breaker) as scope:
        with pytest.raises(ValueError, match="down"):
            await scope.submit(1)
        with pytest.raises(bs.CircuitOpenError) as caught:
            await scope.submit(2)
    assert 25.0 < caught.value.retry_after <= 30.0
    assert fake.batches == [[1]]
    assert scope.statistics().rejected == 1


async def test_lifespan_opens_and_drains_scopes() -> None:
    """lifespan() opens each scope at startup, exposes it in request.state, drains at exit."""
    fake = FakeBatchFunction[int, int](delay=0.01)
    scope = bs.BatchScope(fake, max_wait=0)

    @bs.batch(max_wait=0)
    async def double(items: list[int]) -> list[int]:
        return [2 * i for i in items]

    run = bs_asgi.lifespan(plain=scope, built=lambda: bs.BatchScope(fake), double=double)
    async with run(None) as state:
        assert state["plain"] is scope
        assert await state["plain"].submit(1) == 1
        assert await state["built"].submit(2) == 2
        assert await state["double"](3) == 6
    assert fake.items == [1, 2]
    with pytest.raises(bs.ScopeClosedError):
        await scope.submit(3)


async def test_lifespan_opens_and_drains_continuous_scopes() -> None:
    """A ContinuousScope (or a callable building one) opens and drains with the lifespan."""

    async def count_down(rows: list[bs.Row[int]]) -> list[int | bs.End]:
        out: list[int | bs.End] = []
        for row in rows:
            row.state = (row.item if row.new else row.state) - 1
            out.append(bs.END if row.state < 0 else row.state)
        return out

    scope = bs.ContinuousScope(count_down, max_active=4)
    run = bs_asgi.lifespan(plain=scope, built=lambda: bs.ContinuousScope(count_down))
    async with run(None) as state:
        assert state["plain"] is scope
        assert await state["plain"].submit(2) == [1, 0]
        assert await state["built"].submit(1) == [0]
    for opened in (scope, state["built"]):
        with pytest.raises(bs.ScopeClosedError):
            await opened.submit(3)
