"""The metrics an operator alerts on, the alert rules (promtool's own unit tests) and the
Grafana dashboard, which may name only metrics a real agent exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.testing.fake_paigo import FakePaigo
from tests.conftest import AgentFactory, delivering, eventually, record

ROOT = Path(__file__).parents[1]
RULES = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "usage-agent.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "deriv", "max", "and", "or", "histogram_quantile", "le",
    "instance", "job", "reason", "status", "up",
}  # fmt: skip


@needs_promtool
def test_the_alert_rules_load_and_pass_their_promtool_unit_tests():
    for args in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts_test.yaml"]):
        result = subprocess.run(
            [PROMTOOL, *args],  # type: ignore[list-item]
            cwd=RULES,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def referenced_metrics(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expression)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings))
    return {n for n in names if n not in PROMQL_WORDS and not n.startswith("__")}


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((RULES / "alerts.yaml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


async def test_alerts_and_dashboard_name_only_metrics_a_running_agent_exports(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await start_agent(**delivering(paigo), verify={"mode": "all", "delay_s": 60.0})
    assert (await agent.post([record(n) for n in range(5)]))[0] == 202
    assert (await agent.post(record(9, recordValue="1e3")))[0] == 400
    await eventually(lambda: len(paigo.records) == 5)
    status, text = await agent.get("/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(text.decode()))
    exported = {sample.name for family in families for sample in family.samples}
    referenced = set().union(
        *map(referenced_metrics, alert_expressions() + dashboard_expressions())
    )
    assert referenced - exported == set()
    assert "usage_agent_records_delivered_total" in referenced  # the parse found names

    types = {family.name: family.type for family in families}
    for name in ("usage_agent_records_lost_to_damage", "usage_agent_records_accepted"):
        assert types[name] == "counter"
    for name in ("usage_agent_filesystem_free_bytes", "usage_agent_spool_min_free_bytes"):
        assert types[name] == "gauge"
    assert f'usage_agent_build_info{{version="{__version__}"}} 1.0' in text.decode()
    assert "process_resident_memory_bytes" in exported


def test_the_dashboard_covers_what_an_operator_watches():
    exprs = " ".join(dashboard_expressions())
    for metric in (
        "usage_agent_records_accepted_total",
        "usage_agent_records_delivered_total",
        "usage_agent_spool_records",
        "usage_agent_spool_oldest_unsent_age_seconds",
        "usage_agent_upstream_requests_total",
        "usage_agent_spool_fsync_seconds_bucket",
        "usage_agent_spool_records_per_commit_sum",
        "usage_agent_delivery_in_flight",
    ):
        assert metric in exprs
