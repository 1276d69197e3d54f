"""The OpenAPI document is kept true: its routes and statuses are the app's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import agent.ingest
from tests.conftest import AgentFactory

DOC = json.loads((Path(agent.ingest.__file__).parent / "openapi.json").read_text())


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
