"""`usage-agent reconcile`: what the agent delivered, against what Paigo holds.

For the records in the deliveries file (`agent.delivery.ledger`) whose timestamps fall in
[since, until), it reads each customer's raw usage from Paigo's read API over the same
window, by the read rules of `agent.delivery.reads` (`until` is clamped to what may be read
now, and said so; the window is read in chunks of `upstream.read_chunk_s`; a 401 or 403 gets
one token refresh), and matches records by their stamp (`metadata[upstream.id_key]`), with
the comparison the effectively-once check uses:

* **missing**: delivered (a 2xx was seen) but not at Paigo;
* **doubled**: at Paigo more than once;
* **differs**: at Paigo with another value or instant than was delivered.

Records at Paigo with an id the deliveries file does not know are listed as unknown to
the ledger (its tail may have been cut by a power loss, or it was rotated), not as errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from agent.config import Config
from agent.delivery.auth import TokenManager
from agent.delivery.ledger import read_deliveries
from agent.delivery.reads import Verdict, by_stamp, chunks, instant, latest_end, rfc3339, verdict
from agent.delivery.uplink import Uplink, read_usage_refreshing


@dataclass
class Report:
    checked: int = 0
    missing: list[dict[str, object]] = field(default_factory=list)
    doubled: list[tuple[str, int]] = field(default_factory=list)
    differs: list[tuple[dict[str, object], dict[str, Any]]] = field(default_factory=list)
    unknown_to_ledger: list[str] = field(default_factory=list)
    torn_lines: list[str] = field(default_factory=list)  # file:line, skipped
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.missing and not self.doubled and not self.differs

    def lines(self) -> list[str]:
        out = [*self.notes, f"checked {self.checked} delivered records"]
        out += [f"MISSING {orjson.dumps(m).decode()}" for m in self.missing]
        out += [f"DOUBLED {key} x{count}" for key, count in self.doubled]
        out += [
            f"DIFFERS {orjson.dumps(sent).decode()} held {orjson.dumps(held).decode()}"
            for sent, held in self.differs
        ]
        out += [f"unknown to the ledger: {key}" for key in self.unknown_to_ledger]
        out += [f"skipped a torn line of the deliveries file: {where}" for where in self.torn_lines]
        out.append(
            "clean"
            if self.clean
            else f"{len(self.missing)} missing, {len(self.doubled)} doubled, "
            f"{len(self.differs)} differ"
        )
        return out


async def reconcile(config: Config, since: str, until: str, now: float | None = None) -> Report:
    start, end = instant(since), instant(until)
    report = Report()
    latest = latest_end(time.time() if now is None else now)
    if end > latest:
        report.notes.append(
            f"until {until} is not in the past: reading up to {rfc3339(latest)} "
            "(Paigo refuses reads that end after now)"
        )
        end = latest
    delivered: dict[str, dict[str, object]] = {}
    deliveries = read_deliveries(config.spool.dir)
    for line in deliveries.lines:
        if start <= instant(str(line["t"])) < end:
            delivered.setdefault(str(line["k"]), line)
    by_customer: dict[str, list[dict[str, object]]] = {}
    for line in delivered.values():
        by_customer.setdefault(str(line["c"]), []).append(line)
    report.checked, report.torn_lines = len(delivered), deliveries.torn
    upstream = config.upstream
    async with aiohttp.ClientSession() as session:
        tokens = TokenManager(upstream, session)
        uplink = Uplink(session, upstream.url, upstream.request_timeout_s * 6)
        for customer, lines in sorted(by_customer.items()):
            held: dict[str, list[dict[str, Any]]] = {}
            for window in chunks(start, end, upstream.read_chunk_s):
                groups = await read_usage_refreshing(
                    uplink, tokens, upstream.read_base, customer, window
                )
                for stamp, found in by_stamp(groups, upstream.id_key).items():
                    held.setdefault(stamp, []).extend(found)
            _compare(report, lines, held, delivered)
    return report


def _compare(
    report: Report,
    lines: list[dict[str, object]],
    held: dict[str, list[dict[str, Any]]],
    delivered: dict[str, dict[str, object]],
) -> None:
    """One customer's delivered lines against the entries Paigo holds, by stamp."""
    for line in lines:
        key = str(line["k"])
        found = held.get(key, [])
        judged = verdict({"timestamp": line["t"], "recordValue": line["v"]}, found)
        if judged is Verdict.MISSING:
            report.missing.append(line)
        elif judged is Verdict.DOUBLED:
            report.doubled.append((key, len(found)))
        elif judged is Verdict.DIFFERS:
            report.differs.append((line, found[0]))
    report.unknown_to_ledger += sorted(key for key in held if key not in delivered)
