"""The stand-in follows Paigo as `../shared/PAIGO.md` describes it: published and observed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from agent.testing.fake_paigo import AUDIENCE, Customer, FakePaigo
from agent.testing.paigo_rules import js_number, usage_problems
from tests.conftest import record

GRANT = {"audience": AUDIENCE, "grant_type": "client_credentials"}


@pytest.mark.parametrize(
    ("changes", "ok"),
    [
        ({}, True),
        ({"timestamp": "2021-01-23 01:23:45.123456789z"}, True),
        ({"timestamp": "2021-01-23t01:23:60+02:00"}, True),  # the validator takes :60
        ({"timestamp": "2021-01-23"}, False),
        ({"timestamp": "2021-01-23T01:23:45"}, False),
        ({"timestamp": "21-01-23T01:23:45Z"}, False),
        ({"recordValue": ".5"}, True),
        ({"recordValue": "-2.5"}, True),
        ({"recordValue": "1e3"}, False),
        ({"recordValue": "5."}, False),
        ({"recordValue": 5}, False),
        ({"metadata": {"a": {"b": [1]}}}, True),
        ({"metadata": [1]}, False),
        ({"customerId": ""}, False),
        ({"extra": "stripped, not refused"}, True),
    ],
)
def test_records_are_checked_as_paigos_validator_does(changes: dict[str, Any], ok: bool):
    assert (usage_problems({**record(1), **changes}) == []) is ok


@pytest.mark.parametrize(
    ("value", "printed"),
    [(1.5, "1.5"), (100.0, "100"), (-0.25, "-0.25"), (1e21, "1e+21"), (1e-7, "1e-7")],
)
def test_stored_values_read_back_as_javascript_prints_them(value: float, printed: str):
    assert js_number(value) == printed


async def bearer(http: aiohttp.ClientSession, paigo: FakePaigo) -> dict[str, str]:
    grant = {**GRANT, "client_id": paigo.client_id, "client_secret": paigo.client_secret}
    async with http.post(paigo.token_url, json=grant) as resp:
        assert resp.status == 200
        return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


async def post(
    http: aiohttp.ClientSession, paigo: FakePaigo, body: object, auth: dict[str, str], **params: str
) -> tuple[int, Any]:
    async with http.post(paigo.usage_url, json=body, headers=auth, params=params) as resp:
        return resp.status, await resp.json()


async def read(
    http: aiohttp.ClientSession, paigo: FakePaigo, customer: str, auth: dict[str, str], **query: str
) -> tuple[int, Any]:
    params = {"aggregationInterval": "none", "aggregationPurpose": "metering", **query}
    url = f"{paigo.url}/customers/{customer}/usage"
    async with http.get(url, params=params, headers=auth) as resp:
        return resp.status, await resp.json()


async def test_a_token_needs_the_credentials_and_paigos_audience(paigo: FakePaigo):
    async with aiohttp.ClientSession() as http:
        grant = {**GRANT, "client_id": paigo.client_id, "client_secret": paigo.client_secret}
        async with http.post(paigo.token_url, json=grant) as resp:
            answer = await resp.json()
        assert answer["token_type"] == "Bearer" and answer["expires_in"] == 86400
        async with http.post(paigo.token_url, json={**grant, "client_secret": "no"}) as resp:
            assert resp.status == 401
        async with http.post(paigo.token_url, json={**grant, "audience": "other"}) as resp:
            assert resp.status == 403


async def test_usage_answers_201_with_a_message_401_without_a_token_403_with_an_unknown_one(
    paigo: FakePaigo,
):
    async with aiohttp.ClientSession() as http:
        auth = await bearer(http, paigo)
        status, body = await post(http, paigo, record(1), auth)
        assert status == 201 and isinstance(body["message"], str)
        assert (await post(http, paigo, record(2), {}))[0] == 401
        assert (await post(http, paigo, record(2), {"Authorization": "Bearer nope"}))[0] == 403
        paigo.expire_tokens()
        assert (await post(http, paigo, record(2), auth))[0] == 403
    assert paigo.records == [record(1)]


async def test_a_refused_record_gets_paigos_400_shape_and_unknown_fields_are_stripped(
    paigo: FakePaigo,
):
    async with aiohttp.ClientSession() as http:
        auth = await bearer(http, paigo)
        status, body = await post(http, paigo, record(1, recordValue="1e3"), auth)
        assert status == 400 and body["statusCode"] == 400 and body["error"] == "Bad Request"
        assert any("recordValue" in message for message in body["message"])
        assert (await post(http, paigo, {**record(2), "colour": "red"}, auth))[0] == 201
        assert (await post(http, paigo, [record(3)], auth))[0] == 400  # no batch endpoint
    assert paigo.records == [record(2)]


async def test_invoice_with_any_value_is_on_and_refused_after_storing_unless_upfront_last():
    paigo = FakePaigo(
        dimensions=[
            {"dimensionId": "seats", "aggregationMethod": "last", "paymentSchedule": "upfront"},
            {"dimensionId": "api-calls", "aggregationMethod": "sum"},
        ]
    )
    await paigo.start()
    try:
        async with aiohttp.ClientSession() as http:
            auth = await bearer(http, paigo)
            seats = record(1, dimensionId="seats")
            assert (await post(http, paigo, seats, auth, invoice="false"))[0] == 201
            status, body = await post(http, paigo, record(2), auth, invoice="true")
            assert status == 400 and "upfront" in body["message"][0]
            assert (await post(http, paigo, record(3, dimensionId="nope"), auth, invoice="1"))[
                0
            ] == 400
        assert [r.invoice for r in paigo.received] == [True, True, True]  # all three stored
    finally:
        await paigo.stop()


async def test_identical_points_overwrite_and_values_read_back_normalised(paigo: FakePaigo):
    async with aiohttp.ClientSession() as http:
        auth = await bearer(http, paigo)
        first = record(1, recordValue="1.50", metadata={"k": "a"})
        assert (await post(http, paigo, first, auth))[0] == 201
        assert (await post(http, paigo, {**first, "recordValue": "2.50"}, auth))[0] == 201
        other_ms = {**first, "timestamp": "2026-11-25T10:00:00.001Z"}
        assert (await post(http, paigo, other_ms, auth))[0] == 201
        status, body = await read(
            http, paigo, first["customerId"], auth, startTime="2026-11-25T00:00:00Z"
        )
    assert status == 200
    [group] = body["data"]
    assert group["dimensionId"] == "api-calls" and group["offeringId"]
    assert group["usage"] == [
        {"timestamp": "2026-11-25T10:00:00.000Z", "recordValue": "2.5", "metadata": {"k": "a"}},
        {"timestamp": "2026-11-25T10:00:00.001Z", "recordValue": "1.5", "metadata": {"k": "a"}},
    ]
    assert len(paigo.records) == 3 and len(paigo.stored()) == 2


async def test_reads_follow_enrollment_offering_and_refuse_an_end_in_the_future():
    enrolled = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    paigo = FakePaigo(
        customers={"c": Customer(enrolled_at=enrolled, dimensions=frozenset({"api-calls"}))}
    )
    await paigo.start()
    try:
        async with aiohttp.ClientSession() as http:
            auth = await bearer(http, paigo)
            for stamp, dimension in [
                ("2026-11-25T09:00:00Z", "api-calls"),  # before the enrollment
                ("2026-11-25T11:00:00Z", "api-calls"),
                ("2026-11-25T11:00:00Z", "storage"),  # not in the offering
            ]:
                body = record(1, customerId="c", timestamp=stamp, dimensionId=dimension)
                assert (await post(http, paigo, body, auth))[0] == 201
            window = {"startTime": "2026-11-25T00:00:00Z", "endTime": "2026-11-26T00:00:00Z"}
            _, hidden = await read(http, paigo, "c", auth, **window)
            _, everything = await read(
                http, paigo, "c", auth, ignoreEnrollmentDate="true", **window
            )
            future = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
            status, refused = await read(http, paigo, "c", auth, endTime=future)
        assert [len(g["usage"]) for g in hidden["data"]] == [1]
        assert [len(g["usage"]) for g in everything["data"]] == [2]
        assert status == 400 and "end time must be before the current time" in refused["message"]
    finally:
        await paigo.stop()


async def test_a_write_becomes_readable_only_after_the_write_delay():
    paigo = FakePaigo(write_delay_s=0.5)
    await paigo.start()
    try:
        async with aiohttp.ClientSession() as http:
            auth = await bearer(http, paigo)
            assert (await post(http, paigo, record(7), auth))[0] == 201
            window = {"startTime": "2026-11-25T00:00:00Z"}
            _, before = await read(http, paigo, record(7)["customerId"], auth, **window)
            await asyncio.sleep(0.6)
            _, after = await read(http, paigo, record(7)["customerId"], auth, **window)
        assert (len(before["data"]), len(after["data"])) == (0, 1)
    finally:
        await paigo.stop()


async def test_the_dimension_catalog_is_served_as_configured():
    paigo = FakePaigo(dimensions=[{"dimensionId": "seats", "aggregationMethod": "last"}])
    await paigo.start()
    try:
        async with aiohttp.ClientSession() as http:
            auth = await bearer(http, paigo)
            async with http.get(f"{paigo.url}/dimensions", headers=auth) as resp:
                [seats] = (await resp.json())["data"]
        assert seats["aggregationMethod"] == "last" and seats["paymentSchedule"] == "arrear"
    finally:
        await paigo.stop()


async def test_faults_can_be_set_over_http(paigo: FakePaigo):
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{paigo.url}/_fake/faults", json={"fail_next": 2, "fail_status": 502}
        ) as resp:
            assert resp.status == 200
        async with http.post(f"{paigo.url}/_fake/faults", json={"nonsense": 1}) as resp:
            assert resp.status == 400
    assert paigo.faults.fail_next == 2 and paigo.faults.fail_status == 502


async def test_outcome_unknown_faults_store_or_not_as_named():
    fake = FakePaigo(seed=7)
    await fake.start()
    try:
        async with aiohttp.ClientSession() as http:
            auth = await bearer(http, fake)
            fake.faults.store_then_drop_rate = 1.0
            with pytest.raises(aiohttp.ClientError):
                await post(http, fake, record(1), auth)
            fake.faults.store_then_drop_rate = 0.0
            fake.faults.store_then_504_rate = 1.0
            assert (await post(http, fake, record(2), auth))[0] == 504
            fake.faults.store_then_504_rate = 0.0
            fake.faults.lose_504_rate = 1.0
            assert (await post(http, fake, record(3), auth))[0] == 504
        assert fake.records == [record(1), record(2)]  # stored, stored, not stored
    finally:
        await fake.stop()
