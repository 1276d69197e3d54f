"""One call to the upstream `/usage` API, and what its answer means.

Paigo's `POST /usage` takes one record per request (JSON body, bearer token, optional
`invoice=true`). `"array"` mode posts a JSON array instead, for compatible endpoints; such
an endpoint may answer a 2xx with `{"results": [{"status": N}, ...]}`, one entry per record
in order, and then each record gets its own outcome.

`classify` and `parse_retry_after` are pure; `Uplink` is the thin I/O shell: posts on
`wire.Pool`, reads on aiohttp.
"""

from __future__ import annotations

import email.utils
import enum
import gzip
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import quote

import aiohttp
import orjson

from agent.delivery.auth import Tokens
from agent.delivery.reads import rfc3339
from agent.delivery.wire import NoAnswer, NotSent, Pool


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # retry with backoff: network, timeout, 408, 425, 429, 5xx
    THROTTLED = "throttled"  # 429 or 503 with Retry-After: the whole sender pauses
    REJECTED = "rejected"  # 400, 422 (and 413 for one record): this record is refused
    UNAUTHORIZED = "unauthorized"  # 401: refresh the token once, then a config problem
    FORBIDDEN = "forbidden"  # 403: a configuration problem, never the record's fault
    NOT_FOUND = "not_found"  # 404: an unknown customer or dimension, or a wrong URL
    TOO_LARGE = "too_large"  # 413: split the batch
    PERMANENT = "permanent"  # other 4xx, 501: not retryable as is, and not the record's fault


T = TypeVar("T")

_TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
_UNKNOWN_STATUSES: Final = frozenset({500, 502, 504})


def classify(status: int, retry_after: float | None = None) -> Outcome:
    """What an HTTP status from the upstream means for the records it answers."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (429, 503) and retry_after is not None:
        return Outcome.THROTTLED
    if status in _TRANSIENT_STATUSES or (status >= 500 and status != 501):
        return Outcome.TRANSIENT
    return {
        400: Outcome.REJECTED,
        422: Outcome.REJECTED,
        401: Outcome.UNAUTHORIZED,
        403: Outcome.FORBIDDEN,
        404: Outcome.NOT_FOUND,
        413: Outcome.TOO_LARGE,
    }.get(status, Outcome.PERMANENT)


def parse_retry_after(value: str | None, now: float, clamp_s: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date), clamped
    to [0, clamp_s]; None if absent or unreadable. `now` is Unix time."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), clamp_s)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the upstream said (status 0: no answer: connection error or timeout)."""

    status: int
    body: bytes = b""
    retry_after: float | None = None
    error: str = ""
    maybe_sent: bool = True  # False when the connection was never made

    @property
    def outcome_unknown(self) -> bool:
        """Whether the upstream may have stored what it did not confirm: no answer after
        the request may have been written, or a 500, 502 or 504."""
        return self.status in _UNKNOWN_STATUSES or (self.status == 0 and self.maybe_sent)

    @property
    def outcome(self) -> Outcome:
        return Outcome.TRANSIENT if self.status == 0 else classify(self.status, self.retry_after)

    def per_record(self, count: int) -> list[int] | None:
        """Per-record statuses of a 2xx array answer that lists them, else None."""
        if not 200 <= self.status < 300 or not self.body:
            return None
        try:
            results = orjson.loads(self.body).get("results")
            statuses = [int(item["status"]) for item in results]
        except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, ValueError):
            return None
        return statuses if len(statuses) == count else None


class Upstream(Protocol):
    """What delivery needs of the upstream (`Uplink` over HTTP; a fake in unit tests)."""

    async def post(self, body: bytes, token: str, invoice: bool, *, array: bool = False) -> Reply:
        """Post one record (or an array of them); never raises: a failure is a Reply."""

    async def read_usage(
        self, read_base: str, token: str, customer: str, window: tuple[datetime, datetime]
    ) -> list[dict[str, Any]]:
        """A customer's raw usage in [start, end), grouped by dimension; LookupFailed."""


class Uplink:
    """Posts records to `url` over keep-alive connections of its own (`wire.Pool`); reads
    Paigo's API through the aiohttp `session`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        timeout_s: float,
        *,
        gzip_arrays: bool = False,
        max_retry_after_s: float = 300.0,
        user_agent: str = "usage-agent",
    ) -> None:
        self._session = session
        self._pool = Pool(url, user_agent=user_agent)
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._gzip = gzip_arrays
        self._max_retry_after = max_retry_after_s

    def close(self) -> None:
        """Close the idle connections of the posts."""
        self._pool.close()

    async def post(self, body: bytes, token: str, invoice: bool, *, array: bool = False) -> Reply:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if array and self._gzip:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        pool = self._pool
        target = pool.target + (
            ("&" if "?" in pool.target else "?") + "invoice=true" if invoice else ""
        )
        try:
            answer = await pool.request(
                pool.request_bytes("POST", target, headers, body), self._timeout_s
            )
        except NotSent as exc:  # no connection: nothing was sent
            return Reply(0, error=f"NotSent: {exc}"[:300], maybe_sent=False)
        except NoAnswer as exc:
            return Reply(0, error=f"NoAnswer: {exc}"[:300])
        wait = parse_retry_after(
            answer.headers.get("retry-after"), time.time(), self._max_retry_after
        )
        return Reply(answer.status, answer.body, wait)

    async def read_usage(
        self, read_base: str, token: str, customer: str, window: tuple[datetime, datetime]
    ) -> list[dict[str, Any]]:
        """A customer's raw usage records in [start, end), grouped by dimension, from
        Paigo's read API (the rules of `agent.delivery.reads`); LookupFailed when it cannot
        be read."""
        params = {
            "aggregationInterval": "none",
            "aggregationPurpose": "metering",
            "ignoreEnrollmentDate": "true",  # else records before the enrollment are hidden
            "startTime": rfc3339(window[0]),
            "endTime": rfc3339(window[1]),
        }
        url = f"{read_base}/customers/{quote(customer, safe='')}/usage"
        return await self._get_data(url, token, params)

    async def read_dimensions(self, read_base: str, token: str) -> list[dict[str, Any]]:
        """Paigo's dimension catalog (`GET /dimensions`); LookupFailed."""
        return await self._get_data(f"{read_base}/dimensions", token, {})

    async def _get_data(self, url: str, token: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """The `data` list of objects of a GET from Paigo's API; LookupFailed."""
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with self._session.get(
                url, params=params, headers=headers, timeout=self._timeout
            ) as resp:
                data = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise LookupFailed(f"{type(exc).__name__}") from None
        if status != 200:
            raise LookupFailed(f"the read API answered {status}", status)
        try:
            groups = orjson.loads(data)["data"]
            if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise LookupFailed("the read API answered in an unknown shape") from None
        return groups


class LookupFailed(Exception):
    """The read API could not tell (`status`: its answer, 0 for none)."""

    def __init__(self, reason: str, status: int = 0) -> None:
        super().__init__(reason)
        self.status = status


REFUSED_TOKEN: Final = (401, 403)  # Paigo's gateway answers a bad token with either


async def refreshing(tokens: Tokens, call: Callable[[str], Awaitable[T]]) -> T:
    """`call(token)` with the current token; a 401 or 403 (LookupFailed) gets one shared
    token refresh and the call again: a 401 or 403 then is a configuration problem."""
    token = await tokens.get()
    try:
        return await call(token)
    except LookupFailed as exc:
        if exc.status not in REFUSED_TOKEN:
            raise
    tokens.invalidate(token)
    return await call(await tokens.get())


async def read_usage_refreshing(
    upstream: Upstream,
    tokens: Tokens,
    read_base: str,
    customer: str,
    window: tuple[datetime, datetime],
) -> list[dict[str, Any]]:
    """`read_usage`, with one token refresh on a 401 or 403 (`refreshing`)."""
    return await refreshing(
        tokens, lambda token: upstream.read_usage(read_base, token, customer, window)
    )
