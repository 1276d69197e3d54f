"""`make demo` / `usage-agent demo`: the agent's promise, shown end to end in under a minute.

In a temporary directory it starts the Paigo stand-in and a real agent process, and
several simulated apps post usage to the agent with `agent.client`. Meanwhile Paigo goes
down (503 to everything), the agent is killed with SIGKILL and started again, and Paigo
comes back. A progress line shows accepted / spooled / delivered / refused by Paigo; the
tally at the end compares what the apps were told was accepted with what Paigo holds:
lost 0, doubled 0 (exit 0), or says what went wrong (exit 1). Nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from agent.client import AgentUnavailable, AsyncUsageClient, UsageRejected
from agent.testing.fake_paigo import FakePaigo

CUSTOMERS: Final = ("acme", "globex", "initech", "umbrella", "hooli")
DIMENSIONS: Final = {
    "api-calls": lambda r: str(r.randint(1, 50)),
    "storage-gb-hours": lambda r: f"{r.uniform(0.1, 20):.3f}",
    "compute-seconds": lambda r: f"{r.uniform(0.5, 900):.1f}",
}


@dataclass(frozen=True)
class Plan:
    apps: int
    records_per_app: int
    paigo_down_at_s: float
    kill_at_s: float
    restart_after_s: float
    paigo_back_at_s: float
    pace_s: float  # an app's pause between posts


FULL: Final = Plan(4, 1000, 3.0, 6.0, 1.0, 12.0, 0.06)
SHORT: Final = Plan(3, 150, 1.0, 2.0, 0.5, 4.0, 0.1)


@dataclass
class Tally:
    accepted: set[str] = field(default_factory=set)  # the events the agent said 202 to
    refused: int = 0
    events: list[str] = field(default_factory=list)


def make_record(rng: random.Random, app: int, n: int) -> dict[str, Any]:
    dimension = rng.choice(list(DIMENSIONS))
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "customerId": rng.choice(CUSTOMERS),
        "dimensionId": dimension,
        "recordValue": DIMENSIONS[dimension](rng),
        "metadata": {"event": f"app{app}-{n}", "region": rng.choice(["eu-west-1", "us-east-1"])},
    }


async def run_app(client: AsyncUsageClient, app: int, plan: Plan, tally: Tally) -> None:
    """One app: posts its records one at a time or in small batches, each post with its own
    Idempotency-Key, riding out the agent's restart on the client's retries."""
    rng = random.Random(app)
    n = 0
    while n < plan.records_per_app:
        batch = [make_record(rng, app, n + i) for i in range(rng.choice((1, 1, 1, 5, 20)))]
        batch = batch[: plan.records_per_app - n]
        try:
            await client.post(batch, idempotency_key=f"app{app}-post-{n}")
        except (UsageRejected, AgentUnavailable) as exc:
            tally.events.append(f"app {app}: {exc}")
            tally.refused += len(batch)
        else:
            tally.accepted.update(str(r["metadata"]["event"]) for r in batch)
        n += len(batch)
        await asyncio.sleep(plan.pace_s)


class AgentRun:
    """The agent as a child process on `directory`'s configuration."""

    def __init__(self, directory: Path, paigo: FakePaigo) -> None:
        self.directory = directory
        self.socket = directory / "ingest.sock"
        self.config = directory / "agent.toml"
        self.config.write_text(
            f'[spool]\ndir = "{directory / "spool"}"\nmin_free_bytes = 0\n'
            f'[ingest]\nlisten = ""\nunix_socket = "{self.socket}"\n'
            f'[upstream]\nurl = "{paigo.usage_url}"\ntoken_url = "{paigo.token_url}"\n'
            f'client_id = "{paigo.client_id}"\nclient_secret = "{paigo.client_secret}"\n'
            "concurrency = 16\nunknown_settle_s = 1.0\n"
            "[retry]\ninitial_backoff_s = 0.1\nmax_backoff_s = 1.0\n"
        )
        self.log = directory / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "USAGE_AGENT_LOG_FORMAT": "text"},
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


async def demo(directory: Path, plan: Plan, out: TextIO) -> bool:
    paigo = FakePaigo(dimensions=[{"dimensionId": d} for d in DIMENSIONS])
    await paigo.start()
    agent = AgentRun(directory, paigo)
    tally = Tally()
    try:
        agent.start()
        client = AsyncUsageClient(unix_socket=str(agent.socket), deadline_s=60.0)
        total = plan.apps * plan.records_per_app
        say(out, f"Paigo stand-in on {paigo.url}; usage-agent on unix:{agent.socket}")
        say(out, f"{plan.apps} apps post {total:,} records through agent.client")
        apps = [asyncio.create_task(run_app(client, a, plan, tally)) for a in range(plan.apps)]
        progress = asyncio.create_task(show_progress(paigo, client, tally, out))
        await script(paigo, agent, plan, out)
        await asyncio.gather(*apps)
        say(out, "apps done; waiting for the agent to deliver the rest")
        await wait_delivered(paigo, tally, timeout_s=60)
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
        return report(paigo, tally, out)
    finally:
        agent.stop()
        await paigo.stop()


async def script(paigo: FakePaigo, agent: AgentRun, plan: Plan, out: TextIO) -> None:
    """The outage and the crash, at the plan's times."""
    started = time.monotonic()

    async def at(seconds: float) -> None:
        await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))

    await at(plan.paigo_down_at_s)
    paigo.fail_next(10**9, 503)
    say(out, "Paigo is down: every request gets 503; the agent keeps accepting")
    await at(plan.kill_at_s)
    agent.kill()
    say(out, "the agent is killed with SIGKILL; the apps' client retries")
    await asyncio.sleep(plan.restart_after_s)
    agent.start()
    say(out, "the agent is started again: it recovers its spool")
    await at(plan.paigo_back_at_s)
    paigo.fail_next(0)
    say(out, "Paigo is back")


def delivered_events(paigo: FakePaigo) -> Counter[str]:
    return Counter(str(r.get("metadata", {}).get("event")) for r in paigo.stored())


async def wait_delivered(paigo: FakePaigo, tally: Tally, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if set(delivered_events(paigo)) >= tally.accepted:
            await asyncio.sleep(0.5)  # anything arriving late would be a double: wait for it
            return
        await asyncio.sleep(0.1)


async def show_progress(
    paigo: FakePaigo, client: AsyncUsageClient, tally: Tally, out: TextIO
) -> None:
    live = out.isatty()
    while True:
        try:
            status = (await client.request("GET", "/status")).body
            spooled = f"{status['spool']['backlog_records']:,}"
        except (AgentUnavailable, KeyError, TypeError):
            spooled = "(agent down)"
        line = (
            f"accepted {len(tally.accepted):>6,}   spooled {spooled:>12}   "
            f"delivered {len(delivered_events(paigo)):>6,}   "
            f"refused by Paigo (retrying) {paigo.statuses[503]:>6,}"
        )
        out.write(f"\r{line}" if live else f"  {line}\n")
        out.flush()
        await asyncio.sleep(0.2 if live else 2.0)


def report(paigo: FakePaigo, tally: Tally, out: TextIO) -> bool:
    held = delivered_events(paigo)
    lost = tally.accepted - set(held)
    doubled = {event for event, times in held.items() if times > 1}
    extra = set(held) - tally.accepted
    say(out, "")
    for event in tally.events[:5]:
        say(out, f"  {event}")
    say(
        out,
        f"tally: accepted {len(tally.accepted):,}, delivered {len(held):,}, "
        f"lost {len(lost)}, doubled {len(doubled)}, unexpected {len(extra)}, "
        f"refused at ingest {tally.refused}",
    )
    ok = not lost and not doubled and not extra and tally.refused == 0
    say(out, "accepted = delivered: nothing lost, nothing doubled" if ok else "MISMATCH")
    return ok


def say(out: TextIO, text: str) -> None:
    out.write(("\n" if out.isatty() else "") + text + "\n")
    out.flush()


def main(short: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="usage-agent-demo-") as directory:
        ok = asyncio.run(demo(Path(directory), SHORT if short else FULL, sys.stdout))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main("--short" in sys.argv))
