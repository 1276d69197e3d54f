"""AckedRanges: acknowledged seqs beyond the cursor, held as merged ranges."""

from __future__ import annotations

import random

from agent.spool.acked import AckedRanges


def test_seqs_merge_into_ranges_whatever_the_order():
    acked = AckedRanges()
    for seq in (5, 3, 4, 9, 7, 8, 4):
        acked.add(seq)
    assert acked.ranges(10) == [(3, 6), (7, 10)]
    assert len(acked) == 6
    assert 4 in acked and 6 not in acked and 9 in acked and 10 not in acked


def test_the_cursor_moves_over_the_ranges_that_start_at_it_and_only_those():
    acked = AckedRanges()
    for seq in (2, 3, 5):
        acked.add(seq)
    assert acked.take_from(1) == 1  # 1 is not acknowledged: the cursor stays
    acked.add(1)
    assert acked.take_from(1) == 4  # 1, 2, 3; then 4 is missing
    assert acked.ranges(10) == [(5, 6)] and len(acked) == 1


def test_ranges_as_a_cursor_file_holds_them_are_taken_back_merged():
    acked = AckedRanges([(10, 20), (15, 25), (30, 31), (40, 40)])
    assert acked.ranges(10) == [(10, 25), (30, 31)]
    assert len(acked) == 16


def test_a_million_seqs_past_one_gap_are_one_range():
    acked = AckedRanges()
    for seq in range(2, 1_000_002):
        acked.add(seq)
    assert acked.ranges(10) == [(2, 1_000_002)]


def test_random_acknowledgements_agree_with_a_set():
    rng = random.Random(7)
    acked, plain, cursor = AckedRanges(), set[int](), 0
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
    acked, plain = AckedRanges(), set[int]()
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
