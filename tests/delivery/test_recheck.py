"""Resolving unknown outcomes against the stand-in's read API."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson

from agent.config import SpoolConfig, UpstreamConfig
from agent.delivery.auth import TokenManager
from agent.delivery.item import make_item
from agent.delivery.ledger import Ledger
from agent.delivery.recheck import Resolver
from agent.delivery.uplink import Uplink
from agent.records import Envelope, encode_envelope
from agent.testing.fake_paigo import FakePaigo
from tests.conftest import record


async def test_found_records_are_reported_and_missing_ones_are_sent_again(
    paigo: FakePaigo, tmp_path: Path
):
    config = UpstreamConfig(
        url=paigo.usage_url,
        token_url=paigo.token_url,
        client_id=paigo.client_id,
        client_secret=paigo.client_secret,
        unknown_settle_s=0.0,
    )
    ledger = Ledger(SpoolConfig(dir=str(tmp_path), min_free_bytes=0), 1 << 20)
    await ledger.start()
    async with aiohttp.ClientSession() as session:
        uplink = Uplink(session, config.url, 5.0)
        token = await TokenManager(config, session).get()
        resolver = Resolver(uplink, ledger, config, clock=lambda: 100.0)
        items = []
        for n in (1, 2):
            payload = encode_envelope(Envelope(orjson.dumps(record(n)), 0))
            _, item = make_item(n, payload, "agent", config.id_key, frozenset())
            items.append(item)
        status = await uplink.post(items[0].body, token, False)  # Paigo holds record 1 only
        assert status.status == 200
        resolver.became_unknown(items)
        check = await resolver.check(items, token)
        assert (check.found, check.complete, check.token_refused) == ([0], True, False)
        assert items[1].unknown_since is None  # not there: to be sent again
        assert resolver.duplicates_prevented == 1

        broken = Resolver(
            uplink, ledger, replace(config, read_url="http://127.0.0.1:9"), clock=lambda: 0.0
        )
        resolver.became_unknown(items[1:])
        check = await broken.check(items[1:], token)
        assert (check.found, check.complete) == ([], False)
        assert items[1].unknown_since is not None  # still unknown: never sent blind

        paigo.expire_tokens()  # the read API refuses the token: the sender must refresh it
        check = await resolver.check(items[1:], token)
        assert (check.complete, check.token_refused) == (False, True)
    await ledger.stop()
