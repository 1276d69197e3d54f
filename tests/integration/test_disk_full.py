"""The disk-full drill, on a real small tmpfs: the spool fills while Paigo is down, the
agent says so, and once Paigo is back everything drains exactly once with nothing done
by hand."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.testing.fake_paigo import FakePaigo
from tests.conftest import (
    AgentFactory,
    RunningAgent,
    delivering,
    eventually,
    mount_tmpfs,
    record,
)
from tests.integration.agent_process import AgentProcess
from tests.integration.fake_thread import fake_paigo_thread
from tests.integration.test_delivery_process import delivering_to, multiset, wait_until


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB volume: the default reserve (5 % of it) is about 200 KiB."""
    yield from mount_tmpfs(tmp_path / "volume", "4m")


async def fill(agent: RunningAgent, limit: int = 100_000) -> list[dict[str, object]]:
    """Post 50-record batches until the agent answers 507 three times in a row (free space
    is re-read at most every 0.1 s; appends into zero-filled segments take none); the
    records it accepted."""
    accepted: list[dict[str, object]] = []
    refusals = 0
    for start in range(0, limit, 50):
        batch = [record(n, metadata={"pad": "x" * 200}) for n in range(start, start + 50)]
        status, headers, _ = await agent.post(batch)
        if status == 507:
            assert headers["Retry-After"]
            refusals += 1
            if refusals == 3:
                return accepted
            await asyncio.sleep(0.15)
            continue
        assert status == 202
        refusals = 0
        accepted += batch
    raise AssertionError("the volume never filled")


async def test_a_full_disk_drains_by_itself_exactly_once_when_paigo_is_back(
    volume: Path,  # first: it is unmounted after the agent has stopped
    start_agent: AgentFactory,
    paigo: FakePaigo,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO)
    paigo.fail_next(10**9, 503)  # Paigo is down while the disk fills
    sections = delivering(paigo)
    sections["spool"] = {"dir": str(volume / "spool"), "segment_bytes": 256 * 1024}
    sections["spool"]["min_free_bytes"] = -1  # the default: scaled to this small volume
    agent = await start_agent(**sections)
    accepted = await fill(agent)
    assert len(accepted) > 1000

    status, body = await agent.get("/readyz")
    assert status == 503
    assert any(reason.startswith("disk full") for reason in body["reasons"]), body
    _, state = await agent.get("/status")
    assert state["ready"] is False and state["spool"]["full"].startswith("disk full")
    more = [record(n, metadata={"pad": "x" * 200}) for n in range(50)]
    for _ in range(200):  # apps keep trying: each gets 507, the log does not flood
        assert (await agent.post(more))[0] == 507
    refusals = [r for r in caplog.records if "spool is full" in r.getMessage()]
    assert 1 <= len(refusals) <= 3

    paigo.fail_next(0)  # Paigo is back
    await eventually(
        lambda: agent.service.spool.backlog == 0, timeout=120, what="the backlog drained"
    )
    assert multiset(paigo.records) == multiset(accepted)  # exactly once
    await eventually(lambda: not agent.service.spool.status().full, what="room again")
    assert (await agent.get("/readyz"))[0] == 200
    assert (await agent.post(record(7)))[0] == 202  # usage is taken again


async def test_a_rollup_whose_formation_cannot_be_written_is_not_sent_until_it_can(
    volume: Path, start_agent: AgentFactory, caplog: pytest.LogCaptureFixture
):
    """A rollup's formation (its membership) is written to the ledger before its first
    send. When the disk is full at that moment the write fails: the rollup is not sent,
    its records stay in the spool, and once there is room it is written and sent, once,
    with the exact sum."""
    paigo = FakePaigo(dimensions=[{"dimensionId": "bytes", "aggregationMethod": "sum"}])
    await paigo.start()
    try:
        sections = {**delivering(paigo), "rollup": {"dimensions": ["bytes"], "window_s": 5}}
        sections["spool"] = {"dir": str(volume / "spool")}
        agent = await start_agent(**sections)
        # a window ahead of the clock closes window_s + linger from now: 6 s to fill the disk
        ahead = (datetime.now(UTC) + timedelta(seconds=60)).isoformat(timespec="milliseconds")
        posted = [
            record(n, dimensionId="bytes", recordValue="1.5", timestamp=ahead) for n in range(70)
        ]
        assert (await agent.post(posted))[0] == 202
        ballast = fill_up(volume)
        try:
            await eventually(
                lambda: "could not mark records in the ledger" in caplog.text,
                timeout=20,
                what="a formation refused by the full disk",
            )
            await asyncio.sleep(1.0)  # backoffs go by: still nothing is sent
            assert sum(paigo.usage_requests.values()) == 0
            assert agent.service.spool.backlog == 70
        finally:
            ballast.unlink()
        await eventually(lambda: agent.service.spool.backlog == 0, timeout=30, what="delivered")
        held = paigo.stored()
        assert len(held) == 7  # one rollup per customer
        assert all(
            r["recordValue"] == "15.0" and r["metadata"]["usageAgentRecords"] == 10 for r in held
        )
    finally:
        await paigo.stop()


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "tiny", "2m")


def test_sigterm_while_the_disk_is_full_exits_cleanly_and_keeps_the_cursor(
    tiny_volume: Path, tmp_path: Path, agents: list[AgentProcess]
):
    with fake_paigo_thread() as paigo:
        paigo.fail_next(10**9, 503)
        sections = delivering_to(paigo)
        sections["spool"] = {"dir": str(tiny_volume / "spool"), "segment_bytes": 128 * 1024}
        agent = AgentProcess(tmp_path, **sections)
        agents.append(agent)
        agent.start()
        accepted = []
        for start in range(0, 100_000, 50):
            batch = [record(n, metadata={"pad": "x" * 200}) for n in range(start, start + 50)]
            status, _ = agent.post(batch)
            if status == 507:
                break
            accepted += batch
        assert len(accepted) > 500
        ballast = fill_up(tiny_volume)  # something else takes the reserve: ENOSPC for all
        agent.signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
        log = agent.log()
        assert "Traceback" not in log
        assert "could not save the spool cursor" in log  # the last good one is kept
        ballast.unlink()
        paigo.fail_next(0)
        agent.start()
        expected = multiset(accepted)
        wait_until(lambda: multiset(paigo.records) >= expected, timeout=60)
        assert multiset(paigo.records) == expected
        agent.signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0


def fill_up(directory: Path) -> Path:
    """Take every free byte of `directory`'s filesystem; the file that holds them."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast
