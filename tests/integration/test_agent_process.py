"""The agent as a real process: signals, kill -9, restarts, and a second owner."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

from agent.config import SpoolConfig
from agent.records import decode_envelope
from agent.spool import Spool
from tests.conftest import record
from tests.integration.agent_process import AgentProcess


def spooled(directory: Path) -> list[tuple[str, dict[str, object]]]:
    """(key, record) of every record in the spool directory, read by a fresh Spool."""

    async def read() -> list[tuple[str, dict[str, object]]]:
        spool = Spool(SpoolConfig(dir=str(directory), min_free_bytes=0))
        spool.open()
        await spool.start()
        found = []
        while entries := await spool.read(10_000):
            for entry in entries:
                envelope = decode_envelope(entry.payload)
                found.append((envelope.key, orjson.loads(envelope.record_json)))
        await spool.close()
        return found

    return asyncio.run(read())


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_an_idempotency_key_is_remembered_across_a_restart(
    tmp_path: Path, agents: list[AgentProcess], how: int
):
    agent = AgentProcess(tmp_path)
    agents.append(agent)
    agent.start()
    first = agent.post([record(1), record(2)], {"Idempotency-Key": "batch-7"})
    assert first[0] == 202
    agent.signal(how)
    agent.wait()
    agent.start()
    again = agent.post([record(1), record(2)], {"Idempotency-Key": "batch-7"})
    assert again == first
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    assert [key for key, _ in spooled(tmp_path / "spool")] == ["batch-7:0", "batch-7:1"]


def test_sigterm_exits_0_and_keeps_the_backlog(tmp_path: Path, agents: list[AgentProcess]):
    agent = AgentProcess(tmp_path)
    agents.append(agent)
    agent.start()
    for n in range(20):
        assert agent.post(record(n))[0] == 202
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=15) == 0
    assert not (tmp_path / "ingest.sock").exists()
    assert [r for _, r in spooled(tmp_path / "spool")] == [record(n) for n in range(20)]


def test_every_202_survives_kill_9_under_load(tmp_path: Path, agents: list[AgentProcess]):
    agent = AgentProcess(tmp_path)
    agents.append(agent)
    agent.start()
    accepted: list[dict[str, object]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        n = 0
        while not stop.is_set():
            body = record(worker * 1_000_000 + n)
            try:
                status, _ = agent.post(body)
            except OSError:
                return
            if status == 202:
                with lock:
                    accepted.append(body)
            n += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    agent.signal(signal.SIGKILL)
    agent.wait()
    stop.set()
    for thread in threads:
        thread.join()
    stored = [r for _, r in spooled(tmp_path / "spool")]
    assert len(accepted) > 100
    missing = [r for r in accepted if r not in stored]
    assert missing == []
    assert len(stored) == len({orjson.dumps(r) for r in stored})  # nothing doubled


def test_a_second_agent_on_the_same_spool_exits_with_a_clear_message(
    tmp_path: Path, agents: list[AgentProcess]
):
    first = AgentProcess(tmp_path)
    agents.append(first)
    first.start()
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = AgentProcess(second_dir, spool={"dir": str(tmp_path / "spool")})
    agents.append(second)
    second.start(wait=False)
    assert second.wait() == 2  # a start-up failure: systemd does not restart-loop on it
    assert "cannot start" in second.log() and "in use by another usage-agent" in second.log()
    assert "Traceback" not in second.log()
    assert first.post(record(1))[0] == 202


def test_a_configuration_error_names_the_key_and_exits_2(tmp_path: Path):
    agent = AgentProcess(tmp_path, spool={"fsync": "sometimes"})
    agent.start(wait=False)
    assert agent.wait() == 2
    assert "spool.fsync" in agent.log()
