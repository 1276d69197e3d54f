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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agent_process import call, running_agent, stand_in_upstream
from drain import stand_in  # bench/drain.py
from ingest import RECORD, WRK_SCRIPT, wrk  # bench/ingest.py

OFF = "[upstream]\nenabled = false\n"


def measure(root: Path, name: str, upstream: str, seconds: float) -> tuple[float, float]:
    """(requests/s, agent CPU µs per request) for one wrk run against a fresh agent."""
    sections = f'{upstream}[verify]\nmode = "off"\n[log]\nlevel = "ERROR"\n'
    with running_agent(root, name, sections) as agent:
        script, body = root / "post.lua", root / "one.json"
        script.write_text(WRK_SCRIPT)
        body.write_text(json.dumps(RECORD))
        result = wrk(f"{agent.url}/usage", 8, seconds, body, script)
        used = agent.cpu_s()
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
        down = stand_in_upstream(fake_url) + 'dimensions = "off"\n'
        print(f"{'round':>6} {'disabled req/s':>15} {'CPU us':>8} {'503 req/s':>12} "
              f"{'CPU us':>8} {'share':>7}")  # fmt: skip
        shares = []
        for n in range(args.rounds):
            off_rate, off_cpu = measure(root, f"off-{n}", OFF, args.seconds)
            down_rate, down_cpu = measure(root, f"down-{n}", down, args.seconds)
            shares.append(down_rate / off_rate)
            print(f"{n + 1:>6} {off_rate:>15,.0f} {off_cpu:>8.0f} {down_rate:>12,.0f} "
                  f"{down_cpu:>8.0f} {shares[-1]:>7.2f}", flush=True)  # fmt: skip
        print(
            f"share of the disabled rate during an outage: {min(shares):.2f} to {max(shares):.2f}"
        )


if __name__ == "__main__":
    main()
