"""What an upstream answer means: a table of statuses, and Retry-After in both forms."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from agent.delivery.uplink import Outcome, Reply, classify, parse_retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "retry_after", "outcome"),
    [
        (200, None, Outcome.DELIVERED),
        (201, None, Outcome.DELIVERED),
        (204, None, Outcome.DELIVERED),
        (400, None, Outcome.REJECTED),
        (422, None, Outcome.REJECTED),
        (401, None, Outcome.UNAUTHORIZED),
        (403, None, Outcome.FORBIDDEN),
        (404, None, Outcome.NOT_FOUND),
        (413, None, Outcome.TOO_LARGE),
        (408, None, Outcome.TRANSIENT),
        (425, None, Outcome.TRANSIENT),
        (429, None, Outcome.TRANSIENT),
        (429, 5.0, Outcome.THROTTLED),
        (503, 5.0, Outcome.THROTTLED),
        (503, None, Outcome.TRANSIENT),
        (500, None, Outcome.TRANSIENT),
        (502, None, Outcome.TRANSIENT),
        (504, None, Outcome.TRANSIENT),
        (500, 5.0, Outcome.TRANSIENT),
        (501, None, Outcome.PERMANENT),
        (405, None, Outcome.PERMANENT),
        (409, None, Outcome.PERMANENT),
    ],
)
def test_classification(status: int, retry_after: float | None, outcome: Outcome):
    assert classify(status, retry_after) is outcome


def test_no_answer_is_transient():
    assert Reply(0, error="ClientConnectorError").outcome is Outcome.TRANSIENT


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + seconds_from_now, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("0", 0.0),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("100000", 300.0),  # clamped
        (http_date(30), 30.0),
        (http_date(-30), 0.0),  # in the past: no wait
        (http_date(10_000), 300.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: unreadable
    ],
)
def test_retry_after_in_seconds_or_http_date_is_clamped(header: str | None, seconds: float | None):
    assert parse_retry_after(header, NOW, 300.0) == seconds


def test_per_record_results_of_an_array_answer():
    reply = Reply(200, b'{"results": [{"status": 201}, {"status": 400}, {"status": 503}]}')
    assert reply.per_record(3) == [201, 400, 503]
    assert reply.per_record(2) is None  # a count that does not match proves nothing
    assert Reply(200, b'{"message": "ok"}').per_record(3) is None
    assert Reply(500, b'{"results": []}').per_record(0) is None
