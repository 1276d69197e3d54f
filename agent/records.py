"""The usage record: Paigo's rules for it, checked field by field, and the form the agent stores.

A record is what an app sends and what Paigo's ``POST /usage`` takes. The rules are Paigo's
own, as its validator reads them (``../shared/PAIGO.md``), so that a 202 from the agent is
never followed by a 400 from Paigo, and nothing Paigo takes is refused here:

| field         | rule                                                                        |
|---------------|-----------------------------------------------------------------------------|
| `timestamp`   | required string, RFC 3339: 4-digit year, `T`, `t` or a space between date  |
|               | and time, seconds, optional fraction, `Z`, `z` or `±hh:mm`; the date and    |
|               | time must exist (Paigo's validator lets `:60` and `02-30` through, which it |
|               | then cannot store: refused here)                                            |
| `customerId`  | required non-empty string, at most `MAX_ID_CHARS` characters                |
| `dimensionId` | required non-empty string, at most `MAX_ID_CHARS` characters                |
| `recordValue` | required string matching Paigo's `^[+-]?([0-9]*[.])?[0-9]+$` (`"12"`,       |
|               | `"-2.5"`, `".5"`; not `"1e3"` or `"5."`, and the refusal says what to       |
|               | write instead); a JSON integer of any size is kept as its digits; a JSON    |
|               | number with a fraction is refused: binary floats lose precision             |
| `metadata`    | optional JSON object (null is taken as none), nested values of any kind     |
|               | allowed, at most `Rules.max_metadata_bytes` bytes as JSON; the agent's      |
|               | record-id key is reserved                                                   |

Any other top-level field is refused by name, with the known field it most resembles; with
`Rules.drop_unknown` it is dropped instead, the way Paigo strips it. Every problem names the
record's index in the request, the field and the reason.

The stored form (`Envelope`) wraps the record's JSON bytes, unchanged, with what the agent
adds: the time it was received and per-record options (Paigo's ``invoice=true``). Its
binary layout is in `encode_envelope`. Nothing here does I/O.
"""

from __future__ import annotations

import difflib
import re
import struct
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Final, cast

import orjson

from agent.errors import Problem, RecordInvalid

REQUIRED_FIELDS: Final = ("timestamp", "customerId", "dimensionId", "recordValue")
KNOWN_FIELDS: Final = (*REQUIRED_FIELDS, "metadata")
_KNOWN_SET: Final = frozenset(KNOWN_FIELDS)
MAX_ID_CHARS: Final = 256
MAX_METADATA_BYTES: Final = 16384

_TIMESTAMP = re.compile(  # no capturing groups: this runs for every record
    r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:\d\d)", re.ASCII
)
PAIGO_NUMBER: Final = re.compile(r"[+-]?([0-9]*[.])?[0-9]+", re.ASCII)  # Paigo's own pattern

Record = dict[str, object]


@dataclass(frozen=True, slots=True)
class Rules:
    """What a deployment sets about the checks: the metadata key the agent fills with the
    record id (refused from apps), the metadata bound, and unknown top-level fields dropped
    (Paigo's way) rather than refused."""

    reserved_key: str | None = None
    max_metadata_bytes: int = MAX_METADATA_BYTES
    drop_unknown: bool = False


DEFAULT_RULES: Final = Rules()


def timestamp_problem(value: object) -> str | None:
    """Why `value` is not an RFC 3339 timestamp as Paigo takes it, or None."""
    if not isinstance(value, str):
        return f'must be a string like "2021-01-23T01:23:45Z", not {_kind(value)}'
    if _TIMESTAMP.fullmatch(value) is None:
        return (
            f"{value[:40]!r} is not an RFC 3339 timestamp with a 4-digit year and an offset, "
            'like "2021-01-23T01:23:45Z" or "2021-01-23 01:23:45.5+02:00"'
        )
    try:
        datetime.fromisoformat(value.upper())  # checks the ranges, offset included
    except ValueError as exc:
        return f"{value!r} is not a real date and time ({exc})"
    return None


def record_value_problem(value: object) -> str | None:
    """Why `value` is not a number as Paigo takes it (or an exact integer), or None."""
    if isinstance(value, bool):
        return 'must be a number in a string, like "12.5", not a boolean'
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        return (
            f"must be sent as a string{_write_instead(repr(value))}: a JSON number with a "
            "fraction loses precision, which is why Paigo takes recordValue as a string"
        )
    if not isinstance(value, str):
        return f'must be a number in a string, like "12.5", not {_kind(value)}'
    if not value:
        return 'must not be empty; send a number in a string, like "12.5"'
    if PAIGO_NUMBER.fullmatch(value) is None:
        return (
            f"{value[:40]!r} is not a number as Paigo takes it (digits with an optional sign "
            f'and decimal point, like "12", "-2.5" or ".5"){_write_instead(value)}'
        )
    return None


def _write_instead(value: str) -> str:
    """`: write "1000"` for "1e3": the same number in Paigo's form, when there is one."""
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        return ""
    if not number.is_finite() or abs(number.as_tuple().exponent) > 40:  # type: ignore[arg-type]
        return ""
    plain = format(number, "f")
    return f': write "{plain}"' if PAIGO_NUMBER.fullmatch(plain) else ""


def _id_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_kind(value)}"
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_CHARS:
        return f"must be at most {MAX_ID_CHARS} characters, not {len(value)}"
    return None


def _metadata_problems(value: object, rules: Rules) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [("metadata", f"must be an object, not {_kind(value)}")]
    if rules.reserved_key is not None and rules.reserved_key in value:
        return [(f"metadata.{rules.reserved_key}", "is reserved for the agent's record id")]
    try:
        size = len(orjson.dumps(value))
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits
        return [("metadata", "holds an integer beyond 64 bits; send it as a string")]
    if size > rules.max_metadata_bytes:
        return [("metadata", f"must be at most {rules.max_metadata_bytes} bytes as JSON")]
    return []


def unknown_field_message(name: str) -> str:
    """The message for a field Paigo does not know, naming the likely intended field."""
    lowered = {known.lower(): known for known in KNOWN_FIELDS}
    guess = lowered.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, KNOWN_FIELDS, n=1, cutoff=0.75)), None
    )
    hint = f"; did you mean {guess!r}?" if guess else f"; known fields: {', '.join(KNOWN_FIELDS)}"
    return (
        f"unknown field {name[:60]!r}{hint} (refused here, where Paigo would drop it "
        'silently; ingest.unknown_fields = "drop" drops it too)'
    )


def is_plainly_valid(obj: object, rules: Rules = DEFAULT_RULES) -> bool:
    """True for a record that is valid and already in its stored form, by the cheapest
    route (the hot path: `normalise` would return it unchanged); False means `check_record`
    must say what, if anything, is wrong, and `normalise` make its stored form. Never True
    for an invalid record."""
    if type(obj) is not dict:
        return False
    customer, dimension = obj.get("customerId"), obj.get("dimensionId")
    value, stamp = obj.get("recordValue"), obj.get("timestamp")
    if type(customer) is not str or type(dimension) is not str or type(stamp) is not str:
        return False  # (absent, null or of another type)
    if type(value) is not str:
        return False  # (an integer is valid: `normalise` stores its digits)
    if len(obj) != (5 if "metadata" in obj else 4):
        return False  # a field besides the known ones (the four required are there)
    if not (0 < len(customer) <= MAX_ID_CHARS and 0 < len(dimension) <= MAX_ID_CHARS):
        return False
    if PAIGO_NUMBER.fullmatch(value) is None:
        return False
    if "metadata" in obj:
        metadata = obj["metadata"]  # (null is valid: `normalise` leaves it out)
        if metadata is None or _metadata_problems(metadata, rules):
            return False
    return timestamp_problem(stamp) is None


def check_record(obj: object, index: int, rules: Rules = DEFAULT_RULES) -> list[Problem]:
    """Every problem with one record; an empty list means it is valid (once unknown
    fields are dropped, with `rules.drop_unknown`)."""
    if not isinstance(obj, dict):
        return [Problem(index, "", f"a record must be a JSON object, not {_kind(obj)}")]
    problems = [
        Problem(index, str(name)[:60], unknown_field_message(str(name)))
        for name in obj
        if name not in _KNOWN_SET and not rules.drop_unknown
    ]
    for name in REQUIRED_FIELDS:
        if name not in obj:
            problems.append(Problem(index, name, "is required"))
    checks = (
        ("timestamp", timestamp_problem),
        ("customerId", _id_problem),
        ("dimensionId", _id_problem),
        ("recordValue", record_value_problem),
    )
    for name, check in checks:
        if name in obj and (why := check(obj[name])) is not None:
            problems.append(Problem(index, name, why))
    if "metadata" in obj:
        for field, why in _metadata_problems(obj["metadata"], rules):
            problems.append(Problem(index, field, why))
    return problems


def normalise(obj: Record) -> Record:
    """The record as it will be stored: the app's known fields in the app's order (unknown
    ones dropped, null metadata left out); an integer recordValue becomes its digits. Only
    for records that passed the check."""
    if not obj.keys() <= _KNOWN_SET or obj.get("metadata", {}) is None:
        obj = {k: v for k, v in obj.items() if k in _KNOWN_SET and v is not None}
    value = obj["recordValue"]
    if isinstance(value, int):
        obj = dict(obj)
        obj["recordValue"] = str(value)
    return obj


def validate_records(objs: list[object], rules: Rules = DEFAULT_RULES) -> list[Record]:
    """All records in their stored form (`normalise`), or RecordInvalid carrying the
    problems of every bad record. (Plainly valid records are stored as they are: only the
    others are looked at twice.)"""
    careful = [index for index, obj in enumerate(objs) if not is_plainly_valid(obj, rules)]
    problems = [problem for index in careful for problem in check_record(objs[index], index, rules)]
    if problems:
        raise RecordInvalid(problems)
    records = cast(list[Record], objs)
    if careful:
        records = list(records)
        for index in careful:
            records[index] = normalise(records[index])
    return records


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


# --- The stored form ----------------------------------------------------------------------
#
# Envelope layout, version 1 (all integers little-endian):
#
# | offset | size | field                                                        |
# |--------|------|--------------------------------------------------------------|
# | 0      | 1    | envelope version, 1                                          |
# | 1      | 1    | flags: bit 0 = deliver with `invoice=true`                   |
# | 2      | 8    | received_at, Unix time in milliseconds (u64)                 |
# | 10     | 2    | key length K (u16): the app's idempotency key for the record |
# | 12     | K    | key, UTF-8 (empty when the app sent none)                    |
# | 12+K   | rest | the record, JSON, UTF-8, exactly the bytes sent upstream     |

ENVELOPE_VERSION: Final = 1
FLAG_INVOICE: Final = 0x01
_ENVELOPE_HEAD = struct.Struct("<BBQH")


@dataclass(slots=True)  # not frozen: a frozen __init__ costs twice as much, per record
class Envelope:
    """A record as the spool holds it: its JSON bytes plus what the agent adds."""

    record_json: bytes
    received_at_ms: int
    invoice: bool = False
    key: str = ""

    def record(self) -> Record:
        loaded: Record = orjson.loads(self.record_json)
        return loaded


def encode_envelope(envelope: Envelope) -> bytes:
    key = envelope.key.encode()
    flags = FLAG_INVOICE if envelope.invoice else 0
    head = _ENVELOPE_HEAD.pack(ENVELOPE_VERSION, flags, envelope.received_at_ms, len(key))
    return head + key + envelope.record_json


def encode_envelopes(
    records_json: list[bytes], received_at_ms: int, invoice: bool, key: str
) -> list[bytes]:
    """The envelopes of one request's records: the same as `encode_envelope` of each, with
    `<key>:<index>` as each record's key when the request had one. Without a key every
    record shares one header, built once (the hot path of array ingest)."""
    flags = FLAG_INVOICE if invoice else 0
    if not key:
        head = _ENVELOPE_HEAD.pack(ENVELOPE_VERSION, flags, received_at_ms, 0)
        return [head + record for record in records_json]
    return [
        encode_envelope(Envelope(record, received_at_ms, invoice, f"{key}:{index}"))
        for index, record in enumerate(records_json)
    ]


# --- Record identity ----------------------------------------------------------------------
#
# Every record has one *stable id*, the same across restarts and resends: the app's
# idempotency key for it (`<Idempotency-Key>:<index>`) when the request had one, else the
# agent's id `<spool id>-<seq>`, which `POST /usage` answers in `ids`. It is what goes
# upstream in `metadata[upstream.record_id_metadata_key]`, what the deliveries and
# dead-letter files carry, and what `reconcile` and the effectively-once check look for.


def agent_record_ids(spool_id: str, seqs: range) -> list[str]:
    """The agent's ids of the records stored at `seqs` in the spool `spool_id`."""
    prefix = f"{spool_id}-"
    return [prefix + str(seq) for seq in seqs]


def stable_id(envelope: Envelope, spool_id: str, seq: int) -> str:
    """The record's stable id: the app's idempotency key for it, else the agent's id."""
    return envelope.key or f"{spool_id}-{seq}"


def decode_envelope(payload: bytes) -> Envelope:
    """The envelope in `payload`; ValueError if it is not a version-1 envelope."""
    if len(payload) < _ENVELOPE_HEAD.size:
        raise ValueError("envelope shorter than its header")
    version, flags, received_at_ms, key_len = _ENVELOPE_HEAD.unpack_from(payload)
    if version != ENVELOPE_VERSION:
        raise ValueError(f"envelope version {version} is not {ENVELOPE_VERSION}")
    start = _ENVELOPE_HEAD.size  # (positional arguments: this runs for every record read)
    key = payload[start : start + key_len].decode() if key_len else ""
    return Envelope(payload[start + key_len :], received_at_ms, bool(flags & FLAG_INVOICE), key)
