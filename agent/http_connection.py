"""One client connection of the ingest API's HTTP/1.1 server, and the types it speaks in.

Per connection:
- llhttp parses (chunked bodies, keep-alive rules; Content-Length together with
  Transfer-Encoding is refused, so requests cannot be smuggled past us);
- requests are handled one at a time and answered in order; pipelined ones queue, and
  reading pauses at `MAX_QUEUED` or while the client does not read its answers;
- a request must arrive whole within `Limits.request_timeout_s` of its first byte (408);
  a keep-alive connection with nothing under way closes after `Limits.idle_timeout_s`,
  and is dropped a sweep later if a client that does not read still holds it open;
- limits: URL `MAX_URL_BYTES` (414); headers `MAX_HEADER_BYTES` and `MAX_HEADERS` (431),
  and the whole request head `MAX_HEAD_BYTES` counted as its bytes arrive (431), so an
  unterminated header line cannot grow the agent; body `Limits.max_body_bytes` (413: from
  Content-Length before the body is read, or while a chunked body arrives); malformed HTTP,
  and an HTTP/1.1 request without exactly one Host header (RFC 9112 3.2), get 400;
- `Expect: 100-continue` is answered only once every earlier answer on the connection is
  written (answers stay in order), and never to HTTP/1.0 (RFC 9110 10.1.1);
- `Upgrade` (for example `h2c`, which `curl --http2` sends) is ignored: the request is
  served as HTTP/1.1, its Content-Length body included (a chunked body with an upgrade is
  refused with 400);
- `Connection: close` is said on the last answer only, never on one that more follow;
- after a refusal the connection closes. The rest of a refused request is read and dropped
  for up to `LINGER_S` first ("lingering close"), so the client reads our answer instead of a
  reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from http import HTTPStatus
from typing import Final, NoReturn, Protocol

import httptools

from agent.http_messages import HttpError, Limits, Request, Response

log = logging.getLogger(__name__)

MAX_URL_BYTES: Final = 8 * 1024
MAX_HEADER_BYTES: Final = 32 * 1024
MAX_HEADERS: Final = 100
MAX_HEAD_BYTES: Final = MAX_URL_BYTES + MAX_HEADER_BYTES + 1024  # request line and headers
MAX_QUEUED: Final = 16  # pipelined requests waiting on one connection before reading pauses
LINGER_S: Final = 2.0

_STATUS_LINES: Final = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class ConnectionOwner(Protocol):
    """What a connection needs of its server."""

    limits: Limits
    closing: bool
    date: bytes  # the Date header's value, renewed every second

    def on_error(self, error: HttpError) -> Response: ...

    async def respond(self, request: Request) -> Response: ...

    def serving(self, worker: asyncio.Task[None], first: Request | HttpError) -> None: ...

    def opened(self, connection: Connection) -> None: ...

    def closed(self, connection: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: ConnectionOwner) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[Request | HttpError] = deque()
        self.worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._refusal: HttpError | None = None  # raised inside a parser callback
        self._in_message = False
        self._in_head = False  # the request line and headers are still arriving
        self._head_bytes = 0
        self._continue_pending = False  # a 100 Continue waits for earlier answers
        self._upgrade_body: Request | None = None  # an ignored upgrade's body, still arriving
        self._upgrade_body_left = 0
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
        self._hosts = 0
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
        if self._upgrade_body is not None:
            data = self._take_upgrade_body(data)
            if not data:
                return
        head_before = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._ignore_upgrade(data[upgrade.args[0] :])
            return
        except httptools.HttpParserCallbackError:
            if self._refusal is None:
                raise  # a bug in a callback: asyncio logs it and closes the connection
            self._stop(self._refusal)
            return
        except httptools.HttpParserError as exc:
            self._stop(HttpError(400, "malformed_http", f"malformed HTTP request: {exc}"))
            return
        if self._in_head and head_before:  # the head had begun before this chunk
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._stop(
                    HttpError(
                        431, "headers_too_large", f"the request head is over {MAX_HEAD_BYTES} bytes"
                    )
                )
                return
        if self._in_message:
            self._start_timer()

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(self._limits.request_timeout_s, self._timed_out)

    def _ignore_upgrade(self, rest: bytes) -> None:
        """llhttp stopped at an upgrade: the request it completed is served as HTTP/1.1.
        Its Content-Length body (llhttp left it unparsed) is read here; then a new parser
        takes what follows."""
        self._parser = httptools.HttpRequestParser(self)
        if self._upgrade_body is not None:
            self._start_timer()
        if rest:
            self.data_received(rest)

    def _take_upgrade_body(self, data: bytes) -> bytes:
        """Add the body of an ignored upgrade; what follows it."""
        request = self._upgrade_body
        assert request is not None
        taken = data[: self._upgrade_body_left]
        self._body.append(taken)
        self._upgrade_body_left -= len(taken)
        if self._upgrade_body_left:
            return b""
        self._upgrade_body = None
        request.body = b"".join(self._body)
        self._in_message = False
        self._cancel_timer()
        self._enqueue(request)
        return data[len(taken) :]

    def eof_received(self) -> bool:
        if self._in_message:  # half a request: nothing of it is handled
            self._in_message = self._in_head = False
            self._upgrade_body = None
            self._cancel_timer()
        self._close_when_idle = True
        # True keeps the transport open to answer what is queued; False lets asyncio close it
        return self.worker is not None

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
        self._in_head = True
        self._head_bytes = 0
        self._hosts = 0
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
        if key == "host":
            self._hosts += 1
        earlier = self._headers.get(key)
        self._headers[key] = text if earlier is None else f"{earlier}, {text}"

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._keep_alive = self._parser.should_keep_alive()
        http_10 = self._parser.get_http_version() == "1.0"
        if not http_10 and self._hosts != 1:
            self._refuse(400, "bad_host", "an HTTP/1.1 request needs exactly one Host header")
        length = self._headers.get("content-length")
        if length is not None and int(length) > self._limits.max_body_bytes:
            self._refuse_too_large()
        if self._parser.should_upgrade() and self._headers.get("transfer-encoding"):
            self._refuse(400, "malformed_http", "an Upgrade with a chunked body is not served")
        expects = self._headers.get("expect", "").lower() == "100-continue"
        if expects and not http_10:
            self._continue_pending = True
            if self.worker is None:  # no earlier answer to wait for
                self._send_continue()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:
            self._refuse_too_large()
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._continue_pending = False  # the body came: no 100 is owed any more
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
        if self._parser.should_upgrade():  # llhttp leaves the body to us: see _ignore_upgrade
            self._upgrade_body_left = int(self._headers.get("content-length") or 0)
            if self._upgrade_body_left:
                self._upgrade_body = request
                return
        self._in_message = False
        self._cancel_timer()
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
        if self.worker is None:
            self.worker = self._loop.create_task(self._serve())
            self._server.serving(self.worker, item)
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
                stopping = self._server.closing or self._close_when_idle
                close = not item.keep_alive or (stopping and not self._queue)
                self._write(response, head=item.method == "HEAD", close=close, http_10=item.http_10)
                if not item.keep_alive:
                    self._queue.clear()  # what a client sends after "Connection: close" is not read
                if close and not self._queue:
                    self._close()
                    return
                if not self._writing_paused and len(self._queue) < MAX_QUEUED:
                    self._resume_reading()
        finally:
            self.worker = None
            self._idle_since = self._loop.time()
            if self._continue_pending:  # every earlier answer is written: now the 100
                self._send_continue()

    def _send_continue(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_CONTINUE)
        self._continue_pending = False

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
        if self._in_head:
            self._stop(HttpError(408, "header_timeout", "the request head did not arrive in time"))
        elif self._in_message:
            self._stop(HttpError(408, "body_timeout", "the request body did not arrive in time"))

    def _stop(self, refusal: HttpError | None) -> None:
        """Read no more requests; answer those queued, then `refusal` if any, then close."""
        self._in_message = self._in_head = False
        self._upgrade_body = None
        self._cancel_timer()
        self._close_when_idle = True
        self._pause_reading()
        if refusal is not None:
            self._enqueue(refusal)
        elif self.worker is None:
            self._close()

    def _linger(self) -> None:
        """Close after our answer, reading and dropping what the client still sends."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._lingering = True
        self._loop.call_later(LINGER_S, self.abort)
        self._resume_reading()
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the client reset the connection already (ENOTCONN)
                self.abort()

    # --- closing ------------------------------------------------------------------------------

    @property
    def _idle(self) -> bool:
        """Nothing under way: no request being read, none being answered."""
        return self.worker is None and not self._in_message

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
