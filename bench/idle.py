"""Benchmark of an idle agent: the CPU it takes while there is nothing to send.

Run: .venv/bin/python bench/idle.py [--seconds S]

A sidecar runs in every pod, mostly idle, so what it costs doing nothing is paid many
times over. In one run, three agents in turn, each with one record delivered and then
left alone for `--seconds`: delivery off (`upstream.enabled = false`: the floor, measured
in the same run), delivery on with the default `upstream.concurrency` (256 senders) to a
healthy stand-in, and delivery on to an upstream that refuses connections (the circuit
open, probing). Printed: the agent's CPU (user + system, from /proc) as a share of one
core, and its ratio to the floor.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agent_process import call, free_port, running_agent, stand_in_upstream
from drain import stand_in  # bench/drain.py
from ingest import RECORD  # bench/ingest.py

SETTLE_S = 3.0  # after start and the one record: the token fetched, the record delivered


def idle_share(root: Path, name: str, upstream: str, seconds: float) -> float:
    """The agent's CPU over `seconds` of doing nothing, as a share of one core."""
    with running_agent(root, name, f'{upstream}[log]\nlevel = "ERROR"\n') as agent:
        assert call(f"{agent.url}/usage", RECORD)["accepted"] == 1
        time.sleep(SETTLE_S)
        before = agent.cpu_s()
        time.sleep(seconds)
        return (agent.cpu_s() - before) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with stand_in("bench-idle-", args.dir) as (root, fake_url):
        paigo = stand_in_upstream(fake_url) + 'dimensions = "off"\n'
        down_port = free_port()  # nothing listens there
        down = paigo.replace(fake_url, f"http://127.0.0.1:{down_port}")
        cases = [
            ("delivery off", "[upstream]\nenabled = false\n"),
            ("delivery on, healthy upstream", paigo),
            ("delivery on, upstream down", down),
        ]
        shares = [
            (name, idle_share(root, f"agent-{n}", up, args.seconds))
            for n, (name, up) in enumerate(cases)
        ]
    floor = shares[0][1]
    print(f"idle agent, {args.seconds:.0f} s each, default upstream.concurrency (256 senders)")
    print(f"{'':>32} {'CPU, % of a core':>18} {'to delivery off':>16}")
    for name, share in shares:
        ratio = share / floor if floor else float("inf")
        print(f"{name:>32} {share * 100:>17.2f}% {ratio:>16.1f}")


if __name__ == "__main__":
    main()
