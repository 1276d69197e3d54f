"""Ingest first: delivery's bulk work waits while an app's request is under way, over a
real HTTP server on loopback."""

from __future__ import annotations

import asyncio

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


async def serve(held: Held, first: IngestFirst) -> tuple[HttpServer, int]:
    routes = {"/usage": {"POST": held.answer}, "/status": {"GET": held.answer}}
    server = HttpServer(routes, lambda error: Response(error.status, b"{}"), LIMITS)
    server.first = first
    [port] = await server.listen_tcp("127.0.0.1", 0)
    return server, port


async def send(port: int, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return reader, writer


POST = b"POST /usage HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
GET = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_turn_goes_at_once_when_no_request_is_under_way():
    first = IngestFirst(max_wait_s=30.0)
    await asyncio.wait_for(first.turn(), 1.0)
    assert first.under_way == 0 and not first.apps_posting


async def test_delivery_waits_its_turn_until_the_request_under_way_is_answered(held: Held):
    first = IngestFirst(max_wait_s=30.0)
    server, port = await serve(held, first)
    try:
        reader, writer = await send(port, POST)
        await eventually(lambda: first.under_way == 1)
        assert first.apps_posting
        turn = asyncio.create_task(first.turn())
        await asyncio.sleep(0.2)
        assert not turn.done()  # the app's request goes first
        held.release.set()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 200"
        )
        await asyncio.wait_for(turn, 1.0)  # answered: delivery's turn
        assert first.under_way == 0
        writer.close()
    finally:
        await server.close(1.0)


async def test_under_a_request_that_never_ends_delivery_still_moves(held: Held):
    first = IngestFirst(max_wait_s=0.05)
    server, port = await serve(held, first)
    try:
        _, writer = await send(port, POST)
        await eventually(lambda: first.under_way == 1)
        for _ in range(3):
            await asyncio.wait_for(first.turn(), 1.0)  # each after at most max_wait_s
        assert first.under_way == 1
        writer.close()
    finally:
        await server.close(1.0)
    assert first.under_way == 0  # a worker cancelled at close is counted out too


async def test_status_and_metrics_reads_are_not_apps_posting(held: Held):
    first = IngestFirst()
    server, port = await serve(held, first)
    try:
        _, writer = await send(port, GET)
        await eventually(lambda: first.under_way == 1)  # served first, like any request
        assert not first.apps_posting  # but delivery does not slice its reads for it
        writer.close()
    finally:
        held.release.set()
        await server.close(1.0)


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
