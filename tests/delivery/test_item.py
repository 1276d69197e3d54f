"""The body sent upstream for a record: the app's record with its stable id stamped in."""

from __future__ import annotations

import json

import orjson
from hypothesis import given
from hypothesis import strategies as st

from agent.delivery.item import make_item, stamped_body
from agent.records import Envelope, encode_envelope

KEY = "usageAgentId"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
fields = st.fixed_dictionaries(
    {
        "timestamp": st.just("2026-12-01T08:00:00.000Z"),
        "customerId": st.text(min_size=1, max_size=8),
        "dimensionId": st.text(min_size=1, max_size=8),
        "recordValue": st.just("12.5"),
    },
    optional={
        "metadata": st.dictionaries(
            st.text(max_size=5).filter(lambda k: k != KEY), json_values, max_size=3
        )
    },
)


def fresh_encoding(record: dict[str, object], record_id: str) -> bytes:
    metadata = dict(record.get("metadata") or {})  # type: ignore[call-overload]
    metadata[KEY] = record_id
    return orjson.dumps({**record, "metadata": metadata})


@given(fields, st.permutations(range(5)), st.text(min_size=1, max_size=12))
def test_the_stamp_gives_the_bytes_of_a_fresh_encoding_whatever_the_field_order(
    record: dict[str, object], order: list[int], record_id: str
) -> None:
    names = list(record)
    reordered = {names[i]: record[names[i]] for i in order if i < len(names)}
    stored = orjson.dumps(reordered)  # as ingest stores it: compact, the app's order
    assert stamped_body(stored, orjson.loads(stored), KEY, record_id) == fresh_encoding(
        reordered, record_id
    )


@given(fields, st.text(min_size=1, max_size=12))
def test_json_with_spaces_gets_the_same_record_with_the_stamp(
    record: dict[str, object], record_id: str
) -> None:
    for stored in (json.dumps(record).encode(), json.dumps(record, indent=1).encode()):
        body = stamped_body(stored, orjson.loads(stored), KEY, record_id)
        assert orjson.loads(body) == orjson.loads(fresh_encoding(record, record_id))


def test_an_item_carries_its_stable_id_in_its_metadata() -> None:
    record = {"timestamp": "2026-12-01T08:00:00Z", "customerId": "c", "dimensionId": "d"}
    record |= {"recordValue": "1", "metadata": {}}
    payload = encode_envelope(Envelope(orjson.dumps(record), 0))
    _, item = make_item(7, payload, "spool", KEY, frozenset())
    assert item.id == "spool-7"
    assert orjson.loads(item.body)["metadata"] == {KEY: "spool-7"}
