"""Benchmark of verified delivery: what reading every delivered record back costs.

Run: .venv/bin/python bench/verify.py [--records N] [--customers C]

A spool of N records (C customers, one dimension, timestamps over the last hour) is drained
to the Paigo stand-in (single records, effectively-once) twice in one run: with
`[verify] mode = "off"`, and with `mode = "all"` (delay 1 s, reads unthrottled), until every
record is delivered and, in the second, verified. Printed for each: seconds, the agent's
CPU seconds per 10,000 records, and the reads of Paigo's usage API per 10,000 records; the
ratio of the CPU is the cost of verification against the ceiling of delivery without it,
measured in the same run. Agent and stand-in are separate processes on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agent_process import call, stand_in_upstream
from drain import run_agent, stand_in  # bench/drain.py
from ingest import RECORD  # bench/ingest.py

from agent.config import SpoolConfig
from agent.records import Envelope, encode_envelope
from agent.spool import Spool


async def fill(directory: Path, count: int, customers: int) -> None:
    spool = Spool(SpoolConfig(dir=str(directory), fsync="off", min_free_bytes=0))
    spool.open()
    await spool.start()
    start = datetime.now(UTC) - timedelta(hours=1)
    batch = []
    for n in range(count):
        stamp = (start + timedelta(seconds=3000 * n / count)).isoformat()
        record = {
            **RECORD,
            "timestamp": stamp,
            "customerId": f"customer-{n % customers:05d}",
            "recordValue": str(n),
        }
        batch.append(encode_envelope(Envelope(json.dumps(record).encode(), 0)))
    await spool.append(batch)
    await spool.close()


def run(root: Path, fake_url: str, verify: str, records: int, customers: int) -> tuple[float, ...]:
    """(seconds, agent CPU s per 10k records, reads per 10k records) until delivered and,
    with verification, verified."""
    spool_dir = root / f"spool-{verify}"
    asyncio.run(fill(spool_dir, records, customers))
    call(f"{fake_url}/_fake/reset", {})
    reads_before = call(f"{fake_url}/_fake/stats")["reads"]
    sections = stand_in_upstream(fake_url) + (
        "concurrency = 64\n"
        f'[verify]\nmode = "{verify}"\ndelay_s = 1.0\nmax_reads_per_s = 100000.0\n'
        '[log]\nlevel = "WARNING"\n'
    )
    elapsed, cpu = run_agent(root, verify, sections, done)
    reads = call(f"{fake_url}/_fake/stats")["reads"] - reads_before
    return elapsed, cpu / records * 10_000, reads / records * 10_000


def done(status: dict[str, object]) -> bool:
    spool, verify = status["spool"], status["verify"]
    if spool["backlog_records"]:  # type: ignore[index]
        return False
    return verify is None or (verify["unverified"] == 0 and verify["verified"] > 0)  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--customers", type=int, default=100)
    args = parser.parse_args()
    with stand_in("bench-verify-", None) as (root, fake_url):
        print(f"{args.records:,} records, {args.customers} customers, one dimension")
        print(f"{'verify':>8} {'seconds':>9} {'CPU s/10k':>10} {'reads/10k':>10}")
        rows = {}
        for verify in ("off", "all"):
            rows[verify] = run(root, fake_url, verify, args.records, args.customers)
            seconds, cpu, reads = rows[verify]
            print(f"{verify:>8} {seconds:>9.1f} {cpu:>10.2f} {reads:>10.1f}")
        print(f"CPU with verification / without: {rows['all'][1] / rows['off'][1]:.2f}")


if __name__ == "__main__":
    main()
