"""SIGHUP: the agent re-reads its configuration and takes what can change without a
restart (log level, ingest token, Paigo credentials); everything else waits, and a broken
file changes nothing. It never dies of the signal."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.conftest import record
from tests.integration.agent_process import AgentProcess, write_config
from tests.integration.fake_thread import fake_paigo_thread
from tests.integration.test_delivery_process import delivering_to, wait_until


def hang_up(agent: AgentProcess, count: int) -> None:
    agent.signal(signal.SIGHUP)
    wait_until(lambda: agent.log().count("reloaded") + agent.log().count("not reloaded") >= count)


def test_sighup_takes_a_new_token_and_new_credentials_and_survives_a_broken_file(
    tmp_path: Path, agents: list[AgentProcess]
):
    token_file = tmp_path / "ingest-token"
    token_file.write_text("first-token\n")
    with fake_paigo_thread() as paigo:
        sections = delivering_to(paigo, dimensions="off")
        sections["ingest"] = {"token_file": str(token_file)}
        agent = AgentProcess(tmp_path, **sections).start()
        agents.append(agent)
        bearer = {"Authorization": "Bearer first-token"}
        assert agent.post(record(1), bearer)[0] == 202
        wait_until(lambda: len(paigo.records) == 1)

        paigo.client_secret = "rotated-secret"  # Paigo's secret is rotated ...
        paigo.expire_tokens()
        assert agent.post(record(2), bearer)[0] == 202
        time.sleep(1.0)
        assert len(paigo.records) == 1  # ... so delivery waits, the record kept

        token_file.write_text("second-token\n")
        config = agent.config_path.read_text()
        agent.config_path.write_text(config.replace(paigo_secret(config), "rotated-secret"))
        hang_up(agent, 1)
        wait_until(lambda: len(paigo.records) == 2)  # the new secret is used
        assert agent.post(record(3), bearer)[0] == 401
        assert agent.post(record(3), {"Authorization": "Bearer second-token"})[0] == 202

        agent.config_path.write_text("[log\nbroken")
        hang_up(agent, 2)
        assert "the configuration was not reloaded" in agent.log()
        assert agent.proc is not None and agent.proc.poll() is None  # alive after both SIGHUPs
        assert agent.post(record(4), {"Authorization": "Bearer second-token"})[0] == 202


def paigo_secret(config: str) -> str:
    [line] = [line for line in config.splitlines() if line.startswith("client_secret")]
    return line.split("=", 1)[1].strip().strip('"')


def test_a_changed_key_that_needs_a_restart_is_named(tmp_path: Path, agents: list[AgentProcess]):
    agent = AgentProcess(tmp_path).start()
    agents.append(agent)
    write_config(
        agent.config_path,
        {
            "spool": {"dir": str(tmp_path / "spool"), "min_free_bytes": 0, "max_bytes": 10**9},
            "ingest": {
                "listen": f"127.0.0.1:{agent.port}",
                "unix_socket": str(tmp_path / "ingest.sock"),
            },
            "upstream": {"enabled": False},
            "log": {"level": "WARNING"},
        },
    )
    hang_up(agent, 1)
    assert "needs a restart: spool.max_bytes" in agent.log()
    assert agent.post(record(1))[0] == 202
