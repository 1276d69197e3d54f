"""Effectively-once: with outcome-unknown faults and kill -9, Paigo ends with every record once.

The stand-in stores a record and then drops the connection, or stores it and answers 504,
or answers 504 without storing it. In "effectively-once" mode the agent checks Paigo's read
API before any resend; in "at-least-once" mode it resends blindly, and the doubles show
what the check prevents. Every customer enrolled after the records' timestamps, so a read
that does not ask for `ignoreEnrollmentDate=true` sees nothing and resends.

(Counts are of writes the stand-in answered 201, `FakePaigo.records`: Paigo's store would
overwrite a byte-identical resend, which would hide a double from a read.)
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.testing.fake_paigo import Customer, FakePaigo
from tests.conftest import record
from tests.integration.agent_process import AgentProcess
from tests.integration.fake_thread import fake_paigo_thread
from tests.integration.test_delivery_process import delivering_to, wait_until

ENROLLED_AFTER_THE_RECORDS = {
    f"customer-{n}": Customer(enrolled_at=datetime(2026, 11, 26, tzinfo=UTC)) for n in range(7)
}


@pytest.fixture
def faulty_paigo() -> Iterator[FakePaigo]:
    with fake_paigo_thread(seed=5, customers=ENROLLED_AFTER_THE_RECORDS) as fake:
        fake.faults.store_then_drop_rate = 0.1
        fake.faults.store_then_504_rate = 0.1
        fake.faults.store_then_504_delay_s = 0.01
        fake.faults.lose_504_rate = 0.05
        yield fake


def counts(fake: FakePaigo) -> Counter[str]:
    return Counter(str(r["recordValue"]) for r in fake.records)


def start(
    tmp_path: Path, fake: FakePaigo, delivery: str, records: int, timestamp: str = ""
) -> AgentProcess:
    """An agent delivering to `fake`, holding `records` accepted records."""
    sections = delivering_to(fake, delivery=delivery, unknown_settle_s=0.05, concurrency=16)
    agent = AgentProcess(tmp_path, **sections).start()
    accepted = [record(n, timestamp=timestamp or record(n)["timestamp"]) for n in range(records)]
    for first in range(0, records, 500):
        assert agent.post(accepted[first : first + 500])[0] == 202
    return agent


def test_every_record_arrives_exactly_once_through_faults_and_three_kills(
    tmp_path: Path, faulty_paigo: FakePaigo, agents: list[AgentProcess]
):
    agent = start(tmp_path, faulty_paigo, "effectively-once", 5000)
    agents.append(agent)
    prevented = 0
    for kill_at in (800, 2000, 3200):
        wait_until(lambda at=kill_at: len(faulty_paigo.records) >= at, timeout=60)  # type: ignore[misc]
        prevented += agent.get("/status")[1]["delivery"]["duplicates_prevented"]
        agent.signal(signal.SIGKILL)
        agent.wait()
        agent.start()
    wait_until(lambda: len(counts(faulty_paigo)) >= 5000, timeout=120)
    time.sleep(0.5)
    prevented += agent.get("/status")[1]["delivery"]["duplicates_prevented"]
    seen = counts(faulty_paigo)
    assert set(seen) == {str(n) for n in range(5000)}  # 0 missing
    assert [v for v, n in seen.items() if n > 1] == []  # 0 doubled
    assert prevented > 50  # the faults happened, and the checks caught them
    _, metrics = agent.get("/metrics")
    assert b"usage_agent_duplicates_prevented_total" in metrics


def test_records_of_now_are_checked_without_a_read_that_ends_in_the_future(
    tmp_path: Path, faulty_paigo: FakePaigo, agents: list[AgentProcess]
):
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    agent = start(tmp_path, faulty_paigo, "effectively-once", 500, timestamp=now)
    agents.append(agent)
    wait_until(lambda: agent.get("/status")[1]["spool"]["backlog_records"] == 0, timeout=60)
    seen = counts(faulty_paigo)
    assert set(seen) == {str(n) for n in range(500)}
    assert [v for v, n in seen.items() if n > 1] == []
    assert faulty_paigo.reads  # unknown outcomes were checked ...
    assert faulty_paigo.refused_reads == []  # ... and never with an end after now


def test_at_least_once_mode_shows_the_doubles_the_check_prevents(
    tmp_path: Path, faulty_paigo: FakePaigo, agents: list[AgentProcess]
):
    agent = start(tmp_path, faulty_paigo, "at-least-once", 1000)
    agents.append(agent)
    wait_until(lambda: len(counts(faulty_paigo)) >= 1000, timeout=60)
    doubled = [v for v, n in counts(faulty_paigo).items() if n > 1]
    assert len(doubled) > 50
