"""The usage-record contract: Paigo's schema, field by field, and the stored envelope."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.config import SpoolConfig
from agent.errors import RecordInvalid
from agent.records import (
    Envelope,
    Rules,
    check_record,
    decode_envelope,
    encode_envelope,
    encode_envelopes,
    is_plainly_valid,
    normalise,
    validate_records,
)
from agent.spool import Spool

GOOD = {
    "timestamp": "2021-01-23T01:23:45Z",
    "customerId": "c-1",
    "dimensionId": "d-1",
    "recordValue": "12",
}


def with_(**changes: object) -> dict[str, object]:
    record = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return record


@pytest.mark.parametrize(
    "record",
    [
        GOOD,
        with_(timestamp="2021-01-23T01:23:45.123456Z"),
        with_(timestamp="2021-01-23T01:23:45.123456789012Z"),  # any fraction length
        with_(timestamp="2021-01-23T01:23:45+02:00"),
        with_(timestamp="2021-01-23t01:23:45z"),
        with_(timestamp="2021-01-23 01:23:45Z"),  # a space, as Paigo's validator takes
        with_(timestamp="2024-02-29T23:59:59-11:30"),
        with_(recordValue="0.0"),
        with_(recordValue="-2.5"),
        with_(recordValue="+7"),
        with_(recordValue=".5"),
        with_(recordValue="-.5"),
        with_(recordValue="1" * 400),  # no length rule at Paigo
        with_(recordValue=12),
        with_(recordValue=10**30),
        with_(metadata={}),
        with_(metadata=None),
        with_(metadata={"region": "eu", "count": 3, "ratio": 0.5, "ok": True}),
        with_(metadata={"nested": {"a": [1, 2, {"b": None}]}, "empty": None}),
        with_(metadata={f"k{i}": i for i in range(100)}),  # no key count rule at Paigo
    ],
)
def test_valid_records_pass(record: dict[str, object]):
    assert check_record(record, 0) == []


@pytest.mark.parametrize(
    ("record", "field", "words"),
    [
        (with_(timestamp="2021-01-23"), "timestamp", "RFC 3339"),
        (with_(timestamp="2021-01-23T01:23:45"), "timestamp", "offset"),
        (with_(timestamp="2021-01-23T01:23Z"), "timestamp", "RFC 3339"),
        (with_(timestamp="2021-01-23_01:23:45Z"), "timestamp", "RFC 3339"),
        (with_(timestamp="21-01-23T01:23:45Z"), "timestamp", "4-digit year"),
        (with_(timestamp="2021-01-23T01:23:45.Z"), "timestamp", "RFC 3339"),
        (with_(timestamp="2021-01-23T01:23:45+0200"), "timestamp", "RFC 3339"),
        (with_(timestamp="2021-13-01T00:00:00Z"), "timestamp", "not a real date"),
        (with_(timestamp="2021-02-30T00:00:00Z"), "timestamp", "not a real date"),
        (with_(timestamp="2016-12-31T23:59:60Z"), "timestamp", "not a real date"),
        (with_(timestamp="2021-01-01T24:00:00Z"), "timestamp", "not a real date"),
        (with_(timestamp="2021-01-01T00:00:00+25:00"), "timestamp", "offset must be"),
        (with_(timestamp=1611365025), "timestamp", "must be a string"),
        (with_(timestamp=...), "timestamp", "required"),
        (with_(customerId=""), "customerId", "must not be empty"),
        (with_(customerId=7), "customerId", "must be a string, not a number"),
        (with_(customerId="x" * 257), "customerId", "at most 256"),
        (with_(dimensionId=None), "dimensionId", "not null"),
        (with_(dimensionId=...), "dimensionId", "required"),
        (with_(recordValue=12.5), "recordValue", 'sent as a string: write "12.5"'),
        (with_(recordValue=1e25), "recordValue", 'write "10000000000000000000000000"'),
        (with_(recordValue="1e3"), "recordValue", 'write "1000"'),
        (with_(recordValue="5."), "recordValue", 'write "5"'),
        (with_(recordValue="1.5E-3"), "recordValue", 'write "0.0015"'),
        (with_(recordValue=" 5"), "recordValue", 'write "5"'),
        (with_(recordValue="1,5"), "recordValue", "digits with an optional sign"),
        (with_(recordValue="0x10"), "recordValue", "not a number as Paigo takes it"),
        (with_(recordValue="NaN"), "recordValue", "not a number as Paigo takes it"),
        (with_(recordValue="Infinity"), "recordValue", "not a number as Paigo takes it"),
        (with_(recordValue="1e999"), "recordValue", "not a number as Paigo takes it"),
        (with_(recordValue=""), "recordValue", "must not be empty"),
        (with_(recordValue="12abc"), "recordValue", "not a number as Paigo takes it"),
        (with_(recordValue=True), "recordValue", "boolean"),
        (with_(recordValue=[1]), "recordValue", "not an array"),
        (with_(recordValue=...), "recordValue", "required"),
        (with_(metadata=[]), "metadata", "must be an object, not an array"),
        (with_(metadata="a=b"), "metadata", "must be an object, not a string"),
        (with_(metadata={"k": "v" * 16384}), "metadata", "at most 16384 bytes as JSON"),
        (with_(metadata={"k": [2**64]}), "metadata", "beyond 64 bits; send it as a string"),
        (with_(customerID="c-1"), "customerID", "did you mean 'customerId'"),
        (with_(recordvalue="1"), "recordvalue", "did you mean 'recordValue'"),
        (with_(dimensionID="d"), "dimensionID", "did you mean 'dimensionId'"),
        (with_(colour="red"), "colour", "known fields: timestamp"),
        (with_(colour="red"), "colour", 'ingest.unknown_fields = "drop"'),
    ],
)
def test_invalid_records_are_refused_naming_the_field_and_why(
    record: dict[str, object], field: str, words: str
):
    problems = check_record(record, 3)
    assert any(p.field == field and words in p.message for p in problems), problems
    assert all(p.index == 3 for p in problems)


def test_a_record_that_is_not_an_object_is_refused():
    [problem] = check_record(["not", "a", "record"], 0)
    assert "must be a JSON object, not an array" in problem.message


def test_the_metadata_bound_is_the_deployments_and_measured_as_json():
    metadata = {"k": "\u00e9" * 100}  # 2 bytes a character in UTF-8
    size = len(orjson.dumps(metadata))
    assert check_record(with_(metadata=metadata), 0, Rules(max_metadata_bytes=size)) == []
    [problem] = check_record(with_(metadata=metadata), 0, Rules(max_metadata_bytes=size - 1))
    assert problem.field == "metadata" and f"at most {size - 1} bytes" in problem.message


def test_the_reserved_metadata_key_is_refused_when_one_is_set():
    record = with_(metadata={"usageAgentRecordId": "mine"})
    assert check_record(record, 0) == []
    [problem] = check_record(record, 0, Rules(reserved_key="usageAgentRecordId"))
    assert "reserved" in problem.message


def test_unknown_fields_are_dropped_the_way_paigo_strips_them_when_configured():
    record = {**with_(metadata={"colour": "red"}), "colour": "red", "customerID": "x"}
    [stored] = validate_records([record], Rules(drop_unknown=True))
    assert stored == with_(metadata={"colour": "red"})
    with pytest.raises(RecordInvalid):
        validate_records([record])


def test_null_metadata_is_taken_as_none():
    [stored] = validate_records([with_(metadata=None)])
    assert stored == GOOD


def test_validation_reports_every_bad_record_of_a_request():
    with pytest.raises(RecordInvalid) as caught:
        validate_records([GOOD, with_(recordValue=1.5), GOOD, with_(customerId="")])
    assert [(p.index, p.field) for p in caught.value.problems] == [
        (1, "recordValue"),
        (3, "customerId"),
    ]


def test_an_integer_record_value_is_stored_as_its_exact_string_and_nothing_else_changes():
    record = {"recordValue": 10**30, **{k: v for k, v in GOOD.items() if k != "recordValue"}}
    [stored] = validate_records([record])
    assert stored["recordValue"] == "1000000000000000000000000000000"
    assert list(stored) == list(record)  # the app's field order


def test_a_batch_is_stored_in_order_with_only_the_records_that_need_it_changed():
    batch = [GOOD, with_(recordValue=12), with_(metadata=None), with_(metadata={"a": 1})]
    assert validate_records(list(batch)) == [
        GOOD,
        with_(recordValue="12"),
        GOOD,
        with_(metadata={"a": 1}),
    ]


# --- the hot path gives the rules' answers ------------------------------------------------

number_like = st.text(alphabet="0123456789.+-eE x\u0661\u00b2_", max_size=8)
mixed_records = st.fixed_dictionaries(  # valid choices first: hypothesis shrinks towards them
    {
        "timestamp": st.sampled_from(["2021-01-23T01:23:45Z", "2021-02-30T00:00:00Z", 7]),
        "customerId": st.sampled_from(["c-1", "", 7, "x" * 257]),
        "dimensionId": st.sampled_from(["d-1", None]),
        "recordValue": st.one_of(
            st.sampled_from(["12", "-2.5", ".5", 12, 10**30, 1.5, True, None]), number_like
        ),
    },
    optional={
        "metadata": st.sampled_from(
            [{}, {"a": 1}, None, [], {"usageAgentRecordId": "x"}, {"k": "v" * 16384}]
        ),
        "colour": st.just("red"),
        "customerID": st.just("c-1"),
    },
)


@settings(max_examples=500)
@given(record=mixed_records)
@example(record=with_(colour="red"))
@example(record={**with_(metadata={}), "colour": "red"})
@example(record=with_(metadata=None))
@example(record=with_(recordValue=12))
@example(record=with_(customerId=...))
def test_a_plainly_valid_record_is_valid_and_stored_as_it_is(record: dict[str, object]):
    """The hot path takes a record as it is only when the full check finds nothing wrong
    and its stored form is the record itself; every other record gets the full check."""
    rules = Rules(reserved_key="usageAgentRecordId")
    if is_plainly_valid(record, rules):
        assert check_record(record, 0, rules) == []
        assert normalise(record) == record
    if check_record(record, 0, rules):
        with pytest.raises(RecordInvalid):
            validate_records([record], rules)
    else:
        assert validate_records([record], rules) == [normalise(record)]


def test_the_envelope_round_trips():
    envelope = Envelope(orjson.dumps(GOOD), 1_700_000_000_123, invoice=True, key="idem-1:0")
    assert decode_envelope(encode_envelope(envelope)) == envelope
    assert decode_envelope(encode_envelope(envelope)).record() == GOOD


def test_an_envelope_of_another_version_is_refused():
    data = bytearray(encode_envelope(Envelope(b"{}", 0)))
    data[0] = 9
    with pytest.raises(ValueError, match="version 9"):
        decode_envelope(bytes(data))


# --- property: valid records survive the spool byte for byte ------------------------------

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
timestamps = st.builds(
    lambda d, frac, off: f"{d.year:04d}-" + d.strftime("%m-%dT%H:%M:%S") + frac + off,
    st.datetimes(),
    st.sampled_from(["", ".5", ".123456789"]),
    st.sampled_from(["Z", "+00:00", "-05:30", "+14:00"]),
)
values = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=6).map(str),
)
metadata_values = st.one_of(
    text,
    st.integers(-(2**53), 2**53),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
records = st.fixed_dictionaries(
    {"timestamp": timestamps, "customerId": text, "dimensionId": text, "recordValue": values},
    optional={"metadata": st.dictionaries(text, metadata_values, max_size=5)},
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(records, min_size=1, max_size=20))
def test_valid_records_round_trip_through_the_spool_byte_identical(
    tmp_path: Path, spool_config: SpoolConfig, batch: list[dict[str, object]]
):
    stored = [orjson.dumps(r) for r in validate_records(list(batch))]
    envelopes = [encode_envelope(Envelope(b, 1)) for b in stored]

    async def round_trip() -> list[bytes]:
        spool = Spool(replace(spool_config, dir=tempfile.mkdtemp(dir=tmp_path)))
        spool.open()
        await spool.start()
        try:
            await spool.append(envelopes)
            return [decode_envelope(e.payload).record_json for e in await spool.read(100)]
        finally:
            await spool.close()

    assert asyncio.run(round_trip()) == stored
    assert [orjson.loads(b) for b in stored] == batch


@pytest.mark.parametrize("key", ["", "order-77"])
def test_a_requests_envelopes_are_each_records_envelope(key: str):
    records = [b'{"n":1}', b'{"n":2}', b'{"n":3}']
    expected = [
        encode_envelope(Envelope(r, 1_700_000_000_123, True, f"{key}:{i}" if key else ""))
        for i, r in enumerate(records)
    ]
    assert encode_envelopes(records, 1_700_000_000_123, True, key) == expected
