"""Verified delivery with the agent as a real process: losses after Paigo's 201, kill -9."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import record
from tests.integration.agent_process import AgentProcess
from tests.integration.fake_thread import fake_paigo_thread
from tests.integration.test_delivery_process import delivering_to, wait_until

RECORDS = 3000


def test_records_lost_after_201_are_repaired_through_two_kills_and_held_once(
    tmp_path: Path, agents: list[AgentProcess]
):
    """5 % of the records Paigo answers 201 are never stored. The agent is killed twice
    while it delivers; once verification has run, every accepted record is at Paigo
    exactly once, and each record was written once more for each time it was lost: no
    loss left unhealed, none healed twice. Most losses are repaired by verification; a
    record in flight at a kill is still in the usage spool, and the effectively-once check
    after the restart heals it instead (the verifier leaves it to that check). Without
    kills, repairs equal losses one for one: tests/delivery/test_verify.py."""
    with fake_paigo_thread(seed=11) as paigo:
        paigo.faults.store_nothing_after_201 = 0.05
        paigo.faults.delay_s = 0.02  # at most 8 sends in flight: the run lasts some seconds
        sections = {
            **delivering_to(paigo, concurrency=8),
            "verify": {"mode": "all", "delay_s": 1.0, "max_reads_per_s": 1000.0},
        }
        agent = AgentProcess(tmp_path, **sections).start()
        agents.append(agent)
        for first in range(0, RECORDS, 500):
            batch = [record(n) for n in range(first, first + 500)]
            assert agent.post(batch)[0] == 202
        for kill_at in (RECORDS // 3, 2 * RECORDS // 3):
            wait_until(lambda at=kill_at: len(paigo.records) >= at, timeout=60)  # type: ignore[misc]
            agent.signal(signal.SIGKILL)
            agent.wait()
            agent.start()
        wait_until(lambda: verified(agent), timeout=120)
        status = agent.get("/status")[1]["verify"]
        held = Counter(int(r["recordValue"]) for r in paigo.stored())
        assert set(held) == set(range(RECORDS)) and set(held.values()) == {1}
        lost = Counter(stamp(r.record) for r in paigo.lost_after_201)
        assert lost.total() > 50  # the fault struck
        writes = Counter(stamp(r) for r in paigo.records)
        assert writes == Counter({rid: 1 + lost[rid] for rid in writes})
        repairs_logged = agent.log().count("was missing at Paigo after its 2xx: sent again")
        assert lost.total() / 2 <= repairs_logged <= lost.total()
        assert status["doubles_detected"] == 0


def stamp(record: dict[str, Any]) -> str:
    return str(record["metadata"]["usageAgentRecordId"])


def verified(agent: AgentProcess) -> bool:
    status = agent.get("/status")[1]
    return status["spool"]["backlog_records"] == 0 and status["verify"]["unverified"] == 0
