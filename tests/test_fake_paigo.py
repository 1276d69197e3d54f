"""The stand-in follows Paigo's published API: token grant, bearer auth, record checks."""

from __future__ import annotations

import aiohttp
import pytest

from agent.testing.fake_paigo import FakePaigo, paigo_problem
from tests.conftest import record


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        (record(1), True),
        ({**record(1), "recordValue": "abc"}, False),
        ({**record(1), "timestamp": "2021-01-23"}, False),
        ({**record(1), "timestamp": "2021-01-23T01:23:45"}, False),
        ({k: v for k, v in record(1).items() if k != "customerId"}, False),
        ([record(1)], False),
    ],
)
def test_records_are_checked_as_paigo_documents(body: object, ok: bool):
    assert (paigo_problem(body) is None) is ok


async def test_a_token_is_granted_for_the_right_credentials_only(paigo: FakePaigo):
    async with aiohttp.ClientSession() as http:
        grant = {
            "audience": "https://qnonyh1pc7.execute-api.us-east-1.amazonaws.com",
            "grant_type": "client_credentials",
            "client_id": paigo.client_id,
            "client_secret": paigo.client_secret,
        }
        async with http.post(paigo.token_url, json=grant) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["token_type"] == "Bearer" and answer["expires_in"] == 86400
        async with http.post(paigo.token_url, json={**grant, "client_secret": "no"}) as resp:
            assert resp.status == 401
        headers = {"Authorization": f"Bearer {answer['access_token']}"}
        async with http.post(paigo.usage_url, json=record(1), headers=headers) as resp:
            assert resp.status == 200
        async with http.post(paigo.usage_url, json=record(1)) as resp:
            assert resp.status == 401
        async with http.post(
            paigo.usage_url, json=record(2), headers=headers, params={"invoice": "true"}
        ) as resp:
            assert resp.status == 200
    assert paigo.records == [record(1), record(2)]
    assert [r.invoice for r in paigo.received] == [False, True]


async def test_faults_can_be_set_over_http(paigo: FakePaigo):
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{paigo.url}/_fake/faults", json={"fail_next": 2, "fail_status": 502}
        ) as resp:
            assert resp.status == 200
        async with http.post(f"{paigo.url}/_fake/faults", json={"nonsense": 1}) as resp:
            assert resp.status == 400
    assert paigo.faults.fail_next == 2 and paigo.faults.fail_status == 502


async def token_for(http: aiohttp.ClientSession, paigo: FakePaigo) -> dict[str, str]:
    grant = {"grant_type": "client_credentials", "client_id": paigo.client_id}
    grant["client_secret"] = paigo.client_secret
    async with http.post(paigo.token_url, json=grant) as resp:
        return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


async def test_the_read_api_returns_raw_records_of_a_window_grouped_by_dimension(
    paigo: FakePaigo,
):
    async with aiohttp.ClientSession() as http:
        auth = await token_for(http, paigo)
        sent = [
            {**record(1), "timestamp": "2026-11-25T10:00:00Z", "metadata": {"k": "a"}},
            {
                **record(2),
                "customerId": record(1)["customerId"],
                "timestamp": "2026-11-25T10:00:05Z",
            },
            {**record(3), "customerId": record(1)["customerId"], "dimensionId": "storage"},
            {**record(4), "customerId": "someone-else"},
        ]
        for body in sent:
            async with http.post(paigo.usage_url, json=body, headers=auth) as resp:
                assert resp.status == 200
        query = {
            "aggregationInterval": "none",
            "aggregationPurpose": "metering",
            "startTime": "2026-11-25T09:59:59Z",
            "endTime": "2026-11-25T10:00:05Z",
        }
        url = f"{paigo.url}/customers/{record(1)['customerId']}/usage"
        async with http.get(url, params=query, headers=auth) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["data"] == [
            {
                "dimensionId": "api-calls",
                "usage": [
                    {
                        "timestamp": "2026-11-25T10:00:00Z",
                        "recordValue": "1",
                        "metadata": {"k": "a"},
                    }
                ],
            },
            {
                "dimensionId": "storage",
                "usage": [
                    {"timestamp": "2026-11-25T10:00:00Z", "recordValue": "3", "metadata": {}}
                ],
            },
        ]
        async with http.get(url, params=query) as resp:
            assert resp.status == 401


async def test_outcome_unknown_faults_store_or_not_as_named():
    fake = FakePaigo(seed=7)
    await fake.start()
    try:
        async with aiohttp.ClientSession() as http:
            auth = await token_for(http, fake)
            fake.faults.store_then_drop_rate = 1.0
            with pytest.raises(aiohttp.ClientError):
                async with http.post(fake.usage_url, json=record(1), headers=auth) as resp:
                    await resp.read()
            fake.faults.store_then_drop_rate = 0.0
            fake.faults.store_then_504_rate = 1.0
            async with http.post(fake.usage_url, json=record(2), headers=auth) as resp:
                assert resp.status == 504
            fake.faults.store_then_504_rate = 0.0
            fake.faults.lose_504_rate = 1.0
            async with http.post(fake.usage_url, json=record(3), headers=auth) as resp:
                assert resp.status == 504
        assert fake.records == [record(1), record(2)]  # stored, stored, not stored
    finally:
        await fake.stop()
