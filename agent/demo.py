"""`make demo`: a real agent, on loopback and a unix socket, delivering to the Paigo stand-in.

It posts usage the way an app would, shows what a bad record gets back, repeats a request
with an Idempotency-Key, takes the upstream down and brings it back, and shows that every
record arrived once.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from agent.config import from_mapping
from agent.service import Service
from agent.testing.fake_paigo import FakePaigo


def record(n: int, **changes: Any) -> dict[str, Any]:
    return {
        "timestamp": "2026-11-25T10:00:00Z",
        "customerId": f"acme-{n % 3}",
        "dimensionId": "api-calls",
        "recordValue": str(n),
        **changes,
    }


def show(title: str, status: int, body: bytes) -> None:
    print(f"\n$ {title}\n  -> {status} {body.decode()[:240]}")


async def wait_for(check: Any, seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)


async def demo(directory: Path) -> None:
    paigo = FakePaigo(dimensions=[{"dimensionId": "api-calls", "aggregationMethod": "sum"}])
    await paigo.start()
    config = from_mapping(
        {
            "spool": {"dir": str(directory / "spool"), "min_free_bytes": 0},
            "ingest": {"listen": "127.0.0.1:0", "unix_socket": str(directory / "ingest.sock")},
            "upstream": {
                "url": paigo.usage_url,
                "token_url": paigo.token_url,
                "client_id": paigo.client_id,
                "client_secret": paigo.client_secret,
            },
            "retry": {"initial_backoff_s": 0.1, "max_backoff_s": 1.0},
        },
        "demo",
    )
    service = Service(config)
    await service.start()
    url = service.addresses[0]
    print(f"usage-agent on {', '.join(service.addresses)}; Paigo stand-in on {paigo.url}")
    async with aiohttp.ClientSession() as http:

        async def post(title: str, body: object, **headers: str) -> None:
            headers = {"Content-Type": "application/json", **headers}
            async with http.post(f"{url}/usage", data=orjson.dumps(body), headers=headers) as resp:
                show(title, resp.status, await resp.read())

        await post("POST /usage (one record)", record(1))
        await post("POST /usage (an array of 3)", [record(n) for n in (2, 3, 4)])
        await post("POST /usage (a float and a typo)", record(5, recordValue=1.5, customerID="x"))
        await wait_for(
            lambda: (
                service.state is not None
                and service.state.catalog is not None
                and service.state.catalog.fresh
            )
        )
        await post("POST /usage (1e3: Paigo would refuse it)", record(7, recordValue="1e3"))
        await post("POST /usage (a dimension Paigo lacks)", record(7, dimensionId="api-call"))
        await post(
            "POST /usage, Idempotency-Key: order-1", record(6), **{"Idempotency-Key": "order-1"}
        )
        await post("the same request again", record(6), **{"Idempotency-Key": "order-1"})
        await wait_for(lambda: len(paigo.records) >= 5)
        print(f"\nPaigo has {len(paigo.records)} records")

        print("\nPaigo goes down (503 to everything); the app keeps posting ...")
        paigo.fail_next(10**9, 503)
        await post("POST /usage (100 records)", [record(n) for n in range(100, 200)])
        await asyncio.sleep(1.0)
        async with http.get(f"{url}/status") as resp:
            status = orjson.loads(await resp.read())
        backlog = status["spool"]["backlog_records"]
        print(f"  backlog {backlog} records on disk; Paigo has {len(paigo.records)}")
        print("Paigo comes back ...")
        paigo.fail_next(0)
        await wait_for(lambda: len(paigo.records) >= 105)
        values = sorted(int(r["recordValue"]) for r in paigo.records)
        distinct = len(set(values))
        print(
            f"  Paigo has {len(paigo.records)} records, {distinct} distinct: none lost or doubled"
        )
    await service.stop()
    await paigo.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="usage-agent-demo-") as directory:
        asyncio.run(demo(Path(directory)))


if __name__ == "__main__":
    main()
