"""`usage-agent health`, `status` and `send` as real processes against a real agent."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from tests.conftest import record
from tests.integration.agent_process import AgentProcess, usage_agent


def test_health_answers_0_alive_and_ready_and_2_when_the_agent_is_not_there(
    tmp_path: Path, agents: list[AgentProcess]
):
    agent = AgentProcess(tmp_path)
    down = usage_agent(agent, "health")
    assert down.returncode == 2 and "no answer from the agent" in down.stderr
    agents.append(agent.start())
    assert usage_agent(agent, "health").returncode == 0
    ready = usage_agent(agent, "health", "--ready")
    assert ready.returncode == 0 and json.loads(ready.stdout) == {"status": "ready"}


def test_health_ready_answers_1_when_delivery_is_misconfigured(
    tmp_path: Path, agents: list[AgentProcess]
):
    agent = AgentProcess(
        tmp_path,
        upstream={"enabled": True, "url": "http://127.0.0.1:9/usage", "client_id": "x"},
        retry={"initial_backoff_s": 0.01, "max_backoff_s": 0.05},
    )
    agents.append(agent.start())
    assert agent.post(record(1))[0] == 202  # a send: no client secret, a configuration problem
    for _ in range(100):
        result = usage_agent(agent, "health", "--ready")
        if result.returncode == 1:
            break
    assert result.returncode == 1 and "delivery degraded" in result.stdout
    assert usage_agent(agent, "health").returncode == 0  # alive all the same


def test_status_prints_a_table_and_json_and_send_posts_records(
    tmp_path: Path, agents: list[AgentProcess]
):
    agent = AgentProcess(tmp_path)
    agents.append(agent.start())
    ndjson = b"\n".join(orjson.dumps(record(n)) for n in range(3))
    sent = usage_agent(agent, "send", "-", stdin=ndjson)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["accepted"] == 3
    table = usage_agent(agent, "status")
    assert table.returncode == 0
    assert "backlog" in table.stdout and "3 records" in table.stdout
    assert "off (upstream.enabled = false)" in table.stdout
    document = json.loads(usage_agent(agent, "status", "--json").stdout)
    assert document["spool"]["backlog_records"] == 3


def test_send_says_why_a_record_is_refused_and_exits_1(tmp_path: Path, agents: list[AgentProcess]):
    agent = AgentProcess(tmp_path)
    agents.append(agent.start())
    bad = usage_agent(agent, "send", stdin=orjson.dumps(record(1, recordValue="5.")))
    assert bad.returncode == 1
    assert "record 0, recordValue" in bad.stderr and 'write "5"' in bad.stderr
    not_json = usage_agent(agent, "send", stdin=b"{nope")
    assert not_json.returncode == 1 and "not JSON or NDJSON" in not_json.stderr


SECRET = "qx-distinctive-secret-5e9a"
TOKEN = "qx-distinctive-ingest-token-77c1"


def test_no_sub_command_prints_a_secret_or_the_ingest_token(
    tmp_path: Path, agents: list[AgentProcess]
):
    token_file = tmp_path / "ingest-token"
    token_file.write_text(TOKEN + "\n")
    agent = AgentProcess(
        tmp_path,
        ingest={"token_file": str(token_file)},
        upstream={"client_secret": SECRET, "url": f"https://u:{SECRET}@usage.example.com/usage"},
    )
    agents.append(agent.start())
    outputs = []
    for args in (
        ("check-config",),
        ("check-config", "--json"),
        ("health",),
        ("health", "--ready"),
        ("status",),
        ("status", "--json"),
        ("spool", "inspect"),
        ("spool", "inspect", "--json"),
        ("dlq", "list"),
    ):
        result = usage_agent(agent, *args)
        assert result.returncode == 0, (args, result.stderr)
        outputs.append(result.stdout + result.stderr)
    sent = usage_agent(agent, "send", stdin=orjson.dumps(record(1)))
    assert sent.returncode == 0, sent.stderr  # /usage and /status took the token
    outputs += [sent.stdout + sent.stderr, agent.log()]
    for text in outputs:
        assert SECRET not in text and TOKEN not in text


def test_a_spool_directory_that_cannot_be_made_exits_2_with_one_line(tmp_path: Path):
    (tmp_path / "a-file").write_text("")
    agent = AgentProcess(tmp_path, spool={"dir": str(tmp_path / "a-file" / "spool")})
    result = usage_agent(agent, "run")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    assert len([line for line in lines if line.startswith("usage-agent:")]) == 1
    assert "a-file" in result.stderr
