"""`make demo`: a real agent on loopback and a unix socket in a temporary folder.

It posts usage the way an app would, shows what a bad record gets back, repeats a request
with an Idempotency-Key, restarts the agent and shows that the backlog survived.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import aiohttp
import orjson

from agent.config import from_mapping
from agent.service import Service

RECORD = {
    "timestamp": "2026-11-25T10:00:00Z",
    "customerId": "acme",
    "dimensionId": "api-calls",
    "recordValue": "3",
}


def show(title: str, status: int, body: bytes) -> None:
    print(f"\n$ {title}\n  -> {status} {body.decode()[:300]}")


async def demo(directory: Path) -> None:
    config = from_mapping(
        {
            "spool": {"dir": str(directory / "spool"), "min_free_bytes": 0},
            "ingest": {"listen": "127.0.0.1:0", "unix_socket": str(directory / "ingest.sock")},
        },
        "demo",
    )
    service = Service(config)
    await service.start()
    url = service.addresses[0]
    print(f"usage-agent listening on {', '.join(service.addresses)}")
    async with aiohttp.ClientSession() as http:
        for title, body, headers in (
            ("POST /usage (one record)", RECORD, {}),
            ("POST /usage (an array)", [RECORD, {**RECORD, "recordValue": "4"}], {}),
            (
                "POST /usage (a float and a typo)",
                {**RECORD, "recordValue": 1.5, "customerID": "x"},
                {},
            ),
            ("POST /usage with Idempotency-Key: order-1", RECORD, {"Idempotency-Key": "order-1"}),
            ("the same again", RECORD, {"Idempotency-Key": "order-1"}),
        ):
            async with http.post(
                f"{url}/usage",
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json", **headers},
            ) as resp:
                show(title, resp.status, await resp.read())
    connector = aiohttp.UnixConnector(path=str(directory / "ingest.sock"))
    async with aiohttp.ClientSession(connector=connector) as unix:
        async with unix.post("http://agent/usage", json=RECORD) as resp:
            show("POST /usage over the unix socket", resp.status, await resp.read())
        async with unix.get("http://agent/status") as resp:
            show("GET /status", resp.status, await resp.read())
    await service.stop()
    print("\nagent stopped; starting it again on the same spool ...")
    again = Service(config)
    await again.start()
    print(f"backlog after restart: {again.spool.backlog} records, waiting for delivery")
    await again.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="usage-agent-demo-") as directory:
        asyncio.run(demo(Path(directory)))


if __name__ == "__main__":
    main()
