"""Benchmark of delivery: a spool of records drained to the Paigo stand-in on loopback.

Run: .venv/bin/python bench/drain.py [--records N] [--dir DIR]   (needs wrk for the ceilings)

In one run, for `upstream.mode = "single"` (concurrency 64) and `"array"` (500 records per
request): records/s from start-up to the last record at the stand-in, and CPU seconds the
agent spent per 10,000 records. Next to each, the stand-in's own ceiling measured in the
same run: wrk posting the same requests (single records, 500-record arrays) straight to it.
Agent and stand-in are separate processes; the machine's cores are shared by all three.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ingest import RECORD, WRK_SCRIPT, free_port, wait_port, wrk  # bench/ingest.py

from agent.config import SpoolConfig
from agent.records import Envelope, encode_envelope
from agent.spool import Spool


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


def call(url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer: dict[str, object] = json.loads(resp.read())
        return answer


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain(root: Path, fake_url: str, mode: str, records: int) -> tuple[float, float]:
    spool_dir = root / f"spool-{mode}"
    asyncio.run(fill(spool_dir, records))
    call(f"{fake_url}/_fake/reset", {})
    config = root / f"{mode}.toml"
    agent_port = free_port()
    config.write_text(
        f'[spool]\ndir = "{spool_dir}"\nmin_free_bytes = 0\nmax_bytes = {64 * 1024**3}\n'
        f'[ingest]\nlisten = "127.0.0.1:{agent_port}"\nunix_socket = ""\n'
        f'[upstream]\nurl = "{fake_url}/usage"\ntoken_url = "{fake_url}/oauth/token"\n'
        'client_id = "test-client"\nclient_secret = "test-secret"\n'
        f'mode = "{mode}"\nconcurrency = 64\nbatch_max_records = 500\n[log]\nlevel = "WARNING"\n'
    )
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)])
    wait_port(agent_port)  # the rate counts from readiness: process start-up is not drain
    started = time.perf_counter()
    try:
        while int(call(f"{fake_url}/_fake/stats")["records"]) < records:  # type: ignore[call-overload]
            time.sleep(0.05)
            if agent.poll() is not None:
                raise RuntimeError("the agent exited")
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(agent.pid)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    return records / elapsed, cpu / records * 10_000


def ceilings(root: Path, fake_url: str, seconds: float) -> tuple[float, float]:
    token = call(
        f"{fake_url}/oauth/token",
        {
            "audience": "x",
            "grant_type": "client_credentials",
            "client_id": "test-client",
            "client_secret": "test-secret",
        },
    )["access_token"]
    script = root / "post.lua"
    script.write_text(WRK_SCRIPT + f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    one, array = root / "one.json", root / "array.json"
    one.write_text(json.dumps(RECORD))
    array.write_text(json.dumps([RECORD] * 500))
    single = wrk(f"{fake_url}/usage", 64, seconds, one, script)["rps"]
    arrays = wrk(f"{fake_url}/usage", 8, seconds, array, script)["rps"] * 500
    call(f"{fake_url}/_fake/reset", {})
    return single, arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/drain.py needs wrk: apt-get install wrk")
    root = Path(tempfile.mkdtemp(prefix="bench-drain-", dir=args.dir))
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "agent", "fake-paigo", "--port", str(port), "--accept-arrays"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fake_url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port)
        single_ceiling, array_ceiling = ceilings(root, fake_url, args.seconds)
        print(
            f"stand-in ceiling (wrk straight to it): single {single_ceiling:,.0f} req/s "
            f"(64 conns); arrays of 500 {array_ceiling:,.0f} records/s (8 conns)"
        )
        header = ("mode", "records", "records/s", "CPU s/10k", "ceiling", "ratio")
        print("\n" + " ".join(f"{h:>10}" for h in header))
        for mode, ceiling in (("single", single_ceiling), ("array", array_ceiling)):
            rate, cpu = drain(root, fake_url, mode, args.records)
            cells = (mode, f"{args.records:,}", f"{rate:,.0f}", f"{cpu:.2f}", f"{ceiling:,.0f}")
            print(" ".join(f"{c:>10}" for c in cells) + f" {rate / ceiling:>10.2f}")
    finally:
        fake.terminate()
        fake.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
