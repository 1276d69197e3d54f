"""Resolving unknown outcomes against the stand-in's read API, by Paigo's read rules."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import pytest

from agent.config import SpoolConfig, UpstreamConfig
from agent.delivery.auth import TokenManager
from agent.delivery.item import Item, make_item
from agent.delivery.ledger import Ledger
from agent.delivery.reads import CLOCK_MARGIN_S
from agent.delivery.recheck import Resolver
from agent.delivery.uplink import Uplink
from agent.records import Envelope, encode_envelope
from agent.testing.fake_paigo import Customer, FakePaigo
from tests.conftest import record


@dataclass
class Parts:
    paigo: FakePaigo
    config: UpstreamConfig
    uplink: Uplink
    tokens: TokenManager
    ledger: Ledger

    def resolver(self, now: float | None = None, **changes: object) -> Resolver:
        config = replace(self.config, **changes)  # type: ignore[arg-type]
        wall = (lambda: now) if now is not None else time.time
        return Resolver(self.uplink, self.tokens, self.ledger, config, wall_clock=wall)

    async def sent(self, item: Item) -> None:
        reply = await self.uplink.post(item.body, await self.tokens.get(), False)
        assert reply.status == 201


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    enrolled_later = Customer(enrolled_at=datetime(2026, 11, 26, tzinfo=UTC))
    paigo = FakePaigo(customers={f"customer-{n}": enrolled_later for n in range(7)})
    await paigo.start()
    config = UpstreamConfig(
        url=paigo.usage_url,
        token_url=paigo.token_url,
        client_id=paigo.client_id,
        client_secret=paigo.client_secret,
    )
    ledger = Ledger(SpoolConfig(dir=str(tmp_path), min_free_bytes=0), 1 << 20)
    await ledger.start()
    async with aiohttp.ClientSession() as session:
        uplink = Uplink(session, config.url, 5.0)
        yield Parts(paigo, config, uplink, TokenManager(config, session), ledger)
    await ledger.stop()
    await paigo.stop()


def item_of(n: int, **changes: object) -> Item:
    payload = encode_envelope(Envelope(orjson.dumps(record(n, **changes)), 0))
    return make_item(n, payload, "agent", "usageAgentRecordId", frozenset())[1]


async def test_found_records_leave_and_missing_ones_are_sent_again_even_before_enrollment(
    parts: Parts,
):
    """The customers were enrolled after these records: only ignoreEnrollmentDate=true
    shows them, and a check that did not send it would resend a record Paigo holds."""
    items = [item_of(1), item_of(2)]
    await parts.sent(items[0])  # Paigo holds record 1 only
    resolver = parts.resolver()
    resolver.became_unknown(items, now=0.0)
    check = await resolver.check(items)
    assert (check.found, check.complete, check.token_refused) == ([0], True, False)
    assert items[1].unknown_since is None  # not there: to be sent again
    assert resolver.duplicates_prevented == 1
    assert {r["ignoreEnrollmentDate"] for r in parts.paigo.reads} == {"true"}


async def test_a_value_paigo_prints_otherwise_is_still_the_record(parts: Parts):
    item = item_of(1, recordValue="1.50", timestamp="2026-11-25 10:00:00.000900+00:00")
    await parts.sent(item)  # read back as "1.5" at 2026-11-25T10:00:00.000Z
    resolver = parts.resolver()
    resolver.became_unknown([item], now=0.0)
    assert (await resolver.check([item])).found == [0]


async def test_a_record_of_now_is_checked_only_once_its_instant_can_be_read(parts: Parts):
    now = time.time()
    stamp = datetime.fromtimestamp(now, UTC).isoformat()
    item = item_of(3, timestamp=stamp)
    await parts.sent(item)
    resolver = parts.resolver(now=now)
    resolver.became_unknown([item], now=0.0)
    early = await resolver.check([item])
    assert early.found == [] and early.wait_s == pytest.approx(CLOCK_MARGIN_S, abs=0.01)
    assert parts.paigo.reads == []  # no read asked for a window that ends in the future
    assert item.unknown_since is not None
    later = parts.resolver(now=now + early.wait_s)  # the stand-in's clock is ahead: fine
    assert (await later.check([item])).found == [0]


async def test_a_failing_read_keeps_the_record_unknown(parts: Parts):
    item = item_of(4)
    broken = parts.resolver(read_url="http://127.0.0.1:9")
    broken.became_unknown([item], now=0.0)
    check = await broken.check([item])
    assert (check.found, check.failed) == ([], True)
    assert item.unknown_since is not None  # still unknown: never sent blind


async def test_a_refused_token_gets_one_refresh_and_the_read_again(parts: Parts):
    item = item_of(5)
    await parts.sent(item)
    resolver = parts.resolver()
    resolver.became_unknown([item], now=0.0)
    parts.paigo.expire_tokens()  # the read API answers 403 to the token the agent holds
    refreshes = parts.tokens.refreshes
    check = await resolver.check([item])
    assert (check.found, check.failed) == ([0], False)
    assert parts.tokens.refreshes == refreshes + 1
    parts.paigo.faults.reads_fail_next, parts.paigo.faults.reads_fail_status = 2, 403
    resolver.became_unknown([item], now=0.0)
    check = await resolver.check([item])  # 403 with a fresh token too: configuration
    assert (check.failed, check.token_refused) == (True, True)
