"""The HTTP layer's messages: a request as handlers see it, a response, a refusal, limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass


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
