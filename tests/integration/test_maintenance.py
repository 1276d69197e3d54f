"""`usage-agent deadletter` (also `dlq`) and `spool inspect` as real processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.conftest import record
from tests.integration.agent_process import AgentProcess
from tests.integration.fake_thread import fake_paigo_thread
from tests.integration.test_delivery_process import delivering_to, wait_until
from tests.integration.test_operate import usage_agent


def letters(agent: AgentProcess) -> list[dict[str, object]]:
    listed = usage_agent(agent, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def test_replay_after_the_cause_is_fixed_delivers_the_letters_and_empties_the_file(
    tmp_path: Path, agents: list[AgentProcess]
):
    with fake_paigo_thread() as paigo:
        paigo.faults.reject_customers = {"acme-1"}
        sections = delivering_to(paigo, dimensions="off", delivery="at-least-once")
        agent = AgentProcess(tmp_path, **sections).start()
        agents.append(agent)
        assert agent.post([record(n, customerId=f"acme-{n % 2}") for n in range(10)])[0] == 202
        wait_until(lambda: len(paigo.records) == 5 and len(letters(agent)) == 5)
        first = str(letters(agent)[0]["id"])
        shown = usage_agent(agent, "deadletter", "show", first)
        assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == 400
        assert usage_agent(agent, "deadletter", "show", "no-such-id").returncode == 1

        running = usage_agent(agent, "deadletter", "replay", "--all")
        assert running.returncode == 2 and "the agent is running" in running.stderr
        assert len(letters(agent)) == 5

        paigo.faults.reject_customers = set()  # the cause is fixed
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        replayed = usage_agent(agent, "deadletter", "replay", "--all")
        assert replayed.returncode == 0, replayed.stderr
        assert "replayed 5 dead letters" in replayed.stdout
        assert letters(agent) == []
        agent.start()
        wait_until(lambda: len(paigo.records) == 10)
        assert sorted(int(r["recordValue"]) for r in paigo.stored()) == list(range(10))


def test_purge_refuses_off_a_terminal_without_yes_and_keeps_a_backup(
    tmp_path: Path, agents: list[AgentProcess]
):
    with fake_paigo_thread() as paigo:
        paigo.faults.reject_customers = {"acme-0"}
        agent = AgentProcess(tmp_path, **delivering_to(paigo, dimensions="off")).start()
        agents.append(agent)
        assert agent.post([record(n, customerId="acme-0") for n in range(3)])[0] == 202
        wait_until(lambda: len(letters(agent)) == 3)
        refused = usage_agent(agent, "deadletter", "purge")
        assert refused.returncode == 2 and "--yes" in refused.stderr
        assert len(letters(agent)) == 3
        purged = usage_agent(agent, "deadletter", "purge", "--yes")  # while the agent runs
        assert purged.returncode == 0 and "purged 3 dead letters" in purged.stdout
        assert letters(agent) == []
        [backup] = (tmp_path / "spool").glob("deadletter.jsonl.purged-*")
        assert len(backup.read_text().splitlines()) == 3


def test_list_on_a_spool_directory_that_does_not_exist_says_so_and_exits_2(tmp_path: Path):
    agent = AgentProcess(tmp_path)  # never started: no spool directory yet
    result = usage_agent(agent, "deadletter", "list")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_spool_inspect_reads_a_running_agents_spool_as_a_table_and_json(
    tmp_path: Path, agents: list[AgentProcess]
):
    agent = AgentProcess(tmp_path).start()
    agents.append(agent)
    assert agent.post([record(n) for n in range(7)])[0] == 202
    report = usage_agent(agent, "spool", "inspect", "--json")
    assert report.returncode == 0, report.stderr
    document = json.loads(report.stdout)
    assert (document["records"], document["pending_records"]) == (7, 7)
    assert document["oldest_pending_received"].endswith("Z")
    assert "idempotency" in document["side_spools"]
    table = usage_agent(agent, "spool", "inspect", "--dir", str(tmp_path / "spool"))
    assert table.returncode == 0 and "7 records not yet delivered" in table.stdout
    missing = usage_agent(agent, "spool", "inspect", "--dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not a directory" in missing.stderr
