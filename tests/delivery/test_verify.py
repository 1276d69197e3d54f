"""Verified delivery: delivered records are read back, the missing sent again, doubles told."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.delivery.auth import TokenManager
from agent.delivery.deadletter import DeadLetterFile
from agent.delivery.uplink import Uplink
from agent.delivery.verify import Verifier, VerifyStatus
from agent.testing.fake_paigo import FakePaigo
from tests.conftest import (
    AgentFactory,
    RunningAgent,
    agent_config,
    as_sent,
    delivering,
    eventually,
    record,
)
from tests.delivery.test_recheck import item_of

FAST = {"mode": "all", "delay_s": 0.3, "max_reads_per_s": 1000.0}


def verifying(paigo: FakePaigo, **verify: Any) -> dict[str, Any]:
    return {**delivering(paigo), "verify": {**FAST, **verify}}


async def verify_status(agent: RunningAgent) -> dict[str, Any]:
    status: dict[str, Any] = (await agent.get("/status"))[1]["verify"]
    return status


async def all_verified(agent: RunningAgent, records: int, timeout: float = 30) -> dict[str, Any]:
    """Waits until the agent has delivered everything and verified every record."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await verify_status(agent)
        if status["unverified"] == 0 and agent.service.spool.backlog == 0:
            break
        assert loop.time() < deadline, status
        await asyncio.sleep(0.05)
    assert status["verified"] >= records, status
    return status


def ids_held(paigo: FakePaigo) -> Counter[str]:
    return Counter(r["metadata"]["usageAgentRecordId"] for r in paigo.stored())


async def test_records_answered_201_and_never_stored_are_repaired_once_each(
    start_agent: AgentFactory,
):
    paigo = FakePaigo(seed=3)
    paigo.faults.store_nothing_after_201 = 0.1
    await paigo.start()
    try:
        agent = await start_agent(**verifying(paigo))
        batch = [record(n) for n in range(500)]
        assert (await agent.post(batch))[0] == 202
        status = await all_verified(agent, 500)
        values = sorted(int(r["recordValue"]) for r in as_sent(paigo.stored()))
        assert values == list(range(500))
        assert set(ids_held(paigo).values()) == {1} and len(ids_held(paigo)) == 500
        assert paigo.lost_after_201 and status["repaired"] == len(paigo.lost_after_201)
        assert status["doubles_detected"] == 0
    finally:
        await paigo.stop()


async def test_a_record_deleted_behind_the_agents_back_is_repaired_a_doubled_one_reported(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await start_agent(**verifying(paigo, delay_s=1.0))
    assert (await agent.post([record(n) for n in range(20)]))[0] == 202
    await eventually(lambda: len(paigo.records) == 20, what="delivery")
    by_value = {r.record["recordValue"]: r for r in paigo.received}
    paigo.delete(by_value["3"])
    paigo.duplicate(by_value["4"])
    status = await all_verified(agent, 18)
    assert status["repaired"] == 1 and len(paigo.records) == 21  # record 3, sent again
    doubled_id = by_value["4"].record["metadata"]["usageAgentRecordId"]
    assert status["doubles_detected"] == 1 and status["doubled_ids"] == [doubled_id]
    assert ids_held(paigo)[doubled_id] == 2  # reported, never touched
    _, metrics = await agent.get("/metrics")
    assert b"usage_agent_repaired_total 1.0" in metrics
    assert b"usage_agent_doubles_detected_total 1.0" in metrics


async def test_failing_reads_back_off_keep_state_and_never_stop_sends(
    start_agent: AgentFactory, paigo: FakePaigo
):
    paigo.faults.reads_fail_next = 10**9
    agent = await start_agent(**verifying(paigo))
    assert (await agent.post([record(n) for n in range(50)]))[0] == 202
    await eventually(lambda: len(paigo.records) == 50, what="delivery")
    assert (await agent.post([record(n) for n in range(50, 100)]))[0] == 202
    await eventually(lambda: len(paigo.records) == 100, what="sends go on")
    await eventually(lambda: len(paigo.reads) >= 2, what="reads tried")
    status = await verify_status(agent)
    assert status["unverified"] == 100 and "503" in status["last_error"]
    assert status["oldest_unverified_age_s"] > 0.3
    reads = len(paigo.reads)
    await asyncio.sleep(0.1)
    assert len(paigo.reads) - reads <= 2  # backing off, not hammering
    paigo.faults.reads_fail_next = 0
    status = await all_verified(agent, 100)
    assert status["repaired"] == 0


async def test_verification_resumes_after_a_restart(start_agent: AgentFactory, paigo: FakePaigo):
    sections = verifying(paigo, delay_s=2.0)
    agent = await start_agent(**sections)
    assert (await agent.post([record(n) for n in range(30)]))[0] == 202
    await eventually(lambda: len(paigo.records) == 30, what="delivery")
    await eventually(lambda: agent.service.spool.backlog == 0, what="acknowledged")
    assert (await verify_status(agent))["unverified"] == 30
    await agent.close()
    again = await start_agent(**sections)
    status = await all_verified(again, 30)
    assert status["repaired"] == 0 and len(paigo.records) == 30


@pytest.mark.parametrize("fraction", [0.5])
async def test_sample_mode_verifies_a_share_chosen_by_id(
    start_agent: AgentFactory, paigo: FakePaigo, fraction: float
):
    agent = await start_agent(**verifying(paigo, mode="sample", sample_fraction=fraction))
    assert (await agent.post([record(n) for n in range(400)]))[0] == 202
    await eventually(lambda: len(paigo.records) == 400, what="delivery")
    await eventually(lambda: agent.service.spool.backlog == 0, what="acknowledged")
    status = await verify_status(agent)
    queued = status["unverified"] + status["verified"]
    assert 120 < queued < 280  # about half, by a hash of the id


async def test_a_missing_record_still_undecided_in_the_usage_spool_is_left_to_its_check(
    tmp_path: Path, paigo: FakePaigo
):
    """A crash between a record's verify entry and its acknowledgement leaves it in both
    spools. The usage spool's effectively-once check decides it (and queues it for
    verification when it leaves); the verifier, finding it missing too, must not send it
    as well: two healers that each find a record missing write it twice."""
    config = agent_config(tmp_path, **verifying(paigo, delay_s=0.0))
    acked: list[int] = []
    async with aiohttp.ClientSession() as session:
        uplink = Uplink(session, config.upstream.url, 5.0)
        verifier = Verifier(
            config,
            uplink,
            TokenManager(config.upstream, session),
            DeadLetterFile(tmp_path / "deadletter.jsonl"),
            mode="all",
            reserve=0,
            ack=acked.extend,
        )
        undecided, decided = item_of(1), item_of(2)  # neither is at Paigo
        verifier.undecided = {undecided.id}.__contains__
        await verifier.start()
        try:
            verifier.note([undecided, decided])
            await eventually(lambda: sorted(acked) == [1, 2], what="acknowledged")
            await eventually(lambda: settled(verifier.snapshot()) == 2, what="both settled")
        finally:
            await verifier.stop()
        uplink.close()
    status = verifier.snapshot()
    assert status.left_to_check == 1 and status.repaired == 1 and status.unverified == 0
    assert [r["recordValue"] for r in paigo.records] == ["2"]  # the decided one, repaired


def settled(status: VerifyStatus) -> int:
    return status.verified + status.left_to_check
