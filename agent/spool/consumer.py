"""The reader's side of the spool: what is handed out, given back and consumed.

`Consumer` is the bookkeeping behind `Spool.read`, `release`, `rewind` and `ack`, and the
cursor the spool saves. No I/O: the spool reads the frames and writes the file.

| state        | what it is                                                               |
|--------------|--------------------------------------------------------------------------|
| `positions`  | each entry handed out and not acknowledged: where its frame starts        |
| `seq`        | the cursor: the end of the contiguous acknowledged prefix                 |
| `hint`       | where the cursor's frame starts, (seq, segment, offset), when known       |
| `acked`      | acknowledged beyond the cursor (`agent.spool.acked.Acked`)                |
| given back   | the first entry handed back unprocessed: where reading goes back to      |
| saved        | the last cursor written: what a restart would not hand out again         |

`hand_out` runs on the event loop; `saved` in the spool's writer thread, with a cursor
taken on the loop (`cursor_now`), since acks change what it is made of there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agent.spool import format as fmt
from agent.spool.acked import Acked, AckedRanges
from agent.spool.reader import Entry, ReadResult

CursorNow = tuple[fmt.Cursor, int]  # a cursor to save; the acknowledgements it holds
Where = tuple[int, int, int]  # an entry's seq, and the segment and offset of its frame


class Consumer:
    def __init__(self, hint: Where, acked: Acked | None = None, acked_before: int = 0) -> None:
        """`hint`: the cursor and where its frame starts; `acked`: what an earlier run
        acknowledged beyond it, up to `acked_before`."""
        self.seq = hint[0]
        self.hint = hint
        self.acked = acked if acked is not None else Acked()
        self._acked_before = acked_before
        self.positions: dict[int, tuple[int, int]] = {}
        self._given_back: Where | None = None
        self._saved_seq, self._saved_acked, self._saved_ranges = -1, 0, AckedRanges()

    def hand_out(self, result: ReadResult, *, again: bool, start: int) -> list[Entry]:
        """The entries of a read that start at `start` (`again`: after a rewind) that may
        be handed out, now handed out: not what an earlier run acknowledged, nor, read
        again, what is acknowledged or still handed out."""
        entries, positions = result.entries, result.positions
        if again or start < self._acked_before:  # (else none can be either)
            out, acked = self.positions if again else {}, self.acked
            entries = [e for e in entries if e.seq not in out and e.seq not in acked]
            positions = {e.seq: positions[e.seq] for e in entries if e.seq in positions}
        self.positions.update(positions)
        return entries

    def release(self, seqs: Iterable[int]) -> None:
        """Entries handed out, given back unprocessed."""
        first = self._given_back
        for seq in seqs:
            where = self.positions.pop(seq, None)
            if where is not None and (first is None or seq < first[0]):
                first = (seq, *where)
        self._given_back = first

    def take_given_back(self) -> Where | None:
        """Where the first entry given back since the last call is (None: none was)."""
        first, self._given_back = self._given_back, None
        return first

    def ack(self, seqs: Iterable[int], reading: Where) -> None:
        """Entries delivered; the cursor moves over the contiguous acknowledged prefix.
        `reading`: where the reader is, the cursor's place when it gets there."""
        acked, positions, cursor = self.acked, self.positions, self.seq
        fresh = [seq for seq in seqs if seq >= cursor]
        for seq in fresh:
            positions.pop(seq, None)  # (kept only for what is read and not acknowledged)
        acked.add_all(fresh)
        cursor = acked.take_from(cursor)
        if cursor != self.seq:
            self.seq = cursor
            where = positions.get(cursor)
            if where is None and cursor == reading[0]:
                where = reading[1:]
            if where is not None:
                self.hint = (cursor, *where)

    def backlog(self, durable_seq: int) -> int:
        """Entries below `durable_seq` not acknowledged."""
        return durable_seq - self.seq - len(self.acked)

    # --- the saved cursor -------------------------------------------------------------------

    @property
    def changed(self) -> bool:
        """Whether the cursor or the acknowledgements beyond it moved since the last save."""
        return (self.seq, len(self.acked)) != (self._saved_seq, self._saved_acked)

    def cursor_now(self, spool_id: str) -> CursorNow:
        """The cursor to save, and how many acknowledgements beyond it that holds."""
        seq, (hint_seq, segment, offset) = self.seq, self.hint
        ranges = tuple(self.acked.ranges(fmt.MAX_CURSOR_RANGES))
        if hint_seq != seq:  # where frame `seq` starts is not known
            return fmt.Cursor(spool_id, seq, acked=ranges), len(self.acked)
        return fmt.Cursor(spool_id, seq, segment, offset, ranges), len(self.acked)

    def saved(self, cursor: CursorNow) -> int:
        """`cursor` is written; its next seq."""
        saved, acked = cursor
        self._saved_ranges = AckedRanges(saved.acked)  # (one reference swapped: the
        self._saved_seq, self._saved_acked = saved.next_seq, acked  # loop reads it)
        return saved.next_seq

    def consumed_durably(self, seqs: Sequence[int]) -> bool:
        """Whether a restart would hand none of `seqs` out again: each is behind the saved
        cursor, or acknowledged beyond it in the cursor file."""
        cursor = self._saved_seq
        if max(seqs, default=0) < cursor:  # (the common case, at C speed)
            return True
        return self._saved_ranges.holds_all([seq for seq in seqs if seq >= cursor])
