"""A record on its way upstream: what is sent, and what the sender knows about its sends.

`make_item` turns a spool entry into an item and its lane key (pure: no I/O). The body
sent upstream is the app's record, byte for byte, unless an id key is configured: then
the record's stable id is added to its metadata under that key.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from agent.delivery.lanes import LaneKey
from agent.records import Envelope, decode_envelope


@dataclass(slots=True)
class Item:
    seq: int
    envelope: Envelope
    fields: dict[str, object]  # the record as the app sent it, parsed once
    body: bytes  # the JSON sent upstream for this record
    rid: str = ""  # the stable id sent in metadata ("" when no id key is configured)
    attempts: int = 0
    fresh_token_tried: bool = False
    held: bool = False  # a worker has it (between take and finish or put-back)
    unknown_since: float | None = None  # effectively-once: its last outcome is unknown
    marked: bool = False  # effectively-once: noted in the ledger as possibly sent

    @property
    def record_id(self) -> str:
        return self.rid

    def record(self) -> dict[str, object]:
        return self.fields


def stable_id(envelope: Envelope, agent_id: str) -> str:
    """The record's stable id: the app's idempotency key for it, else the agent's id."""
    return envelope.key or agent_id


def make_item(
    seq: int, payload: bytes, agent_id: str, id_key: str, ordered_dims: frozenset[str]
) -> tuple[LaneKey, Item]:
    """The item for a spool entry, and its lane: ordered for `invoice=true` records and
    for the dimensions in `ordered_dims`. ValueError, KeyError or TypeError when the
    payload is not a readable record."""
    envelope = decode_envelope(payload)
    record = envelope.record()
    customer, dimension = str(record["customerId"]), str(record["dimensionId"])
    item = Item(seq, envelope, record, envelope.record_json)
    if id_key:
        item.rid = stable_id(envelope, agent_id)
        metadata = dict(record.get("metadata") or {})  # type: ignore[call-overload]
        metadata[id_key] = item.rid
        item.body = orjson.dumps({**record, "metadata": metadata})
    ordered = envelope.invoice or dimension in ordered_dims
    return (customer, dimension, ordered), item
