"""A record on its way upstream: what is sent, and what the sender knows about its sends.

`make_item` turns a spool entry into an item and its lane key (pure: no I/O). The body
sent upstream is the app's record, byte for byte, unless an id key is configured: then
the record's stable id (`agent.records`) is added to its metadata under that key. The body
is made once, so every resend is byte-identical to the first send.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import orjson

from agent.delivery.lanes import LaneKey
from agent.delivery.rollup import Formation
from agent.records import Envelope, Record, decode_envelope, stable_id


@dataclass(slots=True)
class Item:
    seq: int
    id: str  # the record's stable id
    envelope: Envelope
    fields: dict[str, object]  # the record as the app sent it, parsed once
    body: bytes  # the JSON sent upstream for this record
    attempts: int = 0
    failures: int = 0  # sends in a row that did not settle it: its own backoff grows
    held: bool = False  # a worker has it (between take and leave or put-back)
    unknown_since: float | None = None  # effectively-once: its last outcome is unknown
    marked: bool = False  # in the ledger as possibly sent (its mark, or a rollup's formation)
    rollup: Formation | None = None  # a rollup: the records it holds (`agent.delivery.rollup`)

    @property
    def seqs(self) -> list[int]:
        """The spool entries that leave with it: its own, or its rollup's members'."""
        return self.rollup.seqs if self.rollup is not None else [self.seq]

    @property
    def customer(self) -> str:
        return str(self.fields["customerId"])

    @property
    def dimension(self) -> str:
        return str(self.fields["dimensionId"])


def make_item(
    seq: int, payload: bytes, spool_id: str, id_key: str, ordered_dims: frozenset[str]
) -> tuple[LaneKey, Item]:
    """The item for a spool entry, and its lane: ordered for `invoice=true` records and
    for the dimensions in `ordered_dims`. ValueError, KeyError or TypeError when the
    payload is not a readable record."""
    envelope = decode_envelope(payload)
    record = envelope.record()
    return item_of(
        seq, envelope, record, spool_id=spool_id, id_key=id_key, ordered_dims=ordered_dims
    )


def item_of(
    seq: int,
    envelope: Envelope,
    record: Record,
    *,
    spool_id: str,
    id_key: str,
    ordered_dims: frozenset[str],
) -> tuple[LaneKey, Item]:
    """`make_item` for an entry already decoded."""
    customer, dimension = str(record["customerId"]), str(record["dimensionId"])
    item = Item(seq, stable_id(envelope, spool_id, seq), envelope, record, envelope.record_json)
    if id_key:
        item.body = stamped_body(envelope.record_json, record, id_key, item.id)
    ordered = envelope.invoice or dimension in ordered_dims
    return (customer, dimension, ordered), item


def stamped_body(record_json: bytes, record: Record, id_key: str, record_id: str) -> bytes:
    """The record's JSON with `record_id` added to its metadata under `id_key` (last).

    The JSON the spool holds is compact, as ingest wrote it, with the app's field order.
    When metadata is absent or is the last field, the stamp is spliced into those bytes
    (the same bytes a fresh encoding gives, at a fraction of the cost: this runs for every
    record); any other shape is encoded afresh from `record`."""
    stamp = _key_json(id_key) + orjson.dumps(record_id)
    metadata = record.get("metadata")
    if metadata is None:
        if "metadata" not in record and record_json[-1:] == b"}":
            return b"".join((record_json[:-1], b',"metadata":{', stamp, b"}}"))
    elif (
        type(metadata) is dict
        and record_json[-2:] == b"}}"
        and next(reversed(record)) == "metadata"
    ):
        if metadata:
            return b"".join((record_json[:-2], b",", stamp, b"}}"))
        if record_json[-3:] == b"{}}":
            return b"".join((record_json[:-2], stamp, b"}}"))
    fresh = dict(metadata or {})  # type: ignore[call-overload]
    fresh[id_key] = record_id
    return orjson.dumps({**record, "metadata": fresh})


@functools.cache
def _key_json(id_key: str) -> bytes:
    return orjson.dumps(id_key) + b":"


def rollup_item(
    formation: Formation, id_key: str, received_at_ms: int, ordered_dims: frozenset[str]
) -> tuple[LaneKey, Item]:
    """The item that sends a rollup: its body exactly as the ledger holds it."""
    record = formation.record(id_key)
    envelope = Envelope(orjson.dumps(record), received_at_ms)
    item = Item(min(formation.seqs), formation.id, envelope, record, formation.body)
    item.rollup = formation
    dimension = str(record["dimensionId"])
    return (str(record["customerId"]), dimension, dimension in ordered_dims), item
