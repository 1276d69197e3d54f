"""Paigo's own rules, as the stand-in applies them: written from `../shared/PAIGO.md` (its
published API and the validator of a public copy of its backend), never from the agent's
validator, so that a test where both agree says something.

* `usage_problems`: the 400 messages Paigo's validation pipe gives a `CreateUsageDto`
  (an empty list: valid). Unknown top-level fields are not a problem: `strip_unknown`
  drops them, as Paigo's whitelisting does.
* `js_number`: a stored 64-bit float as JavaScript prints it, which is how a read gives
  `recordValue` back (`"1.50"` is read as `"1.5"`).
* `iso_ms`: an instant as JavaScript's `toISOString` prints it, how reads give timestamps.
* `read_window`: the [start, end) of a raw usage read (`aggregationInterval=none`), or why
  Paigo refuses the query (an `endTime` in the future, a start not before the end).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

FIELDS: Final = ("timestamp", "customerId", "dimensionId", "recordValue", "metadata")

# validator.js isRFC3339, piece by piece (seconds may be 60; days are not checked per month)
_RFC3339: Final = re.compile(
    r"[0-9]{4}-(0[1-9]|1[0-2])-([12][0-9]|0[1-9]|3[01])[ tT]"
    r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
    r"([zZ]|[-+]([01][0-9]|2[0-3]):[0-5][0-9])"
)
_NUMBER: Final = re.compile(r"[+-]?([0-9]*[.])?[0-9]+")  # the DTO's @Matches pattern


def strip_unknown(body: dict[str, Any]) -> dict[str, Any]:
    """The record as Paigo keeps it: only the fields of its DTO."""
    return {key: value for key, value in body.items() if key in FIELDS}


def usage_problems(body: object) -> list[str]:
    """What Paigo's validation says about a `POST /usage` body, or [] when it passes."""
    if not isinstance(body, dict):
        return ["a usage record must be an object"]
    problems = []
    for name in ("customerId", "dimensionId"):
        value = body.get(name)
        if not isinstance(value, str) or not value:
            problems.append(f"{name} must be a string and should not be empty")
    if not is_rfc3339(body.get("timestamp")):
        problems.append("timestamp must be RFC 3339 date")
    value = body.get("recordValue")
    if not isinstance(value, str) or not _NUMBER.fullmatch(value):
        problems.append("recordValue must match /^[+-]?([0-9]*[.])?[0-9]+$/ regular expression")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        problems.append("metadata must be an object")
    return problems


def is_rfc3339(value: object) -> bool:
    return isinstance(value, str) and _RFC3339.fullmatch(value) is not None


def instant(stamp: str) -> datetime | None:
    """The instant of an RFC 3339 timestamp, or None where the store could not take it
    (the validator lets `:60` and `02-31` through; the write then fails)."""
    try:
        parsed = datetime.fromisoformat(stamp.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, truncated: the precision of a stored point."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def iso_ms(ms: int) -> str:
    """`2026-11-25T10:00:00.000Z`: JavaScript's Date.toISOString."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def js_number(value: float) -> str:
    """A float as JavaScript's Number.prototype.toString prints it ("1.5", "100", "1e+21")."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)  # the shortest digits that read back as `value`, as in JavaScript
    if "e" not in text:
        return text
    if 1e-6 <= abs(value) < 1e21:  # JavaScript writes these out in full
        return format(Decimal(text), "f")
    mantissa, exponent = text.split("e")
    sign = "-" if exponent.startswith("-") else "+"
    return f"{mantissa.removesuffix('.0')}e{sign}{exponent.lstrip('+-').lstrip('0')}"


def read_window(query: Mapping[str, str], now: datetime) -> tuple[datetime, datetime] | str:
    """[start, end) of a usage read, or why Paigo refuses the query."""
    if query.get("aggregationInterval") != "none":
        return "the stand-in serves only aggregationInterval=none"
    if query.get("aggregationPurpose", "billing") not in ("billing", "metering"):
        return "aggregationPurpose must be billing or metering"
    start = _query_instant(query, "startTime", now - timedelta(days=1))
    end = _query_instant(query, "endTime", now)
    if start is None or end is None:
        return "startTime and endTime must be RFC 3339 dates"
    if end > now:
        return "end time must be before the current time"
    if start >= end:
        return "start time must be before end time"
    return start, end


def _query_instant(query: Mapping[str, str], name: str, default: datetime) -> datetime | None:
    value = query.get(name)
    if value is None:
        return default
    return instant(value) if is_rfc3339(value) else None
