"""Delivery end to end: a running agent, real sockets, and the Paigo stand-in upstream."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.delivery import deadletter
from agent.delivery.item import Item
from agent.delivery.sender import MAX_WINDOW
from agent.testing.fake_paigo import FakePaigo
from tests.conftest import (
    AgentFactory,
    agent_config,
    as_sent,
    delivering,
    eventually,
    record,
)


def values(records: list[dict[str, Any]]) -> Counter[str]:
    return Counter(orjson.dumps(r).decode() for r in as_sent(records))


async def post_all(agent: Any, batch: list[dict[str, Any]], size: int = 500, **kw: Any) -> None:
    for start in range(0, len(batch), size):
        status, _, body = await agent.post(batch[start : start + size], **kw)
        assert status == 202, body


async def test_records_are_delivered_once_each(start_agent: AgentFactory, paigo: FakePaigo):
    agent = await start_agent(**delivering(paigo))
    batch = [record(n) for n in range(300)]
    await post_all(agent, batch)
    await eventually(lambda: len(paigo.records) >= 300, what="delivery")
    await asyncio.sleep(0.1)
    assert values(paigo.records) == values(batch)
    await eventually(lambda: agent.service.spool.backlog == 0, what="acks")


async def test_an_outage_loses_nothing(start_agent: AgentFactory, paigo: FakePaigo):
    """503 while 10,000 records come in, then the upstream is gone entirely, then back."""
    paigo.fail_next(10**9, 503)
    agent = await start_agent(**delivering(paigo))
    batch = [record(n) for n in range(10_000)]
    await post_all(agent, batch[:5000])
    await asyncio.sleep(0.3)
    port = int(paigo.url.rsplit(":", 1)[1])
    await paigo.stop()
    await post_all(agent, batch[5000:])
    await asyncio.sleep(0.5)
    assert paigo.records == []
    assert agent.service.spool.backlog == 10_000
    assert agent.service.sender is not None  # the backlog waits on disk, not in memory:
    assert agent.service.sender.status().buffered_records <= 4 * 256  # the intake's window
    paigo.fail_next(0)
    await paigo.start(port=port)
    await eventually(lambda: len(paigo.records) >= 10_000, timeout=60, what="drain after outage")
    await asyncio.sleep(0.2)
    assert values(paigo.records) == values(batch)  # every record, none twice
    assert agent.service.sender is not None
    assert agent.service.sender.status().left["dead_lettered"] == 0


async def test_in_array_mode_an_outage_holds_at_most_max_window_records_in_memory(
    start_agent: AgentFactory,
):
    """With 256 senders and 500-record arrays, four batches per sender would be 512,000
    records in memory (about half a gigabyte): the window is capped, the rest waits on
    disk, and once the upstream is back everything goes, once."""
    fake = FakePaigo(accept_arrays=True)
    await fake.start()
    try:
        fake.fail_next(10**9, 503)
        agent = await start_agent(**delivering(fake, mode="array"))
        batch = [record(n) for n in range(MAX_WINDOW + 10_000)]
        await post_all(agent, batch, size=1000)
        sender = agent.service.sender
        assert sender is not None
        await eventually(lambda: sender.status().buffered_records >= MAX_WINDOW, what="window")
        await asyncio.sleep(0.3)
        assert sender.status().buffered_records == MAX_WINDOW  # the rest is on disk only
        fake.fail_next(0)
        await eventually(lambda: agent.service.spool.backlog == 0, timeout=60, what="drained")
        assert values(fake.records) == values(batch)
    finally:
        await fake.stop()


async def test_records_that_left_are_not_held_by_the_senders_that_sent_them(
    start_agent: AgentFactory,
):
    """An idle sender holds nothing: with 256 senders each keeping its last 500-record
    batch while it waited, 128,000 records that had left stayed in memory."""
    fake = FakePaigo(accept_arrays=True)
    await fake.start()
    try:
        agent = await start_agent(**delivering(fake, mode="array", batch_max_records=100))
        await post_all(agent, [record(n) for n in range(5000)], size=1000)
        await eventually(lambda: agent.service.spool.backlog == 0, what="delivered")
        await asyncio.sleep(0.5)  # the deliveries file written
        gc.collect()
        assert sum(1 for o in gc.get_objects() if type(o) is Item) < 100  # was 5,000
    finally:
        await fake.stop()


@pytest.mark.parametrize("delivery", ["at-least-once", "effectively-once"])
async def test_a_record_that_cannot_leave_does_not_make_a_restart_send_the_others_again(
    start_agent: AgentFactory, tmp_path: Path, delivery: str
):
    """One pair parked (404) holds the spool's cursor at its first record; the records
    delivered after it are acknowledged beyond the cursor, and the cursor file keeps that:
    after a restart they are neither sent again nor checked (at-least-once sent 1,199 of
    1,200 again before). Effectively-once, the parked records were sent before (and
    marked): they are checked, as any record possibly sent."""
    fake = FakePaigo()
    await fake.start()
    try:
        fake.faults.unknown_customers = {"customer-1"}
        sections = delivering(fake, delivery=delivery, park_retry_s=1.0)
        agent = await start_agent(**sections)
        await post_all(agent, [record(n) for n in range(1400)], size=700)
        await eventually(lambda: len(fake.records) >= 1200, what="the others delivered")
        await asyncio.sleep(0.3)  # the cursor saved
        await agent.close()
        delivered = len(fake.records)
        assert delivered == 1200 and agent.service.spool.backlog == 200

        again = await start_agent(agent_config(tmp_path, **sections))
        await asyncio.sleep(1.0)
        assert len(fake.records) == delivered  # nothing sent a second time
        assert set(fake.read_customers) <= {"customer-1"}  # nor checked (only the parked)
        assert again.service.spool.backlog == 200  # the parked pair's, still waiting
        fake.faults.unknown_customers = set()
        await eventually(lambda: again.service.spool.backlog == 0, timeout=90, what="drained")
        assert len(fake.records) == 1400
    finally:
        await fake.stop()


async def test_retry_after_pauses_every_sender_and_there_is_no_storm(
    start_agent: AgentFactory, paigo: FakePaigo
):
    paigo.fail_next(1, 429, retry_after="2")
    agent = await start_agent(**delivering(paigo, concurrency=16))
    batch = [record(n) for n in range(200)]
    started = time.time()
    await post_all(agent, batch)
    await eventually(lambda: len(paigo.records) >= 200, timeout=30, what="delivery")
    assert paigo.statuses[429] == 1
    [refused] = paigo.failed_at
    # sends already under way when the 429 came may still arrive; none starts in the pause
    during = [t - refused for t in paigo.arrivals if refused + 0.5 < t < refused + 1.5]
    assert during == [], "requests arrived in the middle of the 2 s pause"
    assert time.time() - started >= 2.0


async def test_ordered_records_arrive_in_order_while_others_flow(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await start_agent(**delivering(paigo, ordered_dimensions=["seats"]))
    ordered = [record(n, customerId="acme", dimensionId="seats") for n in range(1000)]
    others = [record(n, customerId=f"other-{n % 5}") for n in range(1000)]
    mixed = [r for pair in zip(ordered, others, strict=True) for r in pair]
    await post_all(agent, mixed)
    await eventually(lambda: len(paigo.records) >= 2000, timeout=60, what="delivery")
    got = [r["recordValue"] for r in paigo.records if r["dimensionId"] == "seats"]
    assert got == [str(n) for n in range(1000)]
    positions = [i for i, r in enumerate(paigo.records) if r["dimensionId"] != "seats"]
    assert positions[len(positions) // 2] < 1500  # the others were not held behind


async def test_invoice_records_are_ordered_per_pair_and_carry_the_flag(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await start_agent(**delivering(paigo))
    batch = [record(n, customerId="acme", dimensionId="storage") for n in range(200)]
    await post_all(agent, batch, size=20, params={"invoice": "true"})
    await eventually(lambda: len(paigo.records) >= 200, what="delivery")
    assert [r.record["recordValue"] for r in paigo.received] == [str(n) for n in range(200)]
    assert all(r.invoice for r in paigo.received)


async def test_invoice_false_never_reaches_paigo_which_would_read_it_as_true(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await start_agent(**delivering(paigo))
    for value in ("false", "no", "0"):
        assert (await agent.post(record(1), params={"invoice": value}))[0] == 202
    await eventually(lambda: len(paigo.records) >= 3, what="delivery")
    assert [r.invoice for r in paigo.received] == [False, False, False]


@pytest.mark.parametrize("delivery", ["at-least-once", "effectively-once"])
async def test_two_genuine_identical_records_are_two_points_at_paigo(
    start_agent: AgentFactory, paigo: FakePaigo, delivery: str
):
    """Paigo's store overwrites a point with the same customer, dimension, metadata and
    millisecond: only the stamp in metadata keeps two real records apart."""
    agent = await start_agent(**delivering(paigo, delivery=delivery))
    same = record(1, metadata={"region": "eu"})
    await post_all(agent, [same, same])
    await eventually(lambda: len(paigo.records) >= 2, what="delivery")
    assert as_sent(paigo.stored()) == [same, same]


async def test_without_the_stamp_two_identical_records_are_one_point(
    start_agent: AgentFactory, paigo: FakePaigo
):
    """What `upstream.stamp_records = false` risks, shown."""
    upstream = delivering(paigo, delivery="at-least-once", stamp_records=False)
    agent = await start_agent(**upstream)
    same = record(1, metadata={"region": "eu"})
    await post_all(agent, [same, same])
    await eventually(lambda: len(paigo.records) >= 2, what="delivery")
    assert paigo.records == [same, same] and paigo.stored() == [same]


async def test_an_expired_token_is_refreshed_once_and_nothing_is_lost(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await start_agent(**delivering(paigo, concurrency=8))
    await post_all(agent, [record(n) for n in range(100)])
    await eventually(lambda: len(paigo.records) >= 100, what="first delivery")
    assert paigo.token_requests == 1
    paigo.expire_tokens()
    await post_all(agent, [record(n) for n in range(100, 300)])
    await eventually(lambda: len(paigo.records) >= 300, what="delivery after expiry")
    assert paigo.token_requests == 2
    assert values(paigo.records) == values([record(n) for n in range(300)])
    assert not deadletter.path_in(agent.service.spool.dir).exists()


async def test_a_poison_customer_is_dead_lettered_and_the_rest_delivered(
    start_agent: AgentFactory, paigo: FakePaigo
):
    paigo.faults.reject_customers = {"customer-3"}
    agent = await start_agent(**delivering(paigo))
    batch = [record(n) for n in range(210)]
    await post_all(agent, batch)
    poison = [r for r in batch if r["customerId"] == "customer-3"]
    good = [r for r in batch if r["customerId"] != "customer-3"]
    await eventually(lambda: len(paigo.records) >= len(good), what="delivery")
    path = deadletter.path_in(agent.service.spool.dir)
    await eventually(lambda: len(list(deadletter.read(path))) == len(poison), what="dead letters")
    letters = list(deadletter.read(path))
    assert values([letter["record"] for letter in letters]) == values(poison)  # type: ignore[misc]
    assert {letter["status"] for letter in letters} == {400}
    assert values(paigo.records) == values(good)
    await eventually(lambda: agent.service.spool.backlog == 0, what="all acknowledged")


async def test_bad_credentials_dead_letter_nothing_and_readyz_says_why(
    start_agent: AgentFactory, paigo: FakePaigo, tmp_path: Path
):
    sections = delivering(paigo)
    sections["upstream"]["client_secret"] = "wrong"
    agent = await start_agent(**sections)
    await post_all(agent, [record(n) for n in range(50)])
    await asyncio.sleep(0.5)
    status, body = await agent.get("/readyz")
    assert status == 503
    assert "credentials" in " ".join(body["reasons"])
    _, state = await agent.get("/status")
    assert state["delivery"]["degraded"] is True
    assert "wrong" not in orjson.dumps(state).decode()  # never the secret
    assert paigo.records == []
    assert not deadletter.path_in(agent.service.spool.dir).exists()
    await agent.close()

    fixed = agent_config(tmp_path, **delivering(paigo))
    again = await start_agent(fixed)
    await eventually(lambda: len(paigo.records) >= 50, what="delivery after the fix")
    assert (await again.get("/readyz"))[0] == 200


async def test_a_404_parks_only_its_pair(start_agent: AgentFactory, paigo: FakePaigo):
    paigo.faults.unknown_customers = {"customer-2"}
    agent = await start_agent(**delivering(paigo, park_retry_s=0.5))
    batch = [record(n) for n in range(70)]
    await post_all(agent, batch)
    good = [r for r in batch if r["customerId"] != "customer-2"]
    await eventually(lambda: len(paigo.records) >= len(good), what="the others")
    _, state = await agent.get("/status")
    assert {"customerId": "customer-2", "dimensionId": "api-calls"} in state["delivery"][
        "parked_pairs"
    ]
    paigo.faults.unknown_customers = set()
    await eventually(lambda: len(paigo.records) >= len(batch), what="the parked pair")
    assert values(paigo.records) == values(batch)


@pytest.mark.parametrize("lanes", ["unordered", "ordered", "arrays"])
async def test_a_parked_pair_with_a_backlog_beyond_the_window_does_not_stop_the_others(
    start_agent: AgentFactory, lanes: str
):
    paigo = FakePaigo(accept_arrays=lanes == "arrays")
    await paigo.start()
    try:
        paigo.faults.unknown_customers = {"lost"}
        settings: dict[str, Any] = {
            "unordered": {},
            "ordered": {"ordered_dimensions": ["api-calls"]},
            "arrays": {"mode": "array", "batch_max_records": 50, "concurrency": 4},
        }[lanes]
        agent = await start_agent(**delivering(paigo, park_retry_s=0.3, **settings))
        window = agent.service.sender._intake._window  # (1,024 or 1,000 at these settings)
        parked = [record(n, customerId="lost") for n in range(3 * window)]
        others = [record(n, customerId=f"found-{n % 6}") for n in range(3 * window)]
        await post_all(agent, [r for pair in zip(parked, others, strict=True) for r in pair])
        await eventually(lambda: len(paigo.records) >= len(others), timeout=60, what="others")
        _, state = await agent.get("/status")
        assert state["delivery"]["records_given_back"] > 0
        assert state["delivery"]["buffered_records"] <= 2 * window

        paigo.faults.unknown_customers = set()
        await eventually(lambda: len(paigo.records) >= 6 * window, timeout=60, what="parked")
        await asyncio.sleep(0.5)  # (nothing more arrives: one read again is not sent twice)
        assert values(paigo.records) == values(parked + others)
        if lanes == "ordered":
            got = [r["recordValue"] for r in paigo.records if r["customerId"] == "lost"]
            assert got == [r["recordValue"] for r in parked]
    finally:
        await paigo.stop()


@pytest.mark.parametrize("accept_arrays", [True, False])
async def test_array_mode_delivers_in_batches_and_isolates_a_poison_record(
    start_agent: AgentFactory, accept_arrays: bool
):
    fake = FakePaigo(accept_arrays=accept_arrays)
    await fake.start()
    try:
        fake.faults.reject_customers = {"customer-1"}
        agent = await start_agent(**delivering(fake, mode="array", batch_max_records=50))
        batch = [record(n) for n in range(700)]
        await post_all(agent, batch)
        good = [r for r in batch if r["customerId"] != "customer-1"]
        await eventually(lambda: len(fake.records) >= len(good), what="delivery")
        path = deadletter.path_in(agent.service.spool.dir)
        await eventually(lambda: len(list(deadletter.read(path))) == 100, what="dead letters")
        assert values(fake.records) == values(good)
        if accept_arrays:  # per-record results: arrays, not one request each
            assert sum(fake.usage_requests.values()) < 100
        else:  # a refused array is halved down to the records at fault
            assert fake.statuses[400] > 100
    finally:
        await fake.stop()


async def test_a_dead_letter_file_that_cannot_be_written_loses_nothing(
    start_agent: AgentFactory, paigo: FakePaigo
):
    paigo.faults.reject_customers = {"customer-3"}
    agent = await start_agent(**delivering(paigo))
    path = deadletter.path_in(agent.service.spool.dir)
    path.mkdir()  # appending to it fails with IsADirectoryError
    batch = [record(n) for n in range(70)]
    await post_all(agent, batch)
    good = [r for r in batch if r["customerId"] != "customer-3"]
    await eventually(lambda: len(paigo.records) >= len(good), what="the others")
    await eventually(lambda: agent.service.spool.backlog == 10, what="the others acknowledged")
    await asyncio.sleep(0.3)  # the sender keeps trying the dead letter, and failing
    assert agent.service.spool.backlog == 10  # the refused ones are kept, not acknowledged
    path.rmdir()
    await eventually(lambda: len(list(deadletter.read(path))) == 10, timeout=30, what="letters")
    await eventually(lambda: agent.service.spool.backlog == 0, what="all acknowledged")


async def test_a_status_that_is_no_records_fault_keeps_everything(
    start_agent: AgentFactory, paigo: FakePaigo
):
    paigo.fail_next(10**9, 405)  # e.g. upstream.url points at the wrong path
    agent = await start_agent(**delivering(paigo))
    await post_all(agent, [record(n) for n in range(30)])
    await eventually(lambda: paigo.statuses[405] >= 3, what="attempts")
    status, body = await agent.get("/readyz")
    assert status == 503
    assert "405" in " ".join(body["reasons"])
    assert not deadletter.path_in(agent.service.spool.dir).exists()
    paigo.fail_next(0)
    await eventually(lambda: len(paigo.records) >= 30, timeout=30, what="delivery after the fix")


async def test_an_unreadable_spool_entry_is_dead_lettered_as_is_and_the_rest_flows(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await start_agent(**delivering(paigo))
    await agent.service.spool.append([b"\x09not an envelope"])
    await post_all(agent, [record(n) for n in range(10)])
    await eventually(lambda: len(paigo.records) >= 10, what="the readable ones")
    path = deadletter.path_in(agent.service.spool.dir)
    await eventually(path.exists, what="the dead letter")
    [letter] = list(deadletter.read(path))
    assert letter["record"] == {"raw": b"\x09not an envelope".hex()}
    assert "unreadable" in str(letter["body"])
    await eventually(lambda: agent.service.spool.backlog == 0, what="all acknowledged")
