"""The one way a record leaves the agent's care: `Exits.leave(items, reason)`.

A record is acknowledged in the spool (and so, in time, deleted from disk) only in
`leave`, and only for one of four reasons (`dead_letter` and `unreadable` write the
letter first, then leave through it):

| reason          | what happened                                       | written first        |
|-----------------|-----------------------------------------------------|----------------------|
| `delivered`     | the upstream answered 2xx                           | deliveries file,     |
|                 |                                                     | verify spool         |
| `found`         | an unknown outcome, and Paigo was found to hold it  | deliveries file,     |
|                 |                                                     | verify spool         |
| `dead_lettered` | the upstream refused it for good (400, 422, 413)    | dead letter, fsynced |
| `unreadable`    | a spool entry that is not a record this agent reads | dead letter, fsynced |

With verification on (`agent.delivery.verify`), delivered and found records are
acknowledged by the verifier, once their verify-spool entry is durable.

A record that may have been sent before a crash (marked in the ledger, still in the spool)
is *undecided* from its admission until it leaves: its verify-spool entry may have been
written before the crash while its acknowledgement was not. The verifier leaves such a
record to the usage spool's effectively-once check (`Exits.undecided`): two paths that
each find it missing would each send it again.

A dead letter that cannot be written keeps its record unacknowledged (`dead_letter`
returns False): it is tried again, never lost. The counts by reason are the
`usage_agent_records_left_total` metric and `/status`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import Protocol

from agent.delivery.deadletter import DeadLetter, DeadLetterFile
from agent.delivery.item import Item
from agent.delivery.ledger import Ledger
from agent.delivery.uplink import Reply
from agent.logs import Throttled
from agent.records import agent_record_ids

log = logging.getLogger(__name__)


class Reason(enum.Enum):
    DELIVERED = "delivered"
    FOUND = "found"
    DEAD_LETTERED = "dead_lettered"
    UNREADABLE = "unreadable"


class Acknowledging(Protocol):
    """What exits need of the spool."""

    spool_id: str

    def ack(self, seqs: Sequence[int]) -> None: ...


class Verifying(Protocol):
    """What exits need of the verifier."""

    def note(self, items: Sequence[Item]) -> None: ...


class Exits:
    def __init__(
        self,
        spool: Acknowledging,
        ledger: Ledger,
        dead_letters: DeadLetterFile,
        id_key: str,
        verifier: Verifying | None = None,
    ) -> None:
        self._spool = spool
        self._verifier = verifier
        self._ledger = ledger
        self._dead = dead_letters
        self._id_key = id_key
        self.counts: dict[Reason, int] = dict.fromkeys(Reason, 0)
        self.undecided: set[str] = set()  # ids: may have been sent before a restart, here still
        self._dead_letter_failed = Throttled(log, "could not write the dead-letter file")

    def leave(self, items: Sequence[Item], reason: Reason) -> None:
        """Take `items` out of the agent's care for `reason`: delivered and found records
        are noted for the deliveries file; all are acknowledged and counted."""
        seqs = [item.seq for item in items if item.rollup is None]
        for item in items:
            if item.rollup is not None:
                seqs += item.rollup.seqs  # a rollup leaves with its members
        self.counts[reason] += len(seqs)
        if self.undecided:
            self.undecided.difference_update(item.id for item in items)
        # without a stable id upstream there is nothing to reconcile or verify by
        if self._id_key and (reason is Reason.DELIVERED or reason is Reason.FOUND):
            spool_id = self._spool.spool_id
            self._ledger.note(
                [
                    (
                        item.id,
                        item.fields,
                        item.rollup.member_ids(spool_id) if item.rollup else None,
                    )
                    for item in items
                ]
            )
            if self._verifier is not None:
                self._verifier.note(items)  # acknowledged once kept for verification
                return
        self._spool.ack(seqs)

    async def dead_letter(self, items: Sequence[Item], reply: Reply) -> bool:
        """Write `items` to the dead-letter file (durably), then let them leave. False
        when the letters could not be written: the items stay."""
        if not await self._write_dead_letters([_letter(item, reply) for item in items]):
            return False
        log.error("upstream refused %d record(s) with %d: dead-lettered", len(items), reply.status)
        self.leave(items, Reason.DEAD_LETTERED)
        return True

    async def unreadable(self, seq: int, payload: bytes, error: Exception) -> bool:
        """A spool entry that is not a readable envelope (a bug, or a newer agent's
        format): kept in the dead-letter file as it is, never silently dropped."""
        [agent_id] = agent_record_ids(self._spool.spool_id, range(seq, seq + 1))
        letter = DeadLetter(agent_id, {"raw": payload.hex()}, False, 0, f"unreadable: {error}", 0)
        if not await self._write_dead_letters([letter]):
            return False
        self._spool.ack([seq])
        self.counts[Reason.UNREADABLE] += 1
        log.error("spool entry %d is not a readable record: dead-lettered as is", seq)
        return True

    async def _write_dead_letters(self, letters: list[DeadLetter]) -> bool:
        try:
            await self._dead.append(letters)
        except OSError as exc:
            self._dead_letter_failed.error("%s; the records stay in the spool", exc)
            return False
        return True


def _letter(item: Item, reply: Reply) -> DeadLetter:
    return DeadLetter(
        item.id,
        item.fields,
        item.envelope.invoice,
        reply.status,
        reply.body.decode(errors="replace"),
        item.attempts,
    )
