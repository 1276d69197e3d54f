"""The reader's side of the spool: what is handed out, given back and acknowledged."""

from __future__ import annotations

from agent.spool import format as fmt
from agent.spool.acked import Acked
from agent.spool.consumer import Consumer
from agent.spool.reader import Entry, ReadResult

HEADER = fmt.SEGMENT_HEADER_SIZE


def read_of(seqs: range) -> ReadResult:
    """What the reader returns for frames `seqs` of segment 1, each 100 bytes apart."""
    entries = [Entry(seq, b"%d" % seq) for seq in seqs]
    return ReadResult(entries, [], {seq: (1, HEADER + 100 * seq) for seq in seqs})


def test_the_cursor_moves_over_the_acknowledged_prefix_and_knows_where_its_frame_is():
    consumer = Consumer((1, 1, HEADER))
    consumer.hand_out(read_of(range(1, 6)), again=False, start=1)
    consumer.ack([2, 3], reading=(6, 1, HEADER + 600))
    assert (consumer.seq, consumer.backlog(6)) == (1, 3)
    consumer.ack([1], reading=(6, 1, HEADER + 600))
    assert consumer.seq == 4 and consumer.hint == (4, 1, HEADER + 400)  # still handed out
    consumer.ack([4, 5], reading=(6, 1, HEADER + 600))
    assert consumer.hint == (6, 1, HEADER + 600)  # where the reader is: the next frame
    assert sorted(consumer.positions) == []


def test_what_an_earlier_run_acknowledged_is_not_handed_out_again():
    consumer = Consumer((1, 1, HEADER), Acked([(3, 5)]), acked_before=5)
    handed = consumer.hand_out(read_of(range(1, 8)), again=False, start=1)
    assert [e.seq for e in handed] == [1, 2, 5, 6, 7]
    assert sorted(consumer.positions) == [1, 2, 5, 6, 7]


def test_read_again_hands_out_only_what_was_given_back():
    consumer = Consumer((1, 1, HEADER))
    consumer.hand_out(read_of(range(1, 11)), again=False, start=1)
    consumer.ack([1, 2, 6], reading=(11, 1, 0))
    consumer.release([8, 4, 9])
    assert consumer.take_given_back() == (4, 1, HEADER + 400)  # the first, where it is
    assert consumer.take_given_back() is None
    again = consumer.hand_out(read_of(range(3, 11)), again=True, start=3)
    assert [e.seq for e in again] == [4, 8, 9]  # not 3, 5, 7, 10 (out), nor 6 (acked)


def test_consumed_durably_asks_the_saved_cursor_not_the_live_one():
    consumer = Consumer((1, 1, HEADER))
    consumer.hand_out(read_of(range(1, 10)), again=False, start=1)
    consumer.ack([1, 2, 5, 6], reading=(10, 1, 0))
    assert consumer.changed and not consumer.consumed_durably([1])
    consumer.saved(consumer.cursor_now("spool-a"))
    assert not consumer.changed
    assert consumer.consumed_durably([1, 2, 5, 6]) and consumer.consumed_durably([])
    assert not consumer.consumed_durably([2, 3])
    cursor, acked = consumer.cursor_now("spool-a")
    assert (cursor.next_seq, cursor.acked, acked) == (3, ((5, 7),), 2)
