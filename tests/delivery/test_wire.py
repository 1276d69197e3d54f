"""The lean client for `POST /usage`, against real servers on loopback: keep-alive reuse,
answers read whole (chunked too), and failures that say whether the request may have
been written (NotSent, NoAnswer). TLS verifies the server's certificate."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.delivery import wire
from agent.delivery.wire import NoAnswer, NotSent, Pool

Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw TCP server that counts its connections and runs `handler` on each."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(self, reader, writer)
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
        port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{port}/usage"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()


def keep_answering(answer: bytes) -> Handler:
    """A handler that answers every request on a connection with `answer`."""

    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                await read_request(server, reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(answer)

    return handler


async def read_request(server: Server, reader: asyncio.StreamReader) -> bool:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    server.requests.append(head + await reader.readexactly(length))
    return True


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    started: list[Server] = []

    async def start(handler: Handler) -> Server:
        server = Server(handler)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def request(pool: Pool, body: bytes = b'{"a":1}') -> bytes:
    return pool.request_bytes("POST", pool.target, {"Content-Type": "application/json"}, body)


async def test_answers_are_read_whole_and_the_connection_is_kept_alive(serve):
    answer = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nRetry-After: 7\r\n\r\nok"
    server = await serve(keep_answering(answer))
    pool = Pool(server.url, user_agent="test")
    answers = [await pool.request(request(pool), 5.0) for _ in range(5)]
    assert [(a.status, a.body, a.headers["retry-after"]) for a in answers] == [
        (201, b"ok", "7")
    ] * 5
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /usage HTTP/1.1\r\n") and first.endswith(b'{"a":1}')
    assert b"Host: 127.0.0.1:" in first and b"Content-Length: 7" in first
    pool.close()


async def test_a_chunked_answer_is_read_whole(serve):
    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(server, reader)
        writer.write(b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await writer.drain()

    server = await serve(handler)
    pool = Pool(server.url, user_agent="test")
    answer = await pool.request(request(pool), 5.0)
    assert (answer.status, answer.body) == (400, b"abcde")


async def test_no_listener_is_not_sent():
    pool = Pool("http://127.0.0.1:9/usage", user_agent="test")
    with pytest.raises(NotSent):
        await pool.request(request(pool), 2.0)


@pytest.mark.parametrize("how", ["close", "half-answer", "silence"])
async def test_a_request_written_without_a_whole_answer_is_no_answer(serve, how: str):
    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(server, reader)
        if how == "half-answer":
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\nok")
            await writer.drain()
        elif how == "silence":
            await asyncio.sleep(5)

    server = await serve(handler)
    pool = Pool(server.url, user_agent="test")
    with pytest.raises(NoAnswer):
        await pool.request(request(pool), 0.5)
    assert len(server.requests) == 1  # it was written: the outcome is unknown


async def test_a_connection_idle_too_long_is_not_reused(serve, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(wire, "IDLE_S", 0.05)
    server = await serve(keep_answering(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
    pool = Pool(server.url, user_agent="test")
    await pool.request(request(pool), 5.0)
    await asyncio.sleep(0.1)
    await pool.request(request(pool), 5.0)
    assert server.connections == 2


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_tls_verifies_the_servers_certificate(tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handler(
        server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read(100)

    server = Server(handler)
    await server.start(context)
    try:
        pool = Pool(server.url, user_agent="test")
        with pytest.raises(NotSent, match="CERTIFICATE_VERIFY_FAILED"):
            await pool.request(request(pool), 5.0)  # a self-signed certificate: refused
    finally:
        await server.stop()


async def test_a_connection_found_closed_before_writing_is_not_sent():
    with pytest.raises(NotSent):
        await wire._Connection().exchange(b"POST /usage HTTP/1.1\r\n\r\n")
