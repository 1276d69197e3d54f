"""Benchmark: what an upstream outage costs ingest.

Run: .venv/bin/python bench/outage.py [--seconds S] [--rounds N]   (needs wrk)

wrk posts single records on 8 connections to an agent whose upstream is (a) disabled
(`upstream.enabled = false`: the ceiling, measured in the same run) or (b) the stand-in
answering 503 to every request (an outage: the agent keeps accepting and probing). Rounds
alternate (a) and (b) to share the machine's noise. Printed: requests/s and the agent's CPU
µs per accepted request, and (b)'s rate as a share of (a)'s; the target is at least 0.9.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from drain import call, cpu_seconds, stand_in  # bench/drain.py
from ingest import RECORD, WRK_SCRIPT, free_port, wait_port, wrk  # bench/ingest.py


def measure(root: Path, name: str, upstream: str, seconds: float) -> tuple[float, float]:
    """(requests/s, agent CPU µs per request) for one wrk run against a fresh agent."""
    port = free_port()
    config = root / f"{name}.toml"
    config.write_text(
        f'[spool]\ndir = "{root / ("spool-" + name)}"\nmin_free_bytes = 0\n'
        f"max_bytes = {64 * 1024**3}\n"
        f'[ingest]\nlisten = "127.0.0.1:{port}"\nunix_socket = ""\n'
        f'[upstream]\n{upstream}\n[verify]\nmode = "off"\n[log]\nlevel = "ERROR"\n'
    )
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)])
    try:
        wait_port(port)
        script, body = root / "post.lua", root / "one.json"
        script.write_text(WRK_SCRIPT)
        body.write_text(json.dumps(RECORD))
        before = cpu_seconds(agent.pid)
        result = wrk(f"http://127.0.0.1:{port}/usage", 8, seconds, body, script)
        used = cpu_seconds(agent.pid) - before
    finally:
        agent.terminate()
        agent.wait(timeout=60)
    requests = result["rps"] * seconds
    return result["rps"], used / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with stand_in("bench-outage-", args.dir) as (root, fake_url):
        call(f"{fake_url}/_fake/faults", {"fail_next": 10**9, "fail_status": 503})
        down = (
            f'url = "{fake_url}/usage"\ntoken_url = "{fake_url}/oauth/token"\n'
            'client_id = "test-client"\nclient_secret = "test-secret"\ndimensions = "off"'
        )
        print(f"{'round':>6} {'disabled req/s':>15} {'CPU us':>8} {'503 req/s':>12} "
              f"{'CPU us':>8} {'share':>7}")  # fmt: skip
        shares = []
        for n in range(args.rounds):
            off_rate, off_cpu = measure(root, f"off-{n}", "enabled = false", args.seconds)
            down_rate, down_cpu = measure(root, f"down-{n}", down, args.seconds)
            shares.append(down_rate / off_rate)
            print(f"{n + 1:>6} {off_rate:>15,.0f} {off_cpu:>8.0f} {down_rate:>12,.0f} "
                  f"{down_cpu:>8.0f} {shares[-1]:>7.2f}", flush=True)  # fmt: skip
        print(
            f"share of the disabled rate during an outage: {min(shares):.2f} to {max(shares):.2f}"
        )


if __name__ == "__main__":
    main()
