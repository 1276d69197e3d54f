"""The ingest API's HTTP/1.1 server: an asyncio protocol on httptools (llhttp), as uvicorn's.

Why not aiohttp's server: a bare aiohttp handler costs about 37 us of CPU per request on
this machine, and a bare handler on this server about 13 us (bench/ingest.py measures both
in every run: "bare 204/s" and "own 204/s"). The difference is the room the agent's own
work (validation, the spool append, the answer) needs to reach the ingest target. aiohttp
stays the HTTP client toward Paigo and the Paigo stand-in's server.

Per connection:
- llhttp parses (chunked bodies, keep-alive rules; Content-Length together with
  Transfer-Encoding is refused, so requests cannot be smuggled past us);
- requests are handled one at a time and answered in order; pipelined ones queue, and
  reading pauses at `MAX_QUEUED` or while the client does not read its answers;
- a request must arrive whole within `Limits.request_timeout_s` of its first byte (408);
  a keep-alive connection with nothing under way closes after `Limits.idle_timeout_s`,
  and is dropped a sweep later if a client that does not read still holds it open;
- limits: URL `MAX_URL_BYTES` (414); headers `MAX_HEADER_BYTES` and `MAX_HEADERS` (431);
  body `Limits.max_body_bytes` (413: from Content-Length before the body is read, or while
  a chunked body arrives); malformed HTTP gets 400;
- after a refusal the connection closes. The rest of a refused request is read and dropped
  for up to `LINGER_S` first ("lingering close"), so the client reads our answer instead of a
  reset.

The application gives routes (path -> method -> handler) and `on_error`, which turns an
`HttpError` (a refusal of this layer, or 404/405 from routing) into its answer, so that the
application formats and counts every answer. HEAD is served by a path's GET handler.
A handler's unexpected exception is logged with its traceback and answered with a plain 500;
the traceback never reaches the client.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, NoReturn

import httptools

log = logging.getLogger(__name__)

MAX_URL_BYTES: Final = 8 * 1024
MAX_HEADER_BYTES: Final = 32 * 1024
MAX_HEADERS: Final = 100
MAX_QUEUED: Final = 16  # pipelined requests waiting on one connection before reading pauses
LINGER_S: Final = 2.0
SWEEP_INTERVAL_S: Final = 1.0  # idle connections are closed, and the Date header renewed

_STATUS_LINES: Final = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_INTERNAL_ERROR: Final = b'{"error":"internal error; nothing of this request was stored"}'


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str  # the raw query string, without "?"
    headers: dict[str, str]  # names lower-cased; a repeated header's values joined by ", "
    body: bytes
    keep_alive: bool
    http_10: bool


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] | None = None


class HttpError(Exception):
    """A request this layer refuses, or one that no route takes."""

    def __init__(self, status: int, reason: str, message: str, allow: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # a fixed label, for metrics
        self.allow = allow  # for 405: the methods the path takes


Handler = Callable[[Request], Awaitable[Response]]
Routes = Mapping[str, Mapping[str, Handler]]
ErrorHandler = Callable[[HttpError], Response]


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int
    request_timeout_s: float
    idle_timeout_s: float


class HttpServer:
    """Serves `routes` on any number of listening sockets; `close` drains them."""

    def __init__(self, routes: Routes, on_error: ErrorHandler, limits: Limits) -> None:
        self.routes = routes
        self.on_error = on_error
        self.limits = limits
        self.date = b""
        self.closing = False
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._drained = asyncio.Event()
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen_tcp(self, host: str, port: int) -> list[int]:
        """Listen on host:port; the bound ports (port 0 picks one)."""
        server = await self._loop().create_server(
            self._connection, host, port, backlog=1024, reuse_address=True
        )
        self._servers.append(server)
        return [sock.getsockname()[1] for sock in server.sockets]

    async def listen_unix(self, sock: socket.socket) -> None:
        """Serve on an already bound unix socket (its path and mode are the caller's)."""
        self._servers.append(await self._loop().create_unix_server(self._connection, sock=sock))

    async def close(self, grace_s: float) -> None:
        """Stop listening; answer what is under way (then close each connection) for up to
        `grace_s`; then drop the connections left, saying how many."""
        self.closing = True
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.close_when_idle()
        if self._connections:
            self._drained.clear()
            try:
                async with asyncio.timeout(grace_s):
                    await self._drained.wait()
            except TimeoutError:
                log.warning("closing %d connections still busy", len(self._connections))
        for connection in list(self._connections):
            connection.abort()
        for server in self._servers:
            await server.wait_closed()
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def respond(self, request: Request) -> Response:
        methods = self.routes.get(request.path)
        if methods is None:
            return self.on_error(HttpError(404, "not_found", f"no route {request.path}"))
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allow = ", ".join(methods)
            message = f"{request.method} is not allowed on {request.path}; use {allow}"
            return self.on_error(HttpError(405, "method_not_allowed", message, allow))
        try:
            return await handler(request)
        except Exception:  # a bug: logged whole, answered without its details
            log.exception("%s %s failed", request.method, request.path)
            return Response(500, _INTERNAL_ERROR)

    def _connection(self) -> _Connection:
        if self._sweeper is None:
            self._sweep()
        return _Connection(self)

    def _sweep(self) -> None:
        self.date = email.utils.formatdate(usegmt=True).encode()
        loop = self._loop()
        too_old = loop.time() - self.limits.idle_timeout_s
        for connection in list(self._connections):
            connection.close_if_idle_since(too_old)
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def opened(self, connection: _Connection) -> None:
        self._connections.add(connection)

    def closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._drained.set()

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[Request | HttpError] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._refusal: HttpError | None = None  # raised inside a parser callback
        self._in_message = False
        self._lingering = False
        self._reading_paused = False
        self._writing_paused = False
        self._close_when_idle = False
        self._idle_since = self._loop.time()
        # the message being parsed
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._header_count = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._keep_alive = True

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.opened(self)
        if self._server.closing:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._server.closed(self)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a refused request
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop(None)  # the upgrade request itself is answered; then we close
        except httptools.HttpParserCallbackError:
            if self._refusal is None:
                raise  # a bug in a callback: asyncio logs it and closes the connection
            self._stop(self._refusal)
        except httptools.HttpParserError as exc:
            self._stop(HttpError(400, "malformed_http", f"malformed HTTP request: {exc}"))
        else:
            if self._in_message and self._timer is None:
                self._timer = self._loop.call_later(self._limits.request_timeout_s, self._timed_out)

    def eof_received(self) -> bool:
        if self._in_message:  # half a request: nothing of it is handled
            self._in_message = False
            self._cancel_timer()
        self._close_when_idle = True
        # True keeps the transport open to answer what is queued; False lets asyncio close it
        return self._worker is not None

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if len(self._queue) < MAX_QUEUED:
            self._resume_reading()

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._header_count = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL_BYTES:
            self._refuse(414, "url_too_long", f"the URL is over {MAX_URL_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._header_bytes > MAX_HEADER_BYTES or self._header_count > MAX_HEADERS:
            self._refuse(
                431,
                "headers_too_large",
                f"the headers are over {MAX_HEADER_BYTES} bytes or {MAX_HEADERS} fields",
            )
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        earlier = self._headers.get(key)
        self._headers[key] = text if earlier is None else f"{earlier}, {text}"

    def on_headers_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        length = self._headers.get("content-length")
        if length is not None and int(length) > self._limits.max_body_bytes:
            self._refuse_too_large()
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:
            self._refuse_too_large()
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._cancel_timer()
        path, query = self._split_url()
        request = Request(
            self._parser.get_method().decode("ascii"),
            path,
            query,
            self._headers,
            b"".join(self._body),
            self._keep_alive,
            self._parser.get_http_version() == "1.0",
        )
        self._enqueue(request)

    def _split_url(self) -> tuple[str, str]:
        url = self._url
        if not url.startswith(b"/"):  # absolute form: http://host/path?query
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._refuse(400, "malformed_http", "the request target is not a path or URL")
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        path, _, query = url.decode("latin-1").partition("?")
        return path, query

    # --- answering ----------------------------------------------------------------------------

    def _enqueue(self, item: Request | HttpError) -> None:
        self._queue.append(item)
        if self._worker is None:
            self._worker = self._loop.create_task(self._serve())
        elif len(self._queue) >= MAX_QUEUED:
            self._pause_reading()

    async def _serve(self) -> None:
        try:
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, HttpError):
                    self._write(self._server.on_error(item), head=False, close=True)
                    self._linger()
                    return
                response = await self._server.respond(item)
                close = not item.keep_alive or self._server.closing or self._close_when_idle
                self._write(response, head=item.method == "HEAD", close=close, http_10=item.http_10)
                if not item.keep_alive:
                    self._queue.clear()  # what a client sends after "Connection: close" is not read
                if close and not self._queue:
                    self._close()
                    return
                if not self._writing_paused and len(self._queue) < MAX_QUEUED:
                    self._resume_reading()
        finally:
            self._worker = None
            self._idle_since = self._loop.time()

    def _write(self, response: Response, *, head: bool, close: bool, http_10: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        body = response.body
        lines = [_STATUS_LINES[response.status]]
        if response.status != 204:
            lines.append(
                f"Content-Type: {response.content_type}\r\nContent-Length: {len(body)}\r\n"
            )
        if response.headers:
            lines.extend(f"{name}: {value}\r\n" for name, value in response.headers.items())
        if close:
            lines.append("Connection: close\r\n")
        elif http_10:
            lines.append("Connection: keep-alive\r\n")
        head_bytes = "".join(lines).encode("latin-1") + b"Date: " + self._server.date + b"\r\n\r\n"
        transport.write(head_bytes if head or response.status == 204 else head_bytes + body)

    def _refuse(self, status: int, reason: str, message: str) -> NoReturn:
        self._refusal = HttpError(status, reason, message)
        raise self._refusal

    def _refuse_too_large(self) -> NoReturn:
        limit = self._limits.max_body_bytes
        self._refuse(413, "body_too_large", f"the body is over {limit} bytes; split it")

    def _timed_out(self) -> None:
        self._timer = None
        if self._in_message:
            self._stop(HttpError(408, "body_timeout", "the request body did not arrive in time"))

    def _stop(self, refusal: HttpError | None) -> None:
        """Read no more requests; answer those queued, then `refusal` if any, then close."""
        self._in_message = False
        self._cancel_timer()
        self._close_when_idle = True
        self._pause_reading()
        if refusal is not None:
            self._enqueue(refusal)
        elif self._worker is None:
            self._close()

    def _linger(self) -> None:
        """Close after our answer, reading and dropping what the client still sends."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._lingering = True
        self._resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER_S, self.abort)

    # --- closing ------------------------------------------------------------------------------

    @property
    def _idle(self) -> bool:
        """Nothing under way: no request being read, none being answered."""
        return self._worker is None and not self._in_message

    def close_when_idle(self) -> None:
        self._close_when_idle = True
        if self._idle:
            self._close()

    def close_if_idle_since(self, moment: float) -> None:
        """Close an idle connection; drop one that was closed before and is still here
        (a client that does not read keeps a closed transport waiting for its buffer)."""
        if self._idle and self._idle_since < moment:
            if self._transport is not None and self._transport.is_closing():
                self.abort()
            else:
                self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._lingering:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport and not self._transport.is_closing():
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport and not self._transport.is_closing():
            self._reading_paused = False
            self._transport.resume_reading()
