"""Fuzzing POST /usage: whatever arrives, never a 5xx, and the spool holds exactly the
records of the 2xx answers, in order."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.service import Service
from tests.conftest import RunningAgent, agent_config, record

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
good_records = st.integers(0, 10**6).map(record)
mangled_records = st.builds(
    lambda n, field, value: {**record(n), field: value},
    st.integers(0, 100),
    st.sampled_from(["timestamp", "customerId", "dimensionId", "recordValue", "metadata", "x"]),
    json_values,
)
one_record = st.one_of(good_records, good_records, mangled_records)
bodies = st.one_of(
    one_record.map(orjson.dumps),
    st.lists(one_record, max_size=6).map(orjson.dumps),
    json_values.map(orjson.dumps),
    st.binary(max_size=64),
    st.lists(one_record, min_size=1, max_size=4).map(
        lambda rs: b"\n".join(orjson.dumps(r) for r in rs)
    ),
)
requests = st.tuples(
    bodies,
    st.sampled_from(["application/json", "application/x-ndjson", "text/plain", ""]),
    st.sampled_from([None, "true", "false", "nope"]),
    st.sampled_from([None, "k1", "k2", ""]),
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(requests, min_size=1, max_size=15))
def test_fuzzed_requests_never_get_5xx_and_only_2xx_records_are_stored(
    tmp_path: Path, batch: list[tuple[bytes, str, str | None, str | None]]
):
    asyncio.run(_run(Path(tempfile.mkdtemp(dir=tmp_path)), batch))


async def _run(directory: Path, batch: list[tuple[bytes, str, str | None, str | None]]) -> None:
    service = Service(agent_config(directory, spool={"max_bytes": 1 << 30}))
    await service.start()
    agent = RunningAgent(service)
    expected: list[Any] = []
    seen_keys: dict[str, list[str]] = {}
    try:
        for body, content_type, invoice, key in batch:
            headers = {"Content-Type": content_type} if content_type else {}
            if key is not None:
                headers["Idempotency-Key"] = key
            params = {"invoice": invoice} if invoice is not None else {}
            status, _, answer = await agent.post(None, raw=body, headers=headers, params=params)
            assert status < 500, (status, answer)
            if status != 202:
                continue
            if key and key in seen_keys:
                assert answer["ids"] == seen_keys[key]
                continue
            if key:
                seen_keys[key] = answer["ids"]
            parsed = (
                [orjson.loads(line) for line in body.split(b"\n") if line.strip()]
                if content_type == "application/x-ndjson"
                else orjson.loads(body)
            )
            parsed = parsed if isinstance(parsed, list) else [parsed]
            assert answer["accepted"] == len(parsed)
            expected.extend(as_stored(r) for r in parsed)
        assert await agent.stored() == expected
    finally:
        await agent.close()


def as_stored(record: dict[str, Any]) -> dict[str, Any]:
    """An accepted record as the spool keeps it: its value as text, null metadata left out."""
    kept = {k: v for k, v in record.items() if not (k == "metadata" and v is None)}
    return {**kept, "recordValue": str(record["recordValue"])}
