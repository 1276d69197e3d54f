"""`usage-agent reconcile`: what the agent delivered, against what Paigo holds.

For the records in the deliveries file (`agent.delivery.ledger`) whose timestamps fall in
[since, until), it reads each customer's raw usage from Paigo's read API over the same
window and matches records by their stable id (`metadata[upstream.id_key]`):

* **missing**: delivered (a 2xx was seen) but not at Paigo;
* **doubled**: at Paigo more than once.

Records at Paigo with an id the deliveries file does not know are listed as unknown to
the ledger (its tail may have been cut by a power loss, or it was rotated), not as errors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import orjson

from agent.config import Config
from agent.delivery.auth import TokenManager
from agent.delivery.ledger import read_deliveries
from agent.delivery.uplink import Uplink


@dataclass
class Report:
    checked: int = 0
    missing: list[dict[str, object]] = field(default_factory=list)
    doubled: list[tuple[str, int]] = field(default_factory=list)
    unknown_to_ledger: list[str] = field(default_factory=list)
    torn_lines: list[str] = field(default_factory=list)  # file:line, skipped

    @property
    def clean(self) -> bool:
        return not self.missing and not self.doubled

    def lines(self) -> list[str]:
        out = [f"checked {self.checked} delivered records"]
        out += [f"MISSING {orjson.dumps(m).decode()}" for m in self.missing]
        out += [f"DOUBLED {key} x{count}" for key, count in self.doubled]
        out += [f"unknown to the ledger: {key}" for key in self.unknown_to_ledger]
        out += [f"skipped a torn line of the deliveries file: {where}" for where in self.torn_lines]
        out.append(
            "clean" if self.clean else f"{len(self.missing)} missing, {len(self.doubled)} doubled"
        )
        return out


def instant(value: str) -> datetime:
    return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))


async def reconcile(config: Config, since: str, until: str) -> Report:
    start, end = instant(since), instant(until)
    delivered: dict[str, dict[str, object]] = {}
    deliveries = read_deliveries(config.spool.dir)
    for line in deliveries.lines:
        if start <= instant(str(line["t"])) < end:
            delivered.setdefault(str(line["k"]), line)
    by_customer: dict[str, list[dict[str, object]]] = {}
    for line in delivered.values():
        by_customer.setdefault(str(line["c"]), []).append(line)
    report = Report(checked=len(delivered), torn_lines=deliveries.torn)
    upstream = config.upstream
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(upstream, session)
        uplink = Uplink(session, upstream.url, upstream.request_timeout_s * 6)
        for customer, lines in sorted(by_customer.items()):
            token = await tokens.get()
            groups = await uplink.read_usage(upstream.read_base, token, customer, (since, until))
            held = Counter(
                str(key)
                for group in groups
                for usage in group.get("usage") or []
                if (key := (usage.get("metadata") or {}).get(upstream.id_key)) is not None
            )
            report.missing += [line for line in lines if held[str(line["k"])] == 0]
            report.doubled += [(key, n) for key, n in sorted(held.items()) if n > 1]
            report.unknown_to_ledger += sorted(key for key in held if key not in delivered)
    return report
