"""Ingest first: delivery's bulk work waits while an app's request is under way, over a
real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from agent.http_server import HttpServer, Limits, Request, Response
from agent.ingest_first import IngestFirst
from tests.conftest import eventually

LIMITS = Limits(max_body_bytes=1000, request_timeout_s=5.0, idle_timeout_s=5.0)


class Held:
    """Handlers that answer once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def answer(self, request: Request) -> Response:
        await self.release.wait()
        return Response(200, b"{}")


@pytest.fixture
async def held() -> Held:
    return Held()


@contextlib.asynccontextmanager
async def under_way(
    held: Held, first: IngestFirst, request: bytes
) -> AsyncIterator[asyncio.StreamReader]:
    """A real server told of its requests by `first`, and `request` sent to it and under
    way (its answer held until `held.release`); the client's side of the connection."""
    routes = {"/usage": {"POST": held.answer}, "/status": {"GET": held.answer}}
    server = HttpServer(routes, lambda error: Response(error.status, b"{}"), LIMITS)
    server.first = first
    [port] = await server.listen_tcp("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await eventually(lambda: first.under_way == 1)
        yield reader
        writer.close()
    finally:
        await server.close(0.1)  # (a request still held is cancelled)


POST = b"POST /usage HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
GET = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_turn_goes_at_once_when_no_request_is_under_way():
    first = IngestFirst(max_wait_s=30.0)
    await asyncio.wait_for(first.turn(), 1.0)
    assert first.under_way == 0 and not first.apps_posting


async def test_delivery_waits_its_turn_until_the_request_under_way_is_answered(held: Held):
    first = IngestFirst(max_wait_s=30.0)
    async with under_way(held, first, POST) as reader:
        assert first.apps_posting
        turn = asyncio.create_task(first.turn())
        await asyncio.sleep(0.2)
        assert not turn.done()  # the app's request goes first
        held.release.set()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(turn, 1.0)  # answered: delivery's turn
        assert first.under_way == 0


async def test_under_a_request_that_never_ends_delivery_still_moves(held: Held):
    first = IngestFirst(max_wait_s=0.05)
    async with under_way(held, first, POST):
        for _ in range(3):
            await asyncio.wait_for(first.turn(), 1.0)  # each after at most max_wait_s
        assert first.under_way == 1
    assert first.under_way == 0  # a worker cancelled at close is counted out too


async def test_status_and_metrics_reads_are_not_apps_posting(held: Held):
    first = IngestFirst()
    async with under_way(held, first, GET):  # served first, like any request
        assert not first.apps_posting  # but delivery does not slice its reads for it


async def test_one_slice_of_bulk_work_per_pass_of_the_loop():
    first = IngestFirst()
    passes = 0

    def count() -> None:
        nonlocal passes
        passes += 1
        loop.call_soon(count)

    loop = asyncio.get_running_loop()
    loop.call_soon(count)
    seen: list[int] = []

    async def slice_of_work() -> None:
        await first.turn()
        seen.append(passes)

    await asyncio.wait_for(asyncio.gather(*(slice_of_work() for _ in range(5))), 1.0)
    assert len(set(seen)) == 5  # each in a pass of its own, none starved
