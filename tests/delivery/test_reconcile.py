"""`usage-agent reconcile` finds records missing from or doubled at Paigo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.cli import main
from agent.delivery import ledger
from agent.testing.fake_paigo import Customer, FakePaigo
from tests.conftest import AgentFactory, delivering, eventually, record
from tests.integration.agent_process import write_config


@pytest.fixture
async def enrolled_later() -> AsyncIterator[FakePaigo]:
    """Every customer enrolled after the records: only ignoreEnrollmentDate=true shows them."""
    later = Customer(enrolled_at=datetime(2026, 11, 26, tzinfo=UTC))
    fake = FakePaigo(customers={f"customer-{n}": later for n in range(7)})
    await fake.start()
    yield fake
    await fake.stop()


async def test_reconcile_reports_a_deleted_and_a_doubled_record_of_enrolled_later_customers(
    start_agent: AgentFactory, enrolled_later: FakePaigo, tmp_path: Path, capsys
):
    paigo = enrolled_later
    sections = delivering(paigo)
    agent = await start_agent(**sections)
    batch = [record(n, timestamp=f"2026-11-25T10:00:{n:02d}Z") for n in range(40)]
    status, _, _ = await agent.post(batch)
    assert status == 202
    spool_dir = agent.service.spool.dir
    await eventually(lambda: len(ledger.read_deliveries(spool_dir).lines) == 40, what="ledger")

    config = tmp_path / "reconcile.toml"
    write_config(config, {"spool": {"dir": str(spool_dir)}, **sections})
    args = ["reconcile", "--config", str(config)]
    window = ["--since", "2026-11-25T09:00:00Z", "--until", "2026-11-25T11:00:00Z"]
    assert await asyncio.to_thread(main, args + window) == 0
    assert "clean" in capsys.readouterr().out
    assert len(paigo.reads) == 2 * 7  # two hours, read hour by hour, for each customer

    by_value = {r.record["recordValue"]: r for r in paigo.received}
    deleted, doubled = by_value["5"], by_value["7"]
    paigo.delete(deleted)
    paigo.duplicate(doubled)
    assert await asyncio.to_thread(main, args + window) == 1
    out = capsys.readouterr().out
    deleted_id = deleted.record["metadata"]["usageAgentRecordId"]
    doubled_id = doubled.record["metadata"]["usageAgentRecordId"]
    assert f'"k":"{deleted_id}"' in out and "MISSING" in out
    assert f"DOUBLED {doubled_id} x2" in out
    assert "1 missing, 1 doubled" in out

    narrow = ["--since", "2026-11-25T10:00:10Z", "--until", "2026-11-25T10:00:20Z"]
    assert await asyncio.to_thread(main, args + narrow) == 0  # both lie outside this window
    long_chunks = {**sections, "upstream": {**sections["upstream"], "read_chunk_s": 1e9}}
    write_config(config, {"spool": {"dir": str(spool_dir)}, **long_chunks})
    to_the_future = ["--since", "2026-11-25T09:00:00Z", "--until", "2999-01-01T00:00:00Z"]
    assert await asyncio.to_thread(main, args + to_the_future) == 1
    out = capsys.readouterr().out
    assert "until 2999-01-01T00:00:00Z is not in the past: reading up to" in out
    assert "1 missing, 1 doubled" in out
    assert paigo.refused_reads == []


async def test_a_torn_line_in_the_deliveries_file_is_skipped_and_named(
    start_agent: AgentFactory, paigo: FakePaigo, tmp_path: Path, capsys
):
    sections = delivering(paigo)
    agent = await start_agent(**sections)
    batch = [record(n, timestamp=f"2026-11-25T10:00:{n:02d}Z") for n in range(10)]
    assert (await agent.post(batch))[0] == 202
    spool_dir = agent.service.spool.dir
    await eventually(lambda: len(ledger.read_deliveries(spool_dir).lines) == 10, what="ledger")
    deliveries = spool_dir / ledger.DELIVERED
    lines = deliveries.read_bytes().splitlines(keepends=True)
    deliveries.write_bytes(b"".join(lines[:3]) + lines[3][:20] + b"\n" + b"".join(lines[4:]))

    config = tmp_path / "reconcile.toml"
    write_config(config, {"spool": {"dir": str(spool_dir)}, **sections})
    window = ["--since", "2026-11-25T09:00:00Z", "--until", "2026-11-25T11:00:00Z"]
    assert await asyncio.to_thread(main, ["reconcile", "--config", str(config), *window]) == 0
    out = capsys.readouterr().out
    assert f"skipped a torn line of the deliveries file: {deliveries}:4" in out
    assert "checked 9 delivered records" in out  # the other nine, all at Paigo: clean
