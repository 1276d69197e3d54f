"""The usage-record contract: Paigo's schema, field by field, and the stored envelope."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import SpoolConfig
from agent.errors import RecordInvalid
from agent.records import (
    Envelope,
    check_record,
    decode_envelope,
    encode_envelope,
    encode_envelopes,
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
        with_(timestamp="2021-01-23T01:23:45+02:00"),
        with_(timestamp="2021-01-23t01:23:45z"),
        with_(timestamp="2024-02-29T23:59:59-11:30"),
        with_(recordValue="0.0"),
        with_(recordValue="1e3"),
        with_(recordValue="-2.5"),
        with_(recordValue=12),
        with_(recordValue=10**30),
        with_(metadata={}),
        with_(metadata={"region": "eu", "count": 3, "ratio": 0.5, "ok": True}),
    ],
)
def test_valid_records_pass(record: dict[str, object]):
    assert check_record(record, 0) == []


@pytest.mark.parametrize(
    ("record", "field", "words"),
    [
        (with_(timestamp="2021-01-23"), "timestamp", "RFC 3339"),
        (with_(timestamp="2021-01-23T01:23:45"), "timestamp", "offset"),
        (with_(timestamp="21-01-23T01:23:45Z"), "timestamp", "4-digit year"),
        (with_(timestamp="2021-13-01T00:00:00Z"), "timestamp", "not a real date"),
        (with_(timestamp="2021-02-30T00:00:00Z"), "timestamp", "not a real date"),
        (with_(timestamp="2021-01-01T24:00:00Z"), "timestamp", "not a real date"),
        (with_(timestamp="2021-01-01T00:00:00+25:00"), "timestamp", "offset must be"),
        (with_(timestamp=1611365025), "timestamp", "must be a string"),
        (with_(timestamp=...), "timestamp", "required"),
        (with_(customerId=""), "customerId", "must not be empty"),
        (with_(customerId=7), "customerId", "must be a string, not a number"),
        (with_(customerId="x" * 257), "customerId", "at most 256"),
        (with_(dimensionId=None), "dimensionId", "not null"),
        (with_(dimensionId=...), "dimensionId", "required"),
        (with_(recordValue=12.5), "recordValue", "sent as a string"),
        (with_(recordValue="NaN"), "recordValue", "not a decimal number"),
        (with_(recordValue="Infinity"), "recordValue", "not a decimal number"),
        (with_(recordValue=""), "recordValue", "must not be empty"),
        (with_(recordValue="12abc"), "recordValue", "not a decimal number"),
        (with_(recordValue="1e999"), "recordValue", "finite"),
        (with_(recordValue=True), "recordValue", "boolean"),
        (with_(recordValue=[1]), "recordValue", "not an array"),
        (with_(recordValue=...), "recordValue", "required"),
        (with_(metadata=[]), "metadata", "must be an object"),
        (with_(metadata={"a": {"b": 1}}), "metadata.a", "string, number or boolean"),
        (with_(metadata={"a": None}), "metadata.a", "string, number or boolean"),
        (with_(metadata={"": "x"}), "metadata.", "1 to 128"),
        (with_(metadata={"a": "x" * 1025}), "metadata.a", "at most 1024"),
        (with_(metadata={f"k{i}": i for i in range(33)}), "metadata", "at most 32"),
        (with_(customerID="c-1"), "customerID", "did you mean 'customerId'"),
        (with_(recordvalue="1"), "recordvalue", "did you mean 'recordValue'"),
        (with_(dimensionID="d"), "dimensionID", "did you mean 'dimensionId'"),
        (with_(colour="red"), "colour", "known fields: timestamp"),
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


def test_metadata_over_the_byte_limit_is_refused():
    big = {f"k{i}": "v" * 1000 for i in range(9)}
    problems = check_record(with_(metadata=big), 0)
    assert [p.field for p in problems] == ["metadata"]
    assert "8192 bytes" in problems[0].message


@pytest.mark.parametrize("char", ["a", "\x01", '"', "\u00e9", "\U0001f600"])
def test_metadata_is_measured_as_json_however_its_characters_are_encoded(char: str):
    for length in range(1, 1025, 7):
        metadata = {f"k{i}": char * length for i in range(32)}
        too_large = len(orjson.dumps(metadata)) > 8192
        problems = check_record(with_(metadata=metadata), 0)
        assert any("bytes as JSON" in p.message for p in problems) == too_large, length


def test_the_reserved_metadata_key_is_refused_when_one_is_set():
    record = with_(metadata={"usageAgentRecordId": "mine"})
    assert check_record(record, 0) == []
    [problem] = check_record(record, 0, reserved_key="usageAgentRecordId")
    assert "reserved" in problem.message


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
