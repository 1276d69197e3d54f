"""The ingest API over real sockets (loopback TCP and a unix socket) against a running agent."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import orjson
import pytest

from agent.errors import AgentError
from agent.records import decode_envelope
from agent.service import Service
from agent.testing.fake_paigo import FakePaigo
from tests.conftest import AgentFactory, agent_config, delivering, eventually, record

pytestmark = pytest.mark.asyncio


async def test_one_record_is_accepted_with_its_id_after_it_is_durable(start_agent: AgentFactory):
    agent = await start_agent()
    status, _, body = await agent.post(record(1))
    assert status == 202
    assert body["accepted"] == 1
    assert body["ids"] == agent.service.spool.record_ids(range(1, 2))
    assert agent.service.spool.stats.fsyncs >= 1
    assert await agent.stored() == [record(1)]


async def test_an_array_and_ndjson_are_accepted_over_tcp_and_the_unix_socket(
    start_agent: AgentFactory,
):
    agent = await start_agent()
    status, _, body = await agent.post([record(1), record(2)], via_unix=True)
    assert (status, body["accepted"]) == (202, 2)
    ndjson = b"\n".join(orjson.dumps(record(n)) for n in (3, 4)) + b"\n\n"
    status, _, body = await agent.post(
        None, raw=ndjson, headers={"Content-Type": "application/x-ndjson"}
    )
    assert (status, body["accepted"]) == (202, 2)
    assert await agent.stored() == [record(n) for n in (1, 2, 3, 4)]


async def test_the_stored_record_is_the_one_sent_field_for_field(start_agent: AgentFactory):
    agent = await start_agent()
    sent = {"recordValue": 12, **record(5, metadata={"b": 1, "a": "x"})}
    sent["recordValue"] = 12
    await agent.post(sent)
    [stored] = await agent.stored()
    assert list(stored) == list(sent)
    assert stored == {**sent, "recordValue": "12"}


async def test_one_bad_record_refuses_the_whole_request_and_lists_every_problem(
    start_agent: AgentFactory,
):
    agent = await start_agent()
    batch = [record(1), record(2, recordValue=2.5), record(3), record(4, customerID="x")]
    status, _, body = await agent.post(batch)
    assert status == 400
    assert "nothing was stored" in body["error"]
    assert {(e["index"], e["field"]) for e in body["errors"]} == {
        (1, "recordValue"),
        (3, "customerID"),
    }
    assert await agent.stored() == []


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"timestamp": ', "line 1 column"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 5000 + b"]" * 5000, "malformed JSON"),
        (b"", "malformed JSON"),
        (b"[]", "no records"),
        (b'"a string"', "must be a JSON object"),
    ],
)
async def test_malformed_bodies_get_a_clear_400_and_store_nothing(
    start_agent: AgentFactory, raw: bytes, words: str
):
    agent = await start_agent()
    status, _, body = await agent.post(None, raw=raw)
    assert status == 400
    assert words in orjson.dumps(body).decode()
    assert await agent.stored() == []


async def test_a_bad_ndjson_line_is_named(start_agent: AgentFactory):
    agent = await start_agent()
    raw = orjson.dumps(record(1)) + b"\n{oops\n"
    status, _, body = await agent.post(
        None, raw=raw, headers={"Content-Type": "application/x-ndjson"}
    )
    assert status == 400
    assert "line 2" in body["error"]


async def test_other_content_types_get_415(start_agent: AgentFactory):
    agent = await start_agent()
    status, _, body = await agent.post(record(1), headers={"Content-Type": "text/plain"})
    assert status == 415
    assert "application/json" in body["error"]


async def test_a_json_body_sent_as_a_form_as_curl_d_does_is_taken(start_agent: AgentFactory):
    agent = await start_agent()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, _ = await agent.post(record(1), headers=form)
    assert status == 202
    status, _, body = await agent.post(None, raw=b"customerId=c&recordValue=1", headers=form)
    assert status == 415
    assert "send Content-Type: application/json" in body["error"]
    assert len(await agent.stored()) == 1


async def test_other_methods_get_405(start_agent: AgentFactory):
    agent = await start_agent()
    async with agent.http.put(f"{agent.url}/usage", data=b"{}") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"


async def test_oversized_bodies_and_too_many_records_get_413(start_agent: AgentFactory):
    agent = await start_agent(ingest={"max_request_bytes": 2000, "max_records_per_request": 3})
    status, _, body = await agent.post([record(n) for n in range(30)])
    assert status == 413
    assert "2000 bytes" in body["error"]

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(30):
            yield orjson.dumps(record(1)) + b"\n"

    status, _, _ = await agent.post(
        None, data=chunks(), headers={"Content-Type": "application/x-ndjson"}
    )
    assert status == 413
    status, _, body = await agent.post([record(n) for n in range(4)])
    assert status == 413
    assert "at most 3" in body["error"]
    assert await agent.stored() == []


async def test_a_full_spool_answers_507_with_retry_after_and_keeps_what_it_had(
    start_agent: AgentFactory,
):
    agent = await start_agent(spool={"max_bytes": 4096, "segment_bytes": 4096})
    accepted = []
    for n in range(100):
        status, headers, body = await agent.post(record(n))
        if status != 202:
            break
        accepted.append(record(n))
    assert status == 507
    assert headers["Retry-After"] == "5"
    assert "max_bytes" in body["error"]
    assert len(accepted) > 5
    assert await agent.stored() == accepted


async def test_a_shutting_down_agent_answers_503_with_retry_after(start_agent: AgentFactory):
    agent = await start_agent()
    state = agent.service.state
    assert state is not None
    state.shutting_down = True
    status, headers, _ = await agent.post(record(1))
    assert status == 503
    assert "Retry-After" in headers
    status, body = await agent.get("/readyz")
    assert status == 503
    assert body["reasons"] == ["shutting down"]
    state.shutting_down = False


async def test_a_configured_token_is_required_and_compared(
    start_agent: AgentFactory, tmp_path: Path
):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    agent = await start_agent(ingest={"token_file": str(token_file)})
    status, headers, _ = await agent.post(record(1))
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = await agent.post(record(1), headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, _, _ = await agent.post(record(1), headers={"Authorization": "Bearer s3cret-token"})
    assert status == 202
    assert len(await agent.stored()) == 1


async def test_status_and_metrics_need_the_token_and_the_probes_do_not(
    start_agent: AgentFactory, tmp_path: Path
):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    agent = await start_agent(ingest={"token_file": str(token_file)})
    for path in ("/status", "/metrics"):
        assert (await agent.get(path))[0] == 401
        headers = {"Authorization": "Bearer s3cret-token"}
        async with agent.http.get(f"{agent.url}{path}", headers=headers) as resp:
            assert resp.status == 200
    for path in ("/healthz", "/readyz"):
        assert (await agent.get(path))[0] == 200


async def test_an_apps_paigo_token_is_not_refused_when_no_token_is_configured(
    start_agent: AgentFactory,
):
    agent = await start_agent()
    status, _, _ = await agent.post(record(1), headers={"Authorization": "Bearer paigo-jwt"})
    assert status == 202


async def test_only_invoice_true_in_any_case_is_carried_and_any_other_value_is_false(
    start_agent: AgentFactory,
):
    """Paigo reads any invoice value, `false` included, as true: only a true one may reach it."""
    agent = await start_agent()
    await agent.post([record(1), record(2)], params={"invoice": "true"})
    for value in ("false", "yes", "", "0", "FALSE"):
        status, _, _ = await agent.post(record(3), params={"invoice": value})
        assert status == 202
    await agent.post(record(4), params={"invoice": "TRUE"})
    entries = await agent.service.spool.read(10)
    flags = [decode_envelope(e.payload).invoice for e in entries]
    assert flags == [True, True, False, False, False, False, False, True]


async def test_a_repeated_idempotency_key_gets_the_first_answer_and_stores_nothing(
    start_agent: AgentFactory,
):
    agent = await start_agent()
    headers = {"Idempotency-Key": "order-42"}
    first = await agent.post([record(1), record(2)], headers=dict(headers))
    again = await agent.post([record(1), record(2)], headers=dict(headers))
    assert first[0] == again[0] == 202
    assert first[2] == again[2]
    assert again[1]["Idempotent-Replayed"] == "true"
    entries = await agent.service.spool.read(10)
    assert [decode_envelope(e.payload).key for e in entries] == ["order-42:0", "order-42:1"]


async def test_concurrent_requests_with_one_key_store_once(start_agent: AgentFactory):
    agent = await start_agent()
    answers = await asyncio.gather(
        *(agent.post(record(1), headers={"Idempotency-Key": "same"}) for _ in range(10))
    )
    assert {a[0] for a in answers} == {202}
    assert len({tuple(a[2]["ids"]) for a in answers}) == 1
    assert len(await agent.stored()) == 1


async def test_a_refused_request_does_not_burn_its_idempotency_key(start_agent: AgentFactory):
    agent = await start_agent()
    status, _, _ = await agent.post(record(1, recordValue=1.5), headers={"Idempotency-Key": "k"})
    assert status == 400
    status, _, _ = await agent.post(record(1), headers={"Idempotency-Key": "k"})
    assert status == 202
    assert len(await agent.stored()) == 1


async def test_a_key_reused_for_another_request_is_refused_and_stores_nothing(
    start_agent: AgentFactory,
):
    agent = await start_agent()
    headers = {"Idempotency-Key": "order-43"}
    assert (await agent.post(record(1), headers=dict(headers)))[0] == 202
    status, _, body = await agent.post(record(2), headers=dict(headers))
    assert status == 422
    assert "order-43" in body["error"] and "nothing was stored" in body["error"]
    invoiced = await agent.post(record(1), headers=dict(headers), params={"invoice": "true"})
    assert invoiced[0] == 422  # the same body with another invoice flag is another request
    status, replayed, _ = await agent.post(record(1), headers=dict(headers))
    assert (status, replayed["Idempotent-Replayed"]) == (202, "true")
    assert [r["recordValue"] for r in await agent.stored()] == ["1"]


async def test_an_integer_beyond_64_bits_is_kept_as_its_exact_digits(start_agent: AgentFactory):
    agent = await start_agent()
    digits = "123456789012345678901234567890"
    body = orjson.dumps(record(1)).replace(
        b'"recordValue":"1"', b'"recordValue":' + digits.encode()
    )
    status, _, _ = await agent.post(None, raw=body)
    assert status == 202
    ndjson = body + b"\n" + body.replace(digits.encode(), b"-" + digits.encode())
    status, _, _ = await agent.post(
        None, raw=ndjson, headers={"Content-Type": "application/x-ndjson"}
    )
    assert status == 202
    stored = [r["recordValue"] for r in await agent.stored()]
    assert stored == [digits, digits, "-" + digits]
    status, _, refused = await agent.post(record(1, recordValue=1.5))
    assert status == 400 and "string" in refused["errors"][0]["message"]
    huge = body.replace(digits.encode(), b"9" * 5000)  # past Python's int-to-text limit
    status, _, refused = await agent.post(None, raw=huge)
    assert status == 400 and "as a string" in refused["error"]
    assert agent.service.spool.backlog == 3


async def test_a_bad_idempotency_key_is_refused(start_agent: AgentFactory):
    agent = await start_agent()
    status, _, body = await agent.post(record(1), headers={"Idempotency-Key": "x" * 300})
    assert status == 400
    assert "Idempotency-Key" in body["error"]


async def test_health_readiness_status_and_metrics(start_agent: AgentFactory):
    agent = await start_agent(ingest={"max_request_bytes": 2000})
    await agent.post([record(1), record(2)])
    await agent.post(record(3, recordValue=1.5))
    await agent.post([record(n) for n in range(30)])  # refused by the HTTP layer: 413
    await agent.get("/nowhere")  # 404: a request, not a rejected record
    assert await agent.get("/healthz") == (200, {"status": "alive"})
    assert await agent.get("/readyz") == (200, {"status": "ready"})
    status, body = await agent.get("/status")
    assert status == 200
    assert body["spool"]["backlog_records"] == 2
    assert 0 <= body["spool"]["oldest_unsent_age_s"] < 60
    assert body["version"]
    status, text = await agent.get("/metrics")
    lines = text.decode().splitlines()
    for expected in (
        "usage_agent_records_accepted_total 2.0",
        'usage_agent_records_rejected_total{reason="invalid_record"} 1.0',
        'usage_agent_ingest_requests_total{status="202"} 1.0',
        'usage_agent_records_rejected_total{reason="body_too_large"} 1.0',
        'usage_agent_ingest_requests_total{status="413"} 1.0',
        'usage_agent_ingest_requests_total{status="404"} 1.0',
        "usage_agent_spool_records 2.0",
    ):
        assert expected in lines
    assert not any("not_found" in line for line in lines)
    assert any(line.startswith("usage_agent_ingest_request_seconds_bucket") for line in lines)
    assert any(line.startswith("usage_agent_spool_fsync_seconds_count") for line in lines)
    assert any(line.startswith("usage_agent_spool_records_per_commit_sum") for line in lines)
    assert any(line.startswith("usage_agent_spool_oldest_unsent_age_seconds") for line in lines)
    assert any(line.startswith("usage_agent_spool_bytes") for line in lines)


async def test_the_unix_socket_is_0660_and_a_stale_one_is_replaced(
    start_agent: AgentFactory, tmp_path: Path
):
    path = tmp_path / "run" / "ingest.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: what a crash leaves
    agent = await start_agent()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    status, _, _ = await agent.post(record(1), via_unix=True)
    assert status == 202


async def test_a_live_socket_or_a_regular_file_at_the_socket_path_is_not_replaced(
    start_agent: AgentFactory, tmp_path: Path
):
    await start_agent()
    other = agent_config(tmp_path, spool={"dir": str(tmp_path / "other")})
    with pytest.raises(AgentError, match="served by another process"):
        await Service(other).start()
    path = tmp_path / "file.sock"
    path.write_text("precious")
    config = agent_config(
        tmp_path, spool={"dir": str(tmp_path / "third")}, ingest={"unix_socket": str(path)}
    )
    with pytest.raises(AgentError, match="not a socket"):
        await Service(config).start()
    assert path.read_text() == "precious"


async def test_a_slow_body_gets_408_and_others_are_served_meanwhile(start_agent: AgentFactory):
    agent = await start_agent(ingest={"body_timeout_s": 0.3})
    host, port = agent.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /usage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    status, _, _ = await agent.post(record(1))  # not blocked by the slow one
    assert status == 202
    reply = await asyncio.wait_for(reader.read(200), 5)
    assert reply.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_a_half_closed_request_stores_nothing(start_agent: AgentFactory):
    agent = await start_agent()
    host, port = agent.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps(record(1))
    writer.write(
        b"POST /usage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body) + 10}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.write_eof()
    await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status, _, _ = await agent.post(record(2))
    assert status == 202
    assert await agent.stored() == [record(2)]


async def test_a_thousand_idle_connections_do_not_stop_service(start_agent: AgentFactory):
    agent = await start_agent()
    host, port = agent.url.removeprefix("http://").split(":")
    idle = [await asyncio.open_connection(host, int(port)) for _ in range(1000)]
    status, _, _ = await agent.post(record(1))
    assert status == 202
    for _, writer in idle:
        writer.close()


async def test_what_the_agent_keeps_beside_the_segments_counts_and_every_file_is_private(
    start_agent: AgentFactory, paigo: FakePaigo
):
    paigo.faults.reject_customers = {"customer-3"}
    agent = await start_agent(**delivering(paigo))
    for n in range(20):
        assert (await agent.post(record(n), headers={"Idempotency-Key": f"k{n}"}))[0] == 202
    spool = agent.service.spool
    await eventually(lambda: spool.backlog == 0, what="delivered and dead-lettered")
    await eventually((spool.dir / "delivered.jsonl").exists, what="deliveries file")
    status = spool.status()
    side = [spool.dir / "idempotency", spool.dir / "ledger"]
    side_bytes = sum(p.stat().st_size for d in side for p in d.glob("*.seg"))
    assert status.bytes >= status.segment_bytes + side_bytes
    for path in spool.dir.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) & 0o037 == 0, path


async def test_unknown_fields_are_refused_by_default_and_dropped_when_configured(
    start_agent: AgentFactory,
):
    strict = await start_agent()
    status, _, body = await strict.post({**record(1), "colour": "red"})
    assert status == 400 and 'ingest.unknown_fields = "drop"' in body["errors"][0]["message"]
    await strict.close()
    lenient = await start_agent(ingest={"unknown_fields": "drop"})
    assert (await lenient.post({**record(2), "colour": "red"}))[0] == 202
    assert await lenient.stored() == [record(2)]
