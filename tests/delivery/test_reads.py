"""The read rules: windows that never end in the future, chunks, and one comparison."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.delivery.reads import (
    CLOCK_MARGIN_S,
    Match,
    check_window,
    chunks,
    compare,
    instant,
    rfc3339,
    stamped,
)

LONG_AGO = datetime(2030, 1, 1, tzinfo=UTC).timestamp()  # "now", well after the records


def test_the_check_reads_one_second_either_side_in_utc():
    window = check_window("2026-11-25T12:00:00.5+02:00", LONG_AGO)
    assert isinstance(window, tuple)
    assert [rfc3339(edge) for edge in window] == [
        "2026-11-25T09:59:59.500000Z",
        "2026-11-25T10:00:01.500000Z",
    ]


def test_the_check_window_never_ends_after_now_less_the_margin():
    now = instant("2026-11-25T10:00:03Z").timestamp()
    window = check_window("2026-11-25T10:00:00.5Z", now)
    assert isinstance(window, tuple)
    assert rfc3339(window[1]) == "2026-11-25T10:00:01.000000Z"  # now - 2 s, not +1 s
    wait = check_window("2026-11-25T10:00:02Z", now)  # its instant is not past the margin
    assert wait == pytest.approx(1.001)
    assert check_window("2026-11-25T10:00:02Z", now + wait) != wait
    assert CLOCK_MARGIN_S == 2.0


def test_long_windows_are_read_in_chunks_that_cover_them_exactly():
    start, end = instant("2026-11-25T00:00:00Z"), instant("2026-11-25T02:30:00Z")
    pieces = list(chunks(start, end, 3600))
    assert [(rfc3339(a)[11:19], rfc3339(b)[11:19]) for a, b in pieces] == [
        ("00:00:00", "01:00:00"),
        ("01:00:00", "02:00:00"),
        ("02:00:00", "02:30:00"),
    ]
    assert list(chunks(end, start, 3600)) == []


@pytest.mark.parametrize(
    ("sent", "held", "match"),
    [
        (("1.50", "2026-11-25T10:00:00Z"), ("1.5", "2026-11-25T10:00:00.000Z"), Match.SAME),
        (("100", "2026-11-25 11:00:00+01:00"), ("100", "2026-11-25T10:00:00.000Z"), Match.SAME),
        (("0.1", "2026-11-25T10:00:00.0009Z"), ("0.1", "2026-11-25T10:00:00.000Z"), Match.SAME),
        (("1e0", "2026-11-25T10:00:00Z"), ("1", "2026-11-25T10:00:00.000Z"), Match.SAME),
        (("2", "2026-11-25T10:00:00Z"), ("1", "2026-11-25T10:00:00.000Z"), Match.DIFFERS),
        (("1", "2026-11-25T10:00:00Z"), ("1", "2026-11-25T10:00:00.001Z"), Match.DIFFERS),
        (("1", "2026-11-25T10:00:00Z"), ("x", "2026-11-25T10:00:00.000Z"), Match.DIFFERS),
    ],
)
def test_values_compare_as_numbers_and_timestamps_as_instants_to_the_millisecond(
    sent: tuple[str, str], held: tuple[str, str], match: Match
):
    as_sent = {"recordValue": sent[0], "timestamp": sent[1]}
    as_read = {"recordValue": held[0], "timestamp": held[1]}
    assert compare(as_sent, as_read) is match


def test_stamped_entries_are_found_by_key_and_dimension():
    groups = [
        {"dimensionId": "a", "usage": [{"metadata": {"id": "1"}}, {"metadata": {}}]},
        {"dimensionId": "b", "usage": [{"metadata": {"id": "2"}}, {"metadata": None}]},
    ]
    assert [stamp for stamp, _ in stamped(groups, "id")] == ["1", "2"]
    assert [stamp for stamp, _ in stamped(groups, "id", "b")] == ["2"]
