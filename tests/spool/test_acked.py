"""Acknowledged seqs beyond the cursor: the live bitmap (`Acked`) and the saved ranges."""

from __future__ import annotations

import random

from agent.spool.acked import Acked, AckedRanges


def test_seqs_merge_into_ranges_whatever_the_order():
    acked = Acked()
    for seq in (5, 3, 4, 9, 7, 8, 4):
        acked.add(seq)
    assert acked.ranges(10) == [(3, 6), (7, 10)]
    assert len(acked) == 6
    assert 4 in acked and 6 not in acked and 9 in acked and 10 not in acked


def test_the_cursor_moves_over_the_ranges_that_start_at_it_and_only_those():
    acked = Acked()
    for seq in (2, 3, 5):
        acked.add(seq)
    assert acked.take_from(1) == 1  # 1 is not acknowledged: the cursor stays
    acked.add(1)
    assert acked.take_from(1) == 4  # 1, 2, 3; then 4 is missing
    assert acked.ranges(10) == [(5, 6)] and len(acked) == 1


def test_ranges_as_a_cursor_file_holds_them_are_taken_back_merged():
    spans = [(10, 20), (15, 25), (30, 31), (40, 40)]
    saved, live = AckedRanges(spans), Acked(spans)
    assert live.ranges(10) == [(10, 25), (30, 31)]
    assert len(live) == 16
    held = [*range(10, 25), 30]
    assert [n for n in range(50) if n in saved] == [n for n in range(50) if n in live] == held


def test_a_million_seqs_past_one_gap_are_one_range():
    acked = Acked()
    for seq in range(2, 1_000_002):
        acked.add(seq)
    assert acked.ranges(10) == [(2, 1_000_002)]


def test_random_acknowledgements_agree_with_a_set():
    rng = random.Random(7)
    acked, plain, cursor = Acked(), set[int](), 0
    for _ in range(5000):
        seq = cursor + rng.randrange(50)
        acked.add(seq)
        plain.add(seq)
        before = cursor
        while cursor in plain:  # the contiguous prefix, one seq at a time
            plain.discard(cursor)
            cursor += 1
        assert acked.take_from(before) == cursor
        assert len(acked) == len(plain)
        assert all(s in acked for s in plain) and cursor not in acked


def test_batches_added_at_once_agree_with_a_set():
    rng = random.Random(11)
    acked, plain = Acked(), set[int]()
    for _ in range(2000):
        start = rng.randrange(3000)
        batch = [start + n for n in range(rng.randrange(1, 40)) if rng.random() < 0.8]
        batch += [rng.randrange(3000) for _ in range(rng.randrange(3))]  # strays, repeats
        acked.add_all(batch)
        plain.update(batch)
        assert len(acked) == len(plain)
        for low, high in acked.ranges(10_000):  # apart, never touching
            assert all(seq in plain for seq in range(low, high))
            assert low - 1 not in plain and high not in plain


def test_holds_all_is_true_only_when_every_seq_is_held():
    acked = AckedRanges([(10, 20), (30, 40)])
    assert acked.holds_all([12, 19, 10]) and acked.holds_all([31, 15]) and acked.holds_all([])
    assert not acked.holds_all([12, 20]) and not acked.holds_all([25]) and not acked.holds_all([9])


def test_ranges_read_back_as_they_were_set_and_the_same_from_either_form():
    rng = random.Random(3)
    spans, seq = [], 1000
    for _ in range(300):
        seq += rng.randrange(1, 30)
        end = seq + rng.choice([1, 2, 7, 8, 9, 15, 16, 17, 64, 1000])
        spans.append((seq, end))
        seq = end
    acked = Acked(spans)
    assert acked.ranges(1000) == spans and len(acked) == sum(b - a for a, b in spans)
    assert acked.ranges(5) == spans[:5]
    saved = AckedRanges(acked.ranges(1000))
    assert all((s in saved) == (s in acked) for s in range(900, seq + 20))


def test_a_rollups_members_spread_every_300th_seq_cost_no_more_than_a_run():
    acked = Acked()
    for group in range(300):
        acked.add_all(range(2 + group, 90_002, 300))
        assert len(acked) == (group + 1) * 300
    assert acked.ranges(10) == [(2, 90_002)]
    assert acked.take_from(1) == 1 and acked.take_from(2) == 90_002 and len(acked) == 0


def test_a_cursor_that_jumps_drops_what_it_passes_as_a_set_would():
    rng = random.Random(5)
    acked, plain, cursor = Acked(), set[int](), 100
    for _ in range(3000):
        if rng.random() < 0.7:
            batch = [cursor + rng.randrange(-20, 400) for _ in range(rng.randrange(1, 6))]
            batch = [seq for seq in batch if seq >= cursor]
            acked.add_all(batch)
            plain.update(batch)
        else:
            start = cursor + rng.randrange(0, 60)  # (a jump: an oldest segment is gone)
            cursor = start
            while cursor in plain:
                cursor += 1
            assert acked.take_from(start) == cursor
            plain = {seq for seq in plain if seq >= cursor}
        assert len(acked) == len(plain)
        assert sorted(plain) == [n for a, b in acked.ranges(10**6) for n in range(a, b)]


def test_the_first_ranges_are_whole_wherever_the_limit_and_the_chunks_fall():
    rng = random.Random(9)
    spans, seq = [], 5
    for _ in range(2000):  # runs across the bitmap's 4,096-byte chunks, now and then
        seq += rng.randrange(1, 5)
        end = seq + rng.choice([1, 3, 40, 9000, 40_000])
        spans.append((seq, end))
        seq = end
    acked = Acked(spans)
    for limit in (1, 2, 3, 50, 333, 1999, 2000, 2001):
        assert acked.ranges(limit) == spans[:limit]
