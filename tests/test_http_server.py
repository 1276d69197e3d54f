"""The HTTP/1.1 layer, over real loopback sockets, with raw bytes as the client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.http_server import HttpError, HttpServer, Limits, Request, Response

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class App:
    """Echo handlers, and a record of the requests that reached them."""

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.release = asyncio.Event()
        self.release.set()
        self.cancelled = 0

    async def echo(self, request: Request) -> Response:
        self.seen.append(request)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Response(200, request.body, content_type="application/octet-stream")

    async def hello(self, request: Request) -> Response:
        return Response(200, b'{"hello":"world"}')

    async def broken(self, request: Request) -> Response:
        raise RuntimeError("secret detail")

    @staticmethod
    def refused(error: HttpError) -> Response:
        headers = {"Allow": error.allow} if error.allow else None
        return Response(error.status, f'{{"reason":"{error.reason}"}}'.encode(), headers=headers)


LIMITS = Limits(max_body_bytes=1000, request_timeout_s=0.3, idle_timeout_s=1.0)


@pytest.fixture
async def app() -> App:
    return App()


@pytest.fixture
async def server(app: App) -> AsyncIterator[HttpServer]:
    routes = {
        "/echo": {"POST": app.echo},
        "/hello": {"GET": app.hello},
        "/boom": {"GET": app.broken},
    }
    server = HttpServer(routes, App.refused, LIMITS)
    yield server
    await server.close(1.0)


@pytest.fixture
async def connect(server: HttpServer) -> AsyncIterator[Connect]:
    """Opens client connections to the server; each is closed at the end of the test."""
    [port] = await server.listen_tcp("127.0.0.1", 0)
    writers: list[asyncio.StreamWriter] = []

    async def opener() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        return reader, writer

    yield opener
    for writer in writers:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
    return int(status_line.split()[1]), headers, body


def post(body: bytes, extra: bytes = b"") -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def test_keep_alive_requests_are_answered_on_one_connection(connect: Connect):
    reader, writer = await connect()
    for n in range(3):
        writer.write(post(b"body %d" % n))
        status, headers, body = await read_response(reader)
        assert (status, body) == (200, b"body %d" % n)
        assert "connection" not in headers
        assert headers["date"].endswith("GMT")


async def test_pipelined_requests_are_answered_in_order(connect: Connect, app: App):
    reader, writer = await connect()
    app.release.clear()  # the first request is held; the others queue behind it
    writer.write(b"".join(post(b"%d" % n) for n in range(20)))
    await asyncio.sleep(0.05)
    app.release.set()
    bodies = [(await read_response(reader))[2] for _ in range(20)]
    assert bodies == [b"%d" % n for n in range(20)]


async def test_a_chunked_body_is_put_together(connect: Connect, app: App):
    reader, writer = await connect()
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert (await read_response(reader))[2] == b"hello world"


async def test_http_10_closes_unless_asked_to_keep_alive(connect: Connect):
    reader, writer = await connect()
    writer.write(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (200, "keep-alive")
    writer.write(b"GET /hello HTTP/1.0\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (200, "close")
    assert await closed(reader)


async def test_connection_close_is_honoured_and_nothing_after_it_is_read(
    connect: Connect, app: App
):
    reader, writer = await connect()
    writer.write(post(b"x", b"Connection: close\r\n") + post(b"after the close"))
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (200, "close")
    assert await closed(reader)
    assert [r.body for r in app.seen] == [b"x"]


async def test_head_is_a_get_without_the_body(connect: Connect):
    reader, writer = await connect()
    writer.write(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 17\r\n" in head
    status, _, body = await read_response(reader)  # the next answer follows right away
    assert (status, body) == (200, b'{"hello":"world"}')


async def test_unknown_paths_get_404_and_other_methods_405_with_allow(connect: Connect):
    reader, writer = await connect()
    writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 404
    writer.write(b"DELETE /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, headers["allow"], body) == (405, "POST", b'{"reason":"method_not_allowed"}')
    writer.write(post(b"still served"))
    assert (await read_response(reader))[2] == b"still served"


async def test_a_query_string_is_split_off_the_path(connect: Connect, app: App):
    reader, writer = await connect()
    writer.write(b"POST /echo?invoice=true&x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert (app.seen[0].path, app.seen[0].query) == ("/echo", "invoice=true&x=1")


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n", 413, "body_too_large"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "url_too_long"),
        (
            b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 101 + b"\r\n",
            431,
            "headers_too_large",
        ),
        (b"GET /hello HTTP/1.1\r\nX: " + b"b" * 33000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed_http"),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
            "malformed_http",
        ),
    ],
)
async def test_a_refused_request_gets_its_status_and_the_connection_closes(
    connect: Connect, app: App, request_bytes: bytes, status: int, reason: str
):
    reader, writer = await connect()
    writer.write(request_bytes)
    got, headers, body = await read_response(reader)
    assert (got, headers["connection"], body) == (
        status,
        "close",
        b'{"reason":"%s"}' % reason.encode(),
    )
    assert await closed(reader)
    assert app.seen == []


async def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(
    connect: Connect, app: App
):
    reader, writer = await connect()
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        writer.write(b"190\r\n" + b"x" * 400 + b"\r\n")
    assert (await read_response(reader))[0] == 413
    assert app.seen == []


async def test_a_refusal_is_read_by_a_client_that_is_still_sending(connect: Connect):
    """Lingering close: the rest of the body is read and dropped, so no reset eats the 413."""
    reader, writer = await connect()
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
    for _ in range(50):
        writer.write(b"x" * 65536)
        await writer.drain()
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (413, "close")


async def test_expect_100_continue_is_answered_before_the_body(connect: Connect):
    reader, writer = await connect()
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    assert (await read_response(reader))[2] == b"hello"
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    assert (await read_response(reader))[0] == 413  # no 100: the body is not wanted


async def test_a_request_that_does_not_arrive_in_time_gets_408(connect: Connect, app: App):
    reader, writer = await connect()
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    status, _, body = await read_response(reader)
    assert (status, body) == (408, b'{"reason":"body_timeout"}')
    assert app.seen == []
    slow_headers, writer2 = await connect()
    writer2.write(b"POST /echo HTTP/1.1\r\nContent-")
    status, _, body = await read_response(slow_headers)
    assert (status, body) == (408, b'{"reason":"header_timeout"}')


async def test_an_idle_keep_alive_connection_is_closed(connect: Connect):
    reader, writer = await connect()
    writer.write(post(b"x"))
    await read_response(reader)
    started = asyncio.get_running_loop().time()
    assert await closed(reader)
    assert 0.9 < asyncio.get_running_loop().time() - started < 3.5  # idle_timeout_s + a sweep


async def test_a_client_that_never_reads_its_answers_is_dropped(
    server: HttpServer, connect: Connect
):
    _, writer = await connect()
    writer.transport.set_write_buffer_limits(high=1 << 24)  # type: ignore[attr-defined]
    writer.write(post(b"x" * 1000) * 5000)  # 5 MB of answers it will not read
    for _ in range(100):
        await asyncio.sleep(0.1)
        if not server._connections:
            return
    raise AssertionError("the connection was never dropped")


async def test_a_half_closed_client_still_gets_its_answers(connect: Connect):
    reader, writer = await connect()
    writer.write(post(b"one") + post(b"two"))
    writer.write_eof()
    assert (await read_response(reader))[2] == b"one"
    assert (await read_response(reader))[2] == b"two"
    assert await closed(reader)


async def test_a_handler_bug_is_a_plain_500_without_details(
    connect: Connect, caplog: pytest.LogCaptureFixture
):
    reader, writer = await connect()
    writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 500
    assert b"secret" not in body
    assert "secret detail" in caplog.text  # logged, with its traceback
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200


async def test_close_answers_what_is_under_way_then_closes_every_connection(
    server: HttpServer, connect: Connect, app: App
):
    busy_reader, busy = await connect()
    idle_reader, _ = await connect()
    app.release.clear()
    busy.write(post(b"in flight"))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(server.close(5.0))
    await asyncio.sleep(0.05)
    assert await closed(idle_reader)
    app.release.set()
    status, headers, body = await read_response(busy_reader)
    assert (status, headers["connection"], body) == (200, "close", b"in flight")
    await closing
    assert await closed(busy_reader)


async def test_the_unix_socket_serves_the_same_routes(server: HttpServer, tmp_path: Path):
    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    await server.listen_socket(sock)
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[2] == b'{"hello":"world"}'
    writer.close()


async def test_close_cancels_and_awaits_the_handlers_left_after_the_grace(
    server: HttpServer, connect: Connect, app: App
):
    _, writer = await connect()
    app.release.clear()  # this handler would never finish
    writer.write(post(b"stuck"))
    await asyncio.sleep(0.05)
    await server.close(0.2)
    assert app.cancelled == 1


async def test_an_unterminated_header_line_is_refused_as_it_grows(connect: Connect):
    reader, writer = await connect()
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    status = 0
    for _ in range(200):  # up to 800 KiB, never a line end
        writer.write(b"b" * 4096)
        await asyncio.sleep(0)
        if reader.at_eof() or len(reader._buffer):  # type: ignore[attr-defined]
            break
    with contextlib.suppress(ConnectionResetError):
        status = (await read_response(reader))[0]
    assert status == 431
    other, other_writer = await connect()  # everyone else is still served
    other_writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(other))[0] == 200


async def test_an_h2c_upgrade_is_ignored_and_the_post_served_with_its_body(
    connect: Connect, app: App
):
    reader, writer = await connect()
    upgrade = (
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    )
    writer.write(post(b"hello", upgrade) + post(b"next"))
    assert (await read_response(reader))[:3:2] == (200, b"hello")
    assert (await read_response(reader))[:3:2] == (200, b"next")
    writer.write(post(b"split body", upgrade)[:-3])  # the body arrives in two pieces
    await asyncio.sleep(0.05)
    writer.write(b"ody")
    assert (await read_response(reader))[2] == b"split body"


async def test_a_100_continue_waits_for_the_answers_before_it(connect: Connect, app: App):
    reader, writer = await connect()
    app.release.clear()  # the first answer is held
    writer.write(post(b"first"))
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n"
    )
    await asyncio.sleep(0.1)
    assert len(reader._buffer) == 0  # type: ignore[attr-defined]  # no 100 ahead of answer 1
    app.release.set()
    assert (await read_response(reader))[2] == b"first"
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"second")
    assert (await read_response(reader))[2] == b"second"


async def test_http_10_gets_no_100_continue(connect: Connect):
    reader, writer = await connect()
    writer.write(b"POST /echo HTTP/1.0\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    await asyncio.sleep(0.1)
    writer.write(b"body")
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"body")


async def test_connection_close_is_said_on_the_last_answer_only(connect: Connect, app: App):
    reader, writer = await connect()
    app.release.clear()  # the answers wait until the half-close has arrived
    writer.write(post(b"1") + post(b"2") + post(b"3"))
    writer.write_eof()  # the client half-closes after three POSTs
    await asyncio.sleep(0.1)
    app.release.set()
    answers = [await read_response(reader) for _ in range(3)]
    assert ["connection" in headers for _, headers, _ in answers] == [False, False, True]
    reader, writer = await connect()
    writer.write(post(b"1") + post(b"2") + b"NOT HTTP\r\n\r\n")
    answers = [await read_response(reader) for _ in range(3)]
    assert [(status, "connection" in headers) for status, headers, _ in answers] == [
        (200, False),
        (200, False),
        (400, True),
    ]


@pytest.mark.parametrize("hosts", [b"", b"Host: a\r\nHost: b\r\n"], ids=["no host", "two hosts"])
async def test_an_http_11_request_needs_exactly_one_host(connect: Connect, app: App, hosts: bytes):
    reader, writer = await connect()
    writer.write(b"POST /echo HTTP/1.1\r\n" + hosts + b"Content-Length: 1\r\n\r\nx")
    status, _, body = await read_response(reader)
    assert (status, body) == (400, b'{"reason":"bad_host"}')
    assert app.seen == []


async def test_a_client_that_resets_during_the_lingering_close_leaves_no_error(
    connect: Connect, caplog: pytest.LogCaptureFixture
):
    for _ in range(20):
        _, writer = await connect()
        writer.write(b"NOT HTTP\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST
    await asyncio.sleep(0.2)
    gc.collect()
    await asyncio.sleep(0.05)
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
