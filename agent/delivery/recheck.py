"""Effectively-once delivery: never send again what Paigo may already hold.

Paigo's `/usage` has no idempotency key. When a send ends without a clear answer (a
timeout or a reset after the request may have been written, a 500, 502 or 504), the
record is *unknown*: it is not sent again blindly. After `upstream.unknown_settle_s`
(Paigo writes after its 201, asynchronously; its own tests wait 5 s) and once the record's
instant can be read (`agent.delivery.reads.check_window`: a read never ends in the
future), the agent reads the customer's raw usage a second either side of the record and
looks for its stamp (`metadata[upstream.id_key]`):

* found: acknowledged as delivered, counted in `usage_agent_duplicates_prevented_total`
  (a stamp found with another value or instant is logged, and still counts as found: the
  record was there, and a resend could double it);
* not found: sent again, byte-identical (should the first write land after the check,
  Paigo's store overwrites the identical point rather than doubling it);
* the read fails: the record stays unknown and the check is retried with backoff. A 401 or
  403 gets one shared token refresh and the read again (`read_usage_refreshing`).

The ledger (`agent.delivery.ledger`) makes this survive crashes: the sender marks a record
before its first send, and a marked record found in the spool after a restart starts out
unknown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.config import UpstreamConfig
from agent.delivery.auth import TokenError, Tokens
from agent.delivery.ledger import Ledger
from agent.delivery.reads import Match, check_window, compare, stamped
from agent.delivery.uplink import REFUSED_TOKEN, LookupFailed, Upstream, read_usage_refreshing
from agent.logs import Throttled

log = logging.getLogger(__name__)


class Unsure(Protocol):
    """What the resolver needs of a record in flight."""

    seq: int
    unknown_since: float | None

    @property
    def id(self) -> str: ...

    @property
    def fields(self) -> dict[str, object]: ...

    @property
    def customer(self) -> str: ...

    @property
    def dimension(self) -> str: ...


@dataclass
class Check:
    """What one check found: the indexes of the records Paigo holds, whether a read failed
    (and whether the read API refused even a fresh token, 401/403), and how long until the
    records that cannot be read yet can be (0: none)."""

    found: list[int] = field(default_factory=list)
    failed: bool = False  # a read failed: check again after a backoff
    token_refused: bool = False
    wait_s: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed and not self.wait_s


class Resolver:
    def __init__(
        self,
        uplink: Upstream,
        tokens: Tokens,
        ledger: Ledger,
        config: UpstreamConfig,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._uplink = uplink
        self._tokens = tokens
        self._ledger = ledger
        self._config = config
        self._wall_clock = wall_clock
        self.duplicates_prevented = 0
        self.unknown_outcomes = 0
        self.checks_failed = 0
        self._failed = Throttled(log, "could not check a record at the upstream")
        self._differs = Throttled(log, "a record's stamp was found with other fields")

    def starts_unknown(self, seq: int) -> bool:
        """A record marked before a crash and still in the spool may have been delivered."""
        return seq in self._ledger.maybe_sent

    def became_unknown(self, items: list[Unsure], now: float) -> None:
        for item in items:
            item.unknown_since = now
        self.unknown_outcomes += len(items)

    async def check(self, items: list[Unsure]) -> Check:
        """Ask Paigo about each unknown record of `items`; the ones found not to be there
        are no longer unknown."""
        result = Check()
        for index, item in enumerate(items):
            if item.unknown_since is None:
                continue
            window = check_window(str(item.fields["timestamp"]), self._wall_clock())
            if isinstance(window, float):  # its instant is not readable yet
                result.wait_s = max(result.wait_s, window)
                continue
            try:
                groups = await read_usage_refreshing(
                    self._uplink, self._tokens, self._config.read_base, item.customer, window
                )
            except (LookupFailed, TokenError) as exc:
                self.checks_failed += 1
                self._failed.warning("record %s: %s", item.id, exc)
                result.failed = True
                result.token_refused |= getattr(exc, "status", 0) in REFUSED_TOKEN
                continue
            if self._held(item, groups):
                result.found.append(index)
                self.duplicates_prevented += 1
            else:
                item.unknown_since = None
        return result

    def _held(self, item: Unsure, groups: list[dict[str, Any]]) -> bool:
        for stamp, usage in stamped(groups, self._config.id_key, item.dimension):
            if stamp != item.id:
                continue
            if compare(item.fields, usage) is Match.DIFFERS:
                self._differs.warning("record %s: sent %s, read %s", item.id, item.fields, usage)
            return True
        return False
