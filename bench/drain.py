"""Benchmark of delivery: a spool of records drained to the Paigo stand-in on loopback.

Run: .venv/bin/python bench/drain.py [--records N] [--dir DIR] [--mode single|array ...]
(needs wrk for the ceilings)

In one run, for `upstream.mode = "single"` (concurrency 64) and `"array"` (500 records per
request), in at-least-once and effectively-once delivery, and effectively-once with 5 % of
sends ending in an unknown outcome (stored, then the connection dropped or a 504): records/s
from the agent's readiness until its spool is empty, and CPU seconds the agent spent per
10,000 records. Next to each, the stand-in's own ceiling, measured just before and just
after that row (this machine's speed drifts within a run; the ratio is to the higher of
the two): wrk posting such requests (single records, 500-record arrays) straight to it,
each record its own, as the agent's are.
Agent and stand-in are separate processes; the machine's cores are shared by all three.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from agent_process import call, free_port, running_agent, stand_in_upstream, wait_port
from ingest import RECORD, WRK_RESULT, wrk  # bench/ingest.py

from agent.config import DEFAULT_ID_KEY, SpoolConfig
from agent.records import Envelope, encode_envelope
from agent.spool import Spool
from agent.testing.fake_paigo import AUDIENCE


async def fill(directory: Path, count: int) -> None:
    spool = Spool(
        SpoolConfig(dir=str(directory), fsync="off", min_free_bytes=0, max_bytes=64 * 1024**3)
    )
    spool.open()
    await spool.start()
    batch = []
    for n in range(count):
        record = {**RECORD, "customerId": f"customer-{n % 1000:06d}", "recordValue": str(n)}
        batch.append(encode_envelope(Envelope(json.dumps(record).encode(), 0)))
        if len(batch) == 10_000:
            await spool.append(batch)
            batch = []
    if batch:
        await spool.append(batch)
    await spool.close()


def drain(root: Path, fake_url: str, case: Case, records: int) -> tuple[float, float]:
    """(records/s from readiness until the spool is empty, agent CPU s per 10k records)."""
    name = f"{case.mode}-{case.delivery}-{case.unknown_rate}"
    spool_dir = root / f"spool-{name}"
    asyncio.run(fill(spool_dir, records))
    call(f"{fake_url}/_fake/reset", {})
    half = case.unknown_rate / 2  # half stored then dropped, half stored then 504
    call(f"{fake_url}/_fake/faults", {"store_then_drop_rate": half, "store_then_504_rate": half})
    sections = stand_in_upstream(fake_url) + (
        f'mode = "{case.mode}"\ndelivery = "{case.delivery}"\nunknown_settle_s = {SETTLE_S}\n'
        'concurrency = 64\nbatch_max_records = 500\n[log]\nlevel = "WARNING"\n'
    )
    try:
        elapsed, cpu = run_agent(root, name, sections, lambda s: not s["spool"]["backlog_records"])
    finally:
        call(f"{fake_url}/_fake/faults", {"store_then_drop_rate": 0, "store_then_504_rate": 0})
    return records / elapsed, cpu / records * 10_000


def run_agent(
    root: Path, name: str, sections: str, done: Callable[[dict[str, Any]], bool]
) -> tuple[float, float]:
    """Run an agent (`agent_process.running_agent`) until its /status is `done`: (seconds
    from readiness, the agent's CPU seconds from readiness)."""
    with running_agent(root, name, sections) as agent:
        started = time.perf_counter()
        while not done(agent.status()):
            time.sleep(0.05)
        return time.perf_counter() - started, agent.cpu_s()


@dataclass(frozen=True)
class Case:
    mode: str
    delivery: str
    unknown_rate: float


CASES = (
    Case("single", "at-least-once", 0.0),
    Case("single", "effectively-once", 0.0),
    Case("single", "effectively-once", 0.05),
    Case("array", "at-least-once", 0.0),
    Case("array", "effectively-once", 0.0),
)
SETTLE_S = 0.5


def ceiling(root: Path, fake_url: str, mode: str, seconds: float) -> float:
    """The stand-in's own rate, in records/s, for `mode`'s requests: wrk posting them
    straight to it (single records on 64 connections, 500-record arrays on 8). The records
    are the ones the agent sends: each its own, over 1,000 customers, stamped. (Posting one
    body again and again measured a cheaper load: each write overwrote the same points, and
    the store never grew; that ceiling was 1.3 to 1.5 times this one.)"""
    token = call(
        f"{fake_url}/oauth/token",
        {
            "audience": AUDIENCE,
            "grant_type": "client_credentials",
            "client_id": "test-client",
            "client_secret": "test-secret",
        },
    )["access_token"]
    script = root / "post.lua"
    per_request = 1 if mode == "single" else 500
    script.write_text(distinct_records_script(per_request, token))
    connections = 64 if mode == "single" else 8
    rate = wrk(f"{fake_url}/usage", connections, seconds, None, script)["rps"] * per_request
    call(f"{fake_url}/_fake/reset", {})
    return rate


DISTINCT_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer @token@"
local n = 0
request = function()
  local parts = {}
  for i = 1, @per_request@ do
    n = n + 1
    parts[i] = string.format([[@template@]], n % 1000, n, n)
  end
  return wrk.format(nil, nil, nil, @body@)
end
"""


def distinct_records_script(per_request: int, token: str) -> str:
    """A wrk script whose every request carries `per_request` records none posted before,
    shaped as `fill` writes them and as the agent stamps them (in an array for more than
    one, as `upstream.mode = "array"` sends them)."""
    stamped = {
        **RECORD,
        "customerId": "@customer@",
        "recordValue": "@n@",
        "metadata": {**RECORD["metadata"], DEFAULT_ID_KEY: "0123456789abcdef-@n@"},
    }
    template = json.dumps(stamped, separators=(",", ":")).replace("%", "%%")
    template = template.replace("@customer@", "customer-%06d").replace("@n@", "%d")
    body = 'table.concat(parts, ",")'
    script = DISTINCT_SCRIPT.replace("@token@", token).replace("@template@", template)
    script = script.replace("@per_request@", str(per_request))
    script = script.replace("@body@", f'"[" .. {body} .. "]"' if per_request > 1 else body)
    return script + WRK_RESULT


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--mode", nargs="+", choices=("single", "array"), default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/drain.py needs wrk: apt-get install wrk")
    with stand_in("bench-drain-", args.dir, "--accept-arrays") as (root, fake_url):
        header = ("mode", "delivery", "unknown", "records/s", "CPU s/10k", "ceilings", "ratio")
        print(f"unknown_settle_s = {SETTLE_S}; {args.records:,} records per row")
        print("ceilings: the stand-in's own rate, wrk straight to it just before and just after")
        print("the row; the ratio is to the higher of the two")
        print(" ".join(f"{h:>16}" for h in header))
        for case in CASES:
            if args.mode and case.mode not in args.mode:
                continue
            before = ceiling(root, fake_url, case.mode, args.seconds)
            rate, cpu = drain(root, fake_url, case, args.records)
            after = ceiling(root, fake_url, case.mode, args.seconds)
            cells = [case.mode, case.delivery, f"{case.unknown_rate:.0%}", f"{rate:,.0f}"]
            cells += [f"{cpu:.2f}", f"{before / 1000:.1f}k {after / 1000:.1f}k"]
            cells.append(f"{rate / max(before, after):.2f}")
            print(" ".join(f"{c:>16}" for c in cells), flush=True)


@contextlib.contextmanager
def stand_in(prefix: str, directory: str | None, *flags: str) -> Iterator[tuple[Path, str]]:
    """A scratch directory and the URL of the Paigo stand-in, run as its own process."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "agent", "fake-paigo", "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield root, f"http://127.0.0.1:{port}"
    finally:
        fake.terminate()
        fake.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
