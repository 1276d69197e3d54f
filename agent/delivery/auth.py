"""The OAuth 2.0 client-credentials token for the upstream API.

One token is shared by every sender. It is fetched on first use, refreshed ahead of its
expiry (`upstream.token_refresh_margin_s`, at most half its lifetime), and refreshed once
when the upstream answers 401 to it. Concurrent callers share one refresh: they wait on a
lock and re-check after taking it. The secret is never logged or shown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson

from agent.config import UpstreamConfig
from agent.errors import AgentError

log = logging.getLogger(__name__)


class TokenError(AgentError):
    """The token endpoint did not give a token. `permanent` means the credentials were
    refused (fix the configuration); otherwise retry later."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Tokens(Protocol):
    """What delivery needs of the token source (`TokenManager`; a fake in unit tests)."""

    async def get(self) -> str:
        """A token to send with; TokenError when none can be had."""

    def invalidate(self, value: str) -> None:
        """The upstream refused `value`: the next `get` fetches a new one."""


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    refresh_at: float  # monotonic time after which it is refreshed before use


class TokenManager:
    def __init__(
        self,
        config: UpstreamConfig,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._session = session
        self._clock = clock
        self._token: Token | None = None
        self._lock = asyncio.Lock()
        self.refreshes = 0

    async def get(self) -> str:
        """A token that is not near its expiry (fetching one if needed); TokenError."""
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token.value
        async with self._lock:
            token = self._token
            if token is not None and self._clock() < token.refresh_at:
                return token.value  # another caller refreshed it while we waited
            self._token = await self._fetch()
            return self._token.value

    def replace_credentials(self, config: UpstreamConfig) -> None:
        """New client credentials (a reload): the token they replace is dropped, so the
        next `get` fetches one with them."""
        if (config.client_id, config.client_secret) != (
            self._config.client_id,
            self._config.client_secret,
        ):
            self._config = config
            self._token = None

    def invalidate(self, value: str) -> None:
        """The upstream refused `value` (401): the next `get` fetches a new token, unless
        another caller already replaced it."""
        if self._token is not None and self._token.value == value:
            self._token = None

    async def _fetch(self) -> Token:
        config = self._config
        if not config.client_id or not config.client_secret:
            raise TokenError(
                "no client credentials: set upstream.client_id and upstream.client_secret "
                "(or PAIGO_CLIENT_ID / PAIGO_CLIENT_SECRET)",
                permanent=True,
            )
        body = {
            "audience": config.audience,
            "grant_type": "client_credentials",
            "client_id": config.client_id,
            "client_secret": config.client_secret,
        }
        started = self._clock()
        try:
            async with self._session.post(
                config.token_url,
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=config.request_timeout_s),
            ) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TokenError(
                f"token endpoint unreachable: {type(exc).__name__}", permanent=False
            ) from None
        if status in (400, 401, 403):
            raise TokenError(f"token endpoint refused the credentials ({status})", permanent=True)
        if status != 200:
            raise TokenError(f"token endpoint answered {status}", permanent=False)
        try:
            answer = orjson.loads(data)
            value = str(answer["access_token"])
            lifetime = float(answer.get("expires_in", 3600))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise TokenError(
                "token endpoint answered without an access_token", permanent=False
            ) from None
        margin = min(config.token_refresh_margin_s, lifetime / 2)
        self.refreshes += 1
        log.info("fetched an upstream token valid for %.0f s", lifetime)
        return Token(value, started + lifetime - margin)
