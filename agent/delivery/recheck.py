"""Effectively-once delivery: never send again what Paigo may already hold.

Paigo's `/usage` has no idempotency key. When a send ends without a clear answer (a
timeout or a reset after the request may have been written, a 500, 502 or 504), the
record is *unknown*: it is not sent again blindly. After `upstream.unknown_settle_s` (for
Paigo's own write delay) the agent asks Paigo's raw usage read API whether a record with
its stable id (in `metadata[upstream.id_key]`) is there, in a one-second window either
side of the record's timestamp:

* found: acknowledged as delivered, counted in `usage_agent_duplicates_prevented_total`;
* not found: sent again;
* the check itself fails: the record stays unknown and the check is retried with backoff.

The ledger (`agent.delivery.ledger`) makes this survive crashes: a record is marked before its
first send, and a marked record found in the spool after a restart starts out unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agent.config import UpstreamConfig
from agent.delivery.ledger import Ledger
from agent.delivery.uplink import LookupFailed, Upstream
from agent.logs import Throttled

log = logging.getLogger(__name__)


class Unsure(Protocol):
    """What the resolver needs of a record in flight."""

    seq: int
    unknown_since: float | None
    marked: bool

    @property
    def id(self) -> str: ...

    @property
    def fields(self) -> dict[str, object]: ...


@dataclass
class Check:
    """What one check found: the indexes of the records Paigo holds, whether every unknown
    record could be checked, and whether the read API refused the token (401/403)."""

    found: list[int] = field(default_factory=list)
    complete: bool = True
    token_refused: bool = False


class Resolver:
    def __init__(
        self, uplink: Upstream, ledger: Ledger, config: UpstreamConfig, clock: Callable[[], float]
    ) -> None:
        self._uplink = uplink
        self._ledger = ledger
        self._config = config
        self._clock = clock
        self.duplicates_prevented = 0
        self.unknown_outcomes = 0
        self.checks_failed = 0
        self._failed = Throttled(log, "could not check a record at the upstream")

    def starts_unknown(self, seq: int) -> bool:
        """A record marked before a crash and still in the spool may have been delivered."""
        return seq in self._ledger.maybe_sent

    def became_unknown(self, items: list[Unsure]) -> None:
        now = self._clock()
        for item in items:
            item.unknown_since = now
        self.unknown_outcomes += len(items)

    async def check(self, items: list[Unsure], token: str) -> Check:
        """Ask Paigo about each unknown record of `items`; the ones found not to be there
        are no longer unknown."""
        result = Check()
        for index, item in enumerate(items):
            if item.unknown_since is None:
                continue
            try:
                held = await self._uplink.find(
                    self._config.read_base, token, item.fields, self._config.id_key, item.id
                )
            except LookupFailed as exc:
                self.checks_failed += 1
                self._failed.warning("record %s: %s", item.id, exc)
                result.complete = False
                result.token_refused |= exc.status in (401, 403)
                continue
            if held:
                result.found.append(index)
                self.duplicates_prevented += 1
            else:
                item.unknown_since = None
        return result

    async def mark(self, items: list[Unsure]) -> None:
        """Note durably, before their first send, that these records are going out."""
        new = [item for item in items if not item.marked]
        if new:
            await self._ledger.mark([item.seq for item in new])
            for item in new:
                item.marked = True
