"""The ingest API's HTTP/1.1 server: an asyncio protocol on httptools (llhttp), as uvicorn's.

Why not aiohttp's server: a bare aiohttp handler costs about 37 us of CPU per request on
this machine, and a bare handler on this server about 13 us (bench/ingest.py measures both
in every run: "bare 204/s" and "own 204/s"). The difference is the room the agent's own
work (validation, the spool append, the answer) needs to reach the ingest target. aiohttp
stays the HTTP client toward Paigo and the Paigo stand-in's server.

Per connection, see `agent.http_connection`.

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
from typing import Final

from agent.http_connection import Connection
from agent.http_messages import (
    ErrorHandler,
    Handler,
    HttpError,
    Limits,
    Request,
    Response,
    Routes,
)
from agent.ingest_first import IngestFirst

__all__ = ["Handler", "HttpError", "HttpServer", "Limits", "Request", "Response", "Routes"]

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S: Final = 1.0  # idle connections are closed, and the Date header renewed
_INTERNAL_ERROR: Final = b'{"error":"internal error; nothing of this request was stored"}'


class HttpServer:
    """Serves `routes` on any number of listening sockets; `close` drains them."""

    def __init__(self, routes: Routes, on_error: ErrorHandler, limits: Limits) -> None:
        self.routes = routes
        self.on_error = on_error
        self.limits = limits
        self.date = b""
        self.closing = False
        self._servers: list[asyncio.Server] = []
        self._connections: set[Connection] = set()
        self._drained = asyncio.Event()
        self._sweeper: asyncio.TimerHandle | None = None
        self.first: IngestFirst | None = None  # told when requests are under way

    async def listen_tcp(self, host: str, port: int) -> list[int]:
        """Listen on host:port; the bound ports (port 0 picks one)."""
        server = await self._loop().create_server(
            self._connection, host, port, backlog=1024, reuse_address=True
        )
        self._servers.append(server)
        return [sock.getsockname()[1] for sock in server.sockets]

    async def listen_socket(self, sock: socket.socket) -> None:
        """Serve on an already bound socket, unix or TCP (its address and mode are the
        caller's, or systemd's)."""
        if sock.family == socket.AF_UNIX:
            server = await self._loop().create_unix_server(self._connection, sock=sock)
        else:
            server = await self._loop().create_server(self._connection, sock=sock, backlog=1024)
        self._servers.append(server)

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
        handlers = [c.worker for c in list(self._connections) if c.worker is not None]
        for task in handlers:
            task.cancel()
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=1.0)
            if stuck:
                log.error("%d request handlers did not end when cancelled", len(stuck))
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

    def _connection(self) -> Connection:
        if self._sweeper is None:
            self._sweep()
        return Connection(self)

    def _sweep(self) -> None:
        self.date = email.utils.formatdate(usegmt=True).encode()
        loop = self._loop()
        too_old = loop.time() - self.limits.idle_timeout_s
        for connection in list(self._connections):
            connection.close_if_idle_since(too_old)
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def serving(self, worker: asyncio.Task[None], first: Request | HttpError) -> None:
        """A connection's worker answers the requests it has received whole, `first` first."""
        if self.first is not None:
            posting = isinstance(first, Request) and first.method == "POST"
            self.first.serving(worker, posting=posting)

    def opened(self, connection: Connection) -> None:
        self._connections.add(connection)

    def closed(self, connection: Connection) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._drained.set()

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()
