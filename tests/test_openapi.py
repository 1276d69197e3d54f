"""The OpenAPI document is kept true: its routes and statuses are the app's."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import agent.ingest
from tests.conftest import AgentFactory
from tests.integration.agent_process import AgentProcess

DOC_PATH = Path(agent.ingest.__file__).parent / "openapi.json"
DOC = json.loads(DOC_PATH.read_text())


async def test_the_document_lists_exactly_the_apps_routes(start_agent: AgentFactory):
    running = await start_agent()
    assert running.service.state is not None
    routes = {
        (path, method.lower())
        for path, methods in agent.ingest.routes(running.service.state).items()
        for method in methods
    }
    documented = {(path, method) for path, item in DOC["paths"].items() for method in item}
    assert routes == documented


def test_every_status_in_the_ingest_table_is_documented():
    table = agent.ingest.__doc__ or ""
    statuses = set(re.findall(r"^\| (\d{3}) ", table, re.MULTILINE))
    assert statuses == set(DOC["paths"]["/usage"]["post"]["responses"])


def test_the_record_schema_names_the_fields_the_validator_knows():
    from agent.records import KNOWN_FIELDS, REQUIRED_FIELDS

    schema = DOC["components"]["schemas"]["Record"]
    assert set(schema["properties"]) == set(KNOWN_FIELDS)
    assert set(schema["required"]) == set(REQUIRED_FIELDS)


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(tmp_path: Path):
    """A schema-driven fuzzer against the live agent, bounded in time: every answer is one
    the document lists, in the shape it gives, and none is a 5xx."""
    process = AgentProcess(tmp_path, spool={"fsync": "off"})
    process.start()
    try:
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                str(DOC_PATH),
                "--url",
                process.url,
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_schema_conformance",
                "--max-time",
                "20",
                "--seed",
                "1",
                "--generation-database",
                "none",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            check=False,
        )
    finally:
        process.signal(signal.SIGTERM)
        process.wait()
    assert result.returncode == 0, result.stdout[-4000:]
    assert re.search(r"\d+ generated, \d+ passed", result.stdout), result.stdout[-2000:]
