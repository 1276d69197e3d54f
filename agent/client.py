"""A client for apps: posts usage to the local agent. Standard library only, so an app can
import it (or copy this one file) without the agent's dependencies.

    from agent.client import UsageClient
    client = UsageClient(unix_socket="/run/usage-agent/ingest.sock")  # or url="http://..."
    ids = client.post({"timestamp": "...", "customerId": "c", "dimensionId": "d",
                       "recordValue": "1"})

* Each `post` carries an `Idempotency-Key` (one is made when none is given), the same on
  every retry, so a retry after a lost answer is never stored twice.
* 503 and 507 (the agent is stopping, or its disk is full), a refused connection and a
  timeout are retried, after the agent's `Retry-After` when it sends one, until
  `deadline_s`; then `AgentUnavailable`.
* A 4xx is the request's fault and is not retried: `UsageRejected`, with the agent's
  per-record `errors` (index, field, message).
"""

from __future__ import annotations

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


class UsageClient:
    def __init__(
        self,
        url: str = "http://127.0.0.1:7411",
        *,
        unix_socket: str | None = None,
        token: str | None = None,
        timeout_s: float = 5.0,
        deadline_s: float = 30.0,
    ) -> None:
        """`unix_socket` wins over `url` when given; `token`: the agent's ingest token."""
        parts = urllib.parse.urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._unix_socket = unix_socket
        self._token = token
        self._timeout_s = timeout_s
        self.deadline_s = deadline_s

    def post(
        self,
        records: dict[str, Any] | list[dict[str, Any]],
        *,
        idempotency_key: str | None = None,
        invoice: bool = False,
    ) -> list[str]:
        """Store `records` durably at the agent; their ids. UsageRejected, AgentUnavailable."""
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key or f"client-{uuid.uuid4()}",
        }
        path = "/usage?invoice=true" if invoice else "/usage"
        answer = self._retrying("POST", path, json.dumps(records).encode(), headers)
        if answer.status == 202:
            ids: list[str] = answer.body["ids"]
            return ids
        body = answer.body if isinstance(answer.body, dict) else {}
        message = str(body.get("error") or f"the agent answered {answer.status}")
        raise UsageRejected(message, answer.status, list(body.get("errors") or []))

    def get(self, path: str) -> Answer:
        """One GET (no retries): `/healthz`, `/readyz`, `/status`, `/metrics`."""
        return self.request("GET", path)

    def _retrying(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        deadline = time.monotonic() + self.deadline_s
        wait, why = FIRST_WAIT_S, ""
        while True:
            try:
                answer = self.request(method, path, body, headers)
                if answer.status not in RETRIED:
                    return answer
                why = f"the agent answered {answer.status}: {_error_of(answer)}"
                after = _retry_after(answer.headers.get("retry-after"))
                pause = wait if after is None else after
            except AgentUnavailable as exc:
                why, pause = str(exc), wait
            if time.monotonic() + pause > deadline:
                raise AgentUnavailable(f"{why} (gave up after {self.deadline_s:g} s)")
            time.sleep(pause)
            wait = min(wait * 2, MAX_WAIT_S)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request; AgentUnavailable when there is no answer."""
        sent = dict(headers or {})
        if self._token:
            sent["Authorization"] = f"Bearer {self._token}"
        connection = self._connection()
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            where = self._unix_socket or f"{self._host}:{self._port}"
            raise AgentUnavailable(f"no answer from the agent at {where}: {exc}") from None
        finally:
            connection.close()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        return Answer(response.status, parsed, answer_headers)

    def _connection(self) -> http.client.HTTPConnection:
        if self._unix_socket:
            return _UnixConnection(self._unix_socket, self._timeout_s)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)


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
