"""Acknowledged seqs beyond the cursor, as sorted half-open ranges.

The cursor is the end of the contiguous acknowledged prefix. Records acknowledged after a
record that has not been (one parked, or failed again and again while the rest flow) sit
beyond it. Kept as ranges, they cost memory per gap, not per record, and the cursor file
can carry them (`Cursor.acked`), so a restart does not hand them out again.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence


class AckedRanges:
    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []  # ranges [start, end), sorted, apart (never touching)
        self.count = 0  # seqs held
        for start, end in sorted(ranges):  # (as a cursor file holds them: merged if not)
            if end <= start:
                continue
            if self._ends and start <= self._ends[-1]:
                if end > self._ends[-1]:
                    self.count += end - self._ends[-1]
                    self._ends[-1] = end
                continue
            self._starts.append(start)
            self._ends.append(end)
            self.count += end - start

    def __contains__(self, seq: int) -> bool:
        index = bisect.bisect_right(self._starts, seq) - 1
        return index >= 0 and seq < self._ends[index]

    def __len__(self) -> int:
        return self.count

    def add(self, seq: int) -> None:
        starts, ends = self._starts, self._ends
        if ends and seq == ends[-1]:  # the common case: right after the highest range
            ends[-1] = seq + 1
            self.count += 1
            return
        index = bisect.bisect_right(starts, seq) - 1  # the range starting at or before seq
        if index >= 0 and seq < ends[index]:
            return  # held already
        joins_left = index >= 0 and ends[index] == seq
        joins_right = index + 1 < len(starts) and starts[index + 1] == seq + 1
        if joins_left and joins_right:
            ends[index] = ends.pop(index + 1)
            del starts[index + 1]
        elif joins_left:
            ends[index] = seq + 1
        elif joins_right:
            starts[index + 1] = seq
        else:
            starts.insert(index + 1, seq)
            ends.insert(index + 1, seq + 1)
        self.count += 1

    def add_all(self, seqs: Iterable[int]) -> None:
        """`add` each of `seqs`: a run of consecutive seqs at a time (a batch's are mostly
        one run)."""
        ordered = sorted(seqs)
        start, count = 0, len(ordered)
        for index in range(1, count + 1):
            if index == count or ordered[index] != ordered[index - 1] + 1:
                self._add_range(ordered[start], ordered[index - 1] + 1)
                start = index

    def _add_range(self, start: int, end: int) -> None:
        starts, ends = self._starts, self._ends
        if not ends or start > ends[-1]:  # the common case: beyond the highest range
            starts.append(start)
            ends.append(end)
            self.count += end - start
            return
        low = bisect.bisect_left(ends, start)  # the first range that reaches `start`
        high = bisect.bisect_right(starts, end)  # past the last one that `end` reaches
        if low < high:  # they merge into one
            held = sum(ends[i] - starts[i] for i in range(low, high))
            start, end = min(start, starts[low]), max(end, ends[high - 1])
        else:
            held = 0
        starts[low:high] = [start]
        ends[low:high] = [end]
        self.count += end - start - held

    def holds_all(self, seqs: Sequence[int]) -> bool:
        """Whether every one of `seqs` is held (at once when one range spans them all)."""
        if not seqs:
            return True
        low, high = min(seqs), max(seqs)
        index = bisect.bisect_right(self._starts, low) - 1
        if index >= 0 and high < self._ends[index]:
            return True
        return all(seq in self for seq in seqs)

    def take_from(self, cursor: int) -> int:
        """Where the cursor goes from `cursor` over the ranges that start there (dropped);
        `cursor` itself when none does. Ranges below `cursor` are dropped too."""
        starts, ends = self._starts, self._ends
        while starts and starts[0] <= cursor:
            start, end = starts.pop(0), ends.pop(0)
            self.count -= end - start
            cursor = max(cursor, end)
        return cursor

    def ranges(self, limit: int) -> list[tuple[int, int]]:
        """The first `limit` ranges, lowest first."""
        return list(zip(self._starts[:limit], self._ends[:limit], strict=True))
