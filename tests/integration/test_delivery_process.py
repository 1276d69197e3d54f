"""Delivery with the agent as a real process: kill -9 mid-send, SIGTERM with a slow upstream."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from agent.testing.fake_paigo import FakePaigo
from tests.conftest import as_sent, record
from tests.integration.agent_process import AgentProcess, usage_agent
from tests.integration.fake_thread import fake_paigo_thread


@pytest.fixture
def paigo() -> Iterator[FakePaigo]:
    with fake_paigo_thread() as fake:
        yield fake


def delivering_to(fake: FakePaigo, **upstream: object) -> dict[str, dict[str, object]]:
    return {
        "upstream": {
            "enabled": True,
            "url": fake.usage_url,
            "token_url": fake.token_url,
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            **upstream,
        },
        "retry": {"initial_backoff_s": 0.02, "max_backoff_s": 0.2},
    }


def wait_until(check, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def multiset(records: list[dict[str, object]]) -> Counter[bytes]:
    return Counter(orjson.dumps(r) for r in as_sent(records))


@pytest.mark.parametrize("delivery", ["at-least-once", "effectively-once"])
def test_kill_9_while_sending_loses_nothing(
    tmp_path: Path, paigo: FakePaigo, agents: list[AgentProcess], delivery: str
):
    concurrency = 8
    sections = delivering_to(paigo, concurrency=concurrency, delivery=delivery)
    agent = AgentProcess(tmp_path, **sections)
    agents.append(agent)
    paigo.faults.delay_s = 0.002
    agent.start()
    accepted = [record(n) for n in range(3000)]
    for start in range(0, 3000, 500):
        assert agent.post(accepted[start : start + 500])[0] == 202
    wait_until(lambda: len(paigo.records) > 300)
    agent.signal(signal.SIGKILL)
    agent.wait()
    at_kill = len(paigo.records)
    assert at_kill < 3000, "delivery finished before the kill: the test proves nothing"
    agent.start()
    wait_until(lambda: multiset(paigo.records) >= multiset(accepted), timeout=60)
    time.sleep(0.3)
    delivered = multiset(paigo.records)
    doubles = delivered - multiset(accepted)
    assert not multiset(accepted) - delivered  # nothing lost
    if delivery == "at-least-once":
        # duplicates only from sends in flight and acks not yet persisted at the kill
        assert sum(doubles.values()) <= concurrency + 200, doubles
    else:  # the ledger turned each of those into a check instead of a blind resend
        assert not doubles
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


def test_kill_9_while_a_parked_pair_has_given_records_back_loses_and_doubles_nothing(
    tmp_path: Path, paigo: FakePaigo, agents: list[AgentProcess]
):
    paigo.faults.unknown_customers = {"lost"}
    agent = AgentProcess(tmp_path, **delivering_to(paigo, concurrency=4, park_retry_s=0.3))
    agents.append(agent)
    agent.start()
    window = 1000  # the intake's, at concurrency 4: beyond two, records go back to the spool
    parked = [record(n, customerId="lost") for n in range(3 * window)]
    others = [record(n, customerId=f"found-{n % 6}") for n in range(3 * window)]
    mixed = [r for pair in zip(parked, others, strict=True) for r in pair]
    for start in range(0, len(mixed), 500):
        assert agent.post(mixed[start : start + 500])[0] == 202
    wait_until(lambda: multiset(paigo.records) >= multiset(others), timeout=60)
    assert agent.get("/status")[1]["delivery"]["records_given_back"] > 0
    table = usage_agent(agent, "status").stdout
    assert "lost/api-calls" in table and "records given back to the spool" in table
    agent.signal(signal.SIGKILL)
    agent.wait()
    paigo.faults.unknown_customers = set()
    agent.start()
    wait_until(lambda: multiset(paigo.records) >= multiset(mixed), timeout=60)
    time.sleep(0.3)
    assert multiset(paigo.records) == multiset(mixed)  # nothing lost, nothing twice
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


def test_sigterm_with_a_backlog_and_a_slow_upstream_exits_within_the_grace(
    tmp_path: Path, paigo: FakePaigo, agents: list[AgentProcess]
):
    agent = AgentProcess(tmp_path, **delivering_to(paigo, concurrency=4))
    agents.append(agent)
    config = agent.config_path.read_text()
    agent.config_path.write_text("shutdown_grace_s = 1.0\n" + config)
    paigo.faults.delay_s = 5.0  # every send hangs longer than the grace
    agent.start()
    accepted = [record(n) for n in range(200)]
    assert agent.post(accepted)[0] == 202
    time.sleep(0.5)
    started = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=10) == 0
    assert time.monotonic() - started < 1.0 + 1.5
    paigo.faults.delay_s = 0.0
    agent.start()
    wait_until(lambda: multiset(paigo.records) >= multiset(accepted))
    assert not multiset(accepted) - multiset(paigo.records)


def test_sigterm_exits_within_the_grace_every_time_with_nothing_lost(
    tmp_path: Path, paigo: FakePaigo, agents: list[AgentProcess]
):
    """The operator's scenario: 2,000 records, each answer 0.2 s late, 32 sends in flight,
    effectively-once; SIGTERM while sending, several times over the same spool."""
    sections = delivering_to(paigo, concurrency=32, delivery="effectively-once")
    sections["retry"] = {}  # the defaults: the scenario as an operator runs it
    agent = AgentProcess(tmp_path, **sections)
    agents.append(agent)
    agent.config_path.write_text("shutdown_grace_s = 2.0\n" + agent.config_path.read_text())
    paigo.faults.delay_s = 0.2
    agent.start()
    accepted = [record(n) for n in range(2000)]
    for start in range(0, 2000, 500):
        assert agent.post(accepted[start : start + 500])[0] == 202
    for _ in range(6):
        time.sleep(0.7)  # sends under way, more waiting at the gate
        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0, agent.log()[-2000:]
        assert time.monotonic() - started < 2.0 + 2.0
        agent.start()
    paigo.faults.delay_s = 0.0
    wait_until(lambda: multiset(paigo.records) >= multiset(accepted), timeout=60)
    time.sleep(0.3)
    assert multiset(paigo.records) == multiset(accepted)  # nothing lost, nothing twice


@pytest.mark.parametrize("status", [401, 403])
def test_a_persistent_refusal_never_makes_the_agent_hammer_paigo(
    tmp_path: Path, paigo: FakePaigo, agents: list[AgentProcess], status: int
):
    sections = delivering_to(paigo, concurrency=32)
    sections["retry"] = {}  # the defaults: 0.5 s first backoff, 60 s at most
    agent = AgentProcess(tmp_path, **sections)
    agents.append(agent)
    paigo.fail_next(10**9, status)
    agent.start()
    assert agent.post([record(n) for n in range(2000)])[0] == 202
    time.sleep(8.0)
    per_second = sorted(paigo.usage_requests.items())
    total = sum(n for _, n in per_second)
    assert total <= 40, per_second  # first round: 4 sends, twice; then one probe a backoff
    assert all(n <= 10 for _, n in per_second[2:]), per_second
    assert paigo.token_requests <= total  # a fresh token per probe at most
    assert agent.get("/readyz")[0] == 503
    assert agent.get("/status")[1]["spool"]["backlog_records"] == 2000
