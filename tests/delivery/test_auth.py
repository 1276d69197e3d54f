"""The OAuth client-credentials token, against the stand-in's real token endpoint."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp
import pytest

from agent.config import UpstreamConfig
from agent.delivery.auth import TokenError, TokenManager
from agent.testing.fake_paigo import FakePaigo


def upstream(paigo: FakePaigo, **changes: object) -> UpstreamConfig:
    config = UpstreamConfig(
        token_url=paigo.token_url, client_id=paigo.client_id, client_secret=paigo.client_secret
    )
    return replace(config, **changes)  # type: ignore[arg-type]


async def test_concurrent_callers_share_one_fetch_and_the_token_is_cached(paigo: FakePaigo):
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(upstream(paigo), session)
        got = await asyncio.gather(*(tokens.get() for _ in range(20)))
        assert len(set(got)) == 1
        assert await tokens.get() == got[0]
        assert paigo.token_requests == 1


async def test_invalidate_refetches_once_and_ignores_a_stale_token(paigo: FakePaigo):
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(upstream(paigo), session)
        first = await tokens.get()
        tokens.invalidate(first)
        second = await tokens.get()
        tokens.invalidate(first)  # a late 401 for the old token changes nothing
        assert await tokens.get() == second != first
        assert paigo.token_requests == 2


async def test_a_token_is_refreshed_ahead_of_its_expiry(paigo: FakePaigo):
    paigo.token_ttl_s = 100
    now = [0.0]
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(
            upstream(paigo, token_refresh_margin_s=30.0), session, clock=lambda: now[0]
        )
        first = await tokens.get()
        now[0] = 69.0
        assert await tokens.get() == first
        now[0] = 71.0
        assert await tokens.get() != first


@pytest.mark.parametrize(
    ("changes", "permanent"),
    [
        ({"client_secret": "wrong"}, True),
        ({"client_id": ""}, True),
        ({"token_url": "http://127.0.0.1:9/t"}, False),
    ],
)
async def test_token_failures_say_whether_to_fix_or_to_wait(
    paigo: FakePaigo, changes: dict[str, object], permanent: bool
):
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(upstream(paigo, **changes), session)
        with pytest.raises(TokenError) as caught:
            await tokens.get()
        assert caught.value.permanent is permanent
        assert "wrong" not in str(caught.value)
