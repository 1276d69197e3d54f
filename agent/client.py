"""A client for apps: posts usage to the local agent. Standard library only, so an app can
import it (or copy this one file) without the agent's dependencies.

    from agent.client import UsageClient
    client = UsageClient(unix_socket="/run/usage-agent/ingest.sock")  # or url="http://..."
    ids = client.post({"timestamp": "...", "customerId": "c", "dimensionId": "d",
                       "recordValue": "1"})

    # asyncio: the same, awaited
    ids = await AsyncUsageClient(unix_socket="...").post(record)

* Each `post` carries an `Idempotency-Key` (one is made when none is given), the same on
  every retry, so a retry after a lost answer is never stored twice.
* 503 and 507 (the agent is stopping, or its disk is full), a refused connection and a
  timeout are retried, after the agent's `Retry-After` when it sends one, until
  `deadline_s`; then `AgentUnavailable`.
* A 4xx is the request's fault and is not retried: `UsageRejected`, with the agent's
  per-record `errors` (index, field, message).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

RETRIED: Final = frozenset({503, 507})
FIRST_WAIT_S: Final = 0.1
MAX_WAIT_S: Final = 2.0


class UsageError(Exception):
    """The agent did not store the records (`status`: its answer, 0 for none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class UsageRejected(UsageError):
    """The agent refused the request (4xx): nothing was stored; `errors` says why."""

    def __init__(self, message: str, status: int, errors: list[dict[str, Any]]) -> None:
        super().__init__(message, status)
        self.errors = errors


class AgentUnavailable(UsageError):
    """The agent could not be reached, or kept answering 503/507, until the deadline."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # the JSON answer (None when the body is not JSON)
    headers: dict[str, str] = field(default_factory=dict)


class _Target:
    """Where the agent is, and what every request to it carries (shared by both clients)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:7411",
        *,
        unix_socket: str | None = None,
        token: str | None = None,
        timeout_s: float = 5.0,
        deadline_s: float = 30.0,
    ) -> None:
        """`unix_socket` wins over `url` when given; `token`: the agent's ingest token;
        `timeout_s` one request's, `deadline_s` a post's with its retries."""
        parts = urllib.parse.urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._unix_socket = unix_socket
        self._token = token
        self._timeout_s = timeout_s
        self.deadline_s = deadline_s

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        sent = dict(headers or {})
        if self._token:
            sent["Authorization"] = f"Bearer {self._token}"
        return sent

    def _unavailable(self, exc: BaseException) -> AgentUnavailable:
        where = self._unix_socket or f"{self._host}:{self._port}"
        return AgentUnavailable(f"no answer from the agent at {where}: {exc or 'timed out'}")


def _post_request(
    records: dict[str, Any] | list[dict[str, Any]], idempotency_key: str | None, invoice: bool
) -> tuple[str, bytes, dict[str, str]]:
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key or f"client-{uuid.uuid4()}",
    }
    path = "/usage?invoice=true" if invoice else "/usage"
    return path, json.dumps(records).encode(), headers


def _post_result(answer: Answer) -> list[str]:
    if answer.status == 202:
        ids: list[str] = answer.body["ids"]
        return ids
    body = answer.body if isinstance(answer.body, dict) else {}
    message = str(body.get("error") or f"the agent answered {answer.status}")
    raise UsageRejected(message, answer.status, list(body.get("errors") or []))


class _Retries:
    """When to try a post again: 503/507 after the agent's Retry-After (else a doubling
    wait), no answer after the doubling wait, until the deadline."""

    def __init__(self, deadline_s: float) -> None:
        self._deadline_s = deadline_s
        self._deadline = time.monotonic() + deadline_s
        self._wait = FIRST_WAIT_S

    def pause(self, outcome: Answer | AgentUnavailable) -> float | None:
        """None: `outcome` is the answer to return; else seconds to wait before the next
        try. AgentUnavailable once the deadline would pass."""
        if isinstance(outcome, Answer):
            if outcome.status not in RETRIED:
                return None
            why = f"the agent answered {outcome.status}: {_error_of(outcome)}"
            after = _retry_after(outcome.headers.get("retry-after"))
            pause = self._wait if after is None else after
        else:
            why, pause = str(outcome), self._wait
        if time.monotonic() + pause > self._deadline:
            raise AgentUnavailable(f"{why} (gave up after {self._deadline_s:g} s)")
        self._wait = min(self._wait * 2, MAX_WAIT_S)
        return pause


class UsageClient(_Target):
    """Posts usage to the local agent, blocking (`http.client`)."""

    def post(
        self,
        records: dict[str, Any] | list[dict[str, Any]],
        *,
        idempotency_key: str | None = None,
        invoice: bool = False,
    ) -> list[str]:
        """Store `records` durably at the agent; their ids. UsageRejected, AgentUnavailable."""
        path, body, headers = _post_request(records, idempotency_key, invoice)
        retries = _Retries(self.deadline_s)
        while True:
            outcome: Answer | AgentUnavailable
            try:
                outcome = self.request("POST", path, body, headers)
            except AgentUnavailable as exc:
                outcome = exc
            pause = retries.pause(outcome)
            if pause is None and isinstance(outcome, Answer):
                return _post_result(outcome)
            time.sleep(pause or 0)

    def get(self, path: str) -> Answer:
        """One GET (no retries): `/healthz`, `/readyz`, `/status`, `/metrics`."""
        return self.request("GET", path)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request; AgentUnavailable when there is no answer."""
        connection = self._connection()
        try:
            connection.request(method, path, body=body, headers=self._headers(headers))
            response = connection.getresponse()
            data = response.read()
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            raise self._unavailable(exc) from None
        finally:
            connection.close()
        return Answer(response.status, _json_or_none(data), answer_headers)

    def _connection(self) -> http.client.HTTPConnection:
        if self._unix_socket:
            return _UnixConnection(self._unix_socket, self._timeout_s)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)


class AsyncUsageClient(_Target):
    """`UsageClient` for asyncio apps: the same calls, awaited, on the standard library's
    streams (one connection a request, `Connection: close`)."""

    async def post(
        self,
        records: dict[str, Any] | list[dict[str, Any]],
        *,
        idempotency_key: str | None = None,
        invoice: bool = False,
    ) -> list[str]:
        """Store `records` durably at the agent; their ids. UsageRejected, AgentUnavailable."""
        path, body, headers = _post_request(records, idempotency_key, invoice)
        retries = _Retries(self.deadline_s)
        while True:
            outcome: Answer | AgentUnavailable
            try:
                outcome = await self.request("POST", path, body, headers)
            except AgentUnavailable as exc:
                outcome = exc
            pause = retries.pause(outcome)
            if pause is None and isinstance(outcome, Answer):
                return _post_result(outcome)
            await asyncio.sleep(pause or 0)

    async def get(self, path: str) -> Answer:
        return await self.request("GET", path)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request; AgentUnavailable when there is no answer."""
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._unix_socket:
                    reader, writer = await asyncio.open_unix_connection(self._unix_socket)
                else:
                    reader, writer = await asyncio.open_connection(self._host, self._port)
                try:
                    writer.write(self._request_bytes(method, path, body, headers))
                    await writer.drain()
                    return await _read_answer(reader)
                finally:
                    writer.close()
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            raise self._unavailable(exc) from None

    def _request_bytes(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in self._headers(headers).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    """An HTTP/1.1 answer: status line, headers, a body of Content-Length bytes (or to the
    end of the connection). ValueError when it is not one."""
    status_line = (await reader.readline()).decode("latin-1")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:40]!r}")
    headers: dict[str, str] = {}
    while line := (await reader.readline()).decode("latin-1").strip():
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    data = await reader.readexactly(int(length)) if length else await reader.read()
    return Answer(int(rest[:3]), _json_or_none(data), headers)


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _retry_after(value: str | None) -> float | None:
    return float(value) if value and value.strip().isdigit() else None


def _error_of(answer: Answer) -> str:
    return str(answer.body.get("error", "")) if isinstance(answer.body, dict) else ""
