"""Reading usage back from Paigo: the windows a read may ask for, and one comparison.

Paigo's `GET /customers/{customerId}/usage` (published) takes [startTime, endTime) and
says "end time must be before the current time"; it has no paging, so one answer holds a
whole window; with `ignoreEnrollmentDate` false (its default) it hides every record older
than the customer's current enrollment. So every read the agent makes (`Uplink.read_usage`)
sends `aggregationInterval=none`, `aggregationPurpose=metering`,
`ignoreEnrollmentDate=true` and explicit times, and:

* its end is never later than now less `CLOCK_MARGIN_S` (Paigo's clock may be behind ours):
  a record is checkable only once its own instant has passed by that margin;
* a long window is read in chunks of `upstream.read_chunk_s` (`chunks`), to bound the size
  of one answer;
* what comes back is compared by `compare`: the stamp (`metadata[upstream.id_key]`) finds
  the record, then its value is compared as a number (Paigo stores a 64-bit float and prints
  it back: "1.50" reads as "1.5") and its timestamp as an instant to the millisecond (what
  Paigo stores). The effectively-once check (`agent.delivery.recheck`), verification
  (`agent.delivery.verify`) and `usage-agent reconcile` share it, and the last two share
  `verdict`, so they cannot disagree.

Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

CLOCK_MARGIN_S: Final = 2.0  # a read ends at least this long before our now
CHECK_SPAN_S: Final = 1.0  # the effectively-once check reads this either side of a record


def instant(timestamp: str) -> datetime:
    """The instant of an RFC 3339 timestamp (`T`, `t` or a space; `Z`, `z` or an offset).
    (Python reads any separator and `Z` itself, not `z`: this runs for every rolled-up record.)"""
    if timestamp[-1:] == "z":
        timestamp = timestamp[:-1] + "Z"
    return datetime.fromisoformat(timestamp)


def rfc3339(moment: datetime) -> str:
    """`2026-11-25T10:00:00.000000Z`: how the agent writes read windows."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def latest_end(now: float) -> datetime:
    """The latest end a read may have at Unix time `now`."""
    return datetime.fromtimestamp(now - CLOCK_MARGIN_S, UTC)


def check_window(timestamp: str, now: float) -> tuple[datetime, datetime] | float:
    """The window the effectively-once check reads for a record stamped `timestamp`:
    CHECK_SPAN_S either side of it, ending no later than `latest_end(now)`. A float instead:
    the seconds to wait until the record's instant is readable."""
    moment = instant(timestamp)
    end = min(moment + timedelta(seconds=CHECK_SPAN_S), latest_end(now))
    if end <= moment:
        return (moment - end).total_seconds() + 0.001
    return moment - timedelta(seconds=CHECK_SPAN_S), end


def chunks(start: datetime, end: datetime, chunk_s: float) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) cut into consecutive windows of at most `chunk_s` seconds."""
    step = timedelta(seconds=chunk_s)
    while start < end:
        yield start, min(start + step, end)
        start += step


class Match(enum.Enum):
    SAME = "same"  # Paigo holds this record: same stamp, value and instant
    DIFFERS = "differs"  # a record with this stamp, but another value or instant


class Verdict(enum.Enum):
    VERIFIED = "verified"  # held once, as sent
    MISSING = "missing"  # not held
    DOUBLED = "doubled"  # held more than once
    DIFFERS = "differs"  # held once, with another value or instant


def compare(sent: Mapping[str, object], held: Mapping[str, Any]) -> Match:
    """`held` (a usage entry of a read, carrying the record's stamp) against what was sent
    (`timestamp` and `recordValue`, as the record or the deliveries file has them)."""
    try:
        same_value = float(str(sent["recordValue"])) == float(held["recordValue"])
        same_instant = _ms(instant(str(sent["timestamp"]))) == _ms(instant(held["timestamp"]))
    except (KeyError, TypeError, ValueError):
        return Match.DIFFERS
    return Match.SAME if same_value and same_instant else Match.DIFFERS


def verdict(sent: Mapping[str, object], held: Sequence[Mapping[str, Any]]) -> Verdict:
    """What Paigo holds of a delivered record: `held` are the entries of a read that carry
    its stamp. (The one judgement of `reconcile` and of verification.)"""
    if not held:
        return Verdict.MISSING
    if len(held) > 1:
        return Verdict.DOUBLED
    return Verdict.VERIFIED if compare(sent, held[0]) is Match.SAME else Verdict.DIFFERS


def by_stamp(groups: list[dict[str, Any]], id_key: str) -> dict[str, list[dict[str, Any]]]:
    """The entries of a read that carry a stamp, by stamp."""
    held: dict[str, list[dict[str, Any]]] = {}
    for stamp, usage in stamped(groups, id_key):
        held.setdefault(stamp, []).append(usage)
    return held


def stamped(
    groups: list[dict[str, Any]], id_key: str, dimension: str | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(stamp, usage entry) for each entry of a read that carries a stamp under `id_key`,
    in `dimension` only when one is given."""
    for group in groups:
        if dimension is not None and group.get("dimensionId") != dimension:
            continue
        for usage in group.get("usage") or []:
            metadata = usage.get("metadata")
            if isinstance(metadata, dict) and (stamp := metadata.get(id_key)) is not None:
                yield str(stamp), usage


def _ms(moment: datetime) -> int:
    """Milliseconds since the epoch, truncated: the precision Paigo stores."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
