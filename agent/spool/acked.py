"""Acknowledged seqs beyond the cursor: live as a bitmap, saved as ranges.

The cursor is the end of the contiguous acknowledged prefix. Records acknowledged after a
record that has not been (one parked, or failed again and again while the rest flow, or a
rollup's members, every few hundredth seq, acknowledged together) sit beyond it. The
cursor file carries them as sorted half-open ranges (`Cursor.acked`), so a restart does
not hand them out again.

* `Acked`, the spool's live set: one bit per seq from just below the cursor to the highest
  acknowledged. Adding, asking and moving the cursor cost the same however the seqs are
  spread (a sorted list of ranges cost an insertion, a copy of the list's tail, for every
  isolated seq: 3 to 4 µs a record acknowledging rollups). Memory is one bit per record
  the spool holds beyond the cursor, at most an eighth of a byte per record on disk.
  Reading the ranges off it for a cursor save costs about 0.75 µs a range: up to 3 ms,
  twenty times a second, when acknowledgements are as scattered as rollups leave them.
* `AckedRanges`, the ranges as a cursor file holds them (at most a few thousand): asked,
  never changed.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable, Sequence
from typing import Final

_NOT_FULL: Final = re.compile(rb"[^\xff]")
_CHUNK: Final = 4096  # bytes of the bitmap `ranges` looks at a time
_FULL: Final = b"\xff" * _CHUNK
_BIT: Final = tuple(bytes(byte >> bit & 1 for byte in range(256)) for bit in range(8))
_RUN: Final = re.compile(rb"\x01+")


def _popcount(data: bytes | bytearray) -> int:
    return int.from_bytes(data, "little").bit_count()


class Acked:
    """Seqs acknowledged beyond the cursor: bit n of `_bits` is seq `_base + n`."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._base = 0  # a multiple of 8
        self._bits = bytearray()
        self.count = 0  # seqs held
        for start, end in ranges:
            if end > start:
                self._set_range(start, end)

    def __len__(self) -> int:
        return self.count

    def __contains__(self, seq: int) -> bool:
        offset = seq - self._base
        bits = self._bits
        return 0 <= offset < len(bits) << 3 and bool(bits[offset >> 3] >> (offset & 7) & 1)

    def add(self, seq: int) -> None:
        offset = seq - self._base
        if not (self.count and 0 <= offset < len(self._bits) << 3):
            offset = self._room_for(seq, seq + 1)
        index, mask = offset >> 3, 1 << (offset & 7)
        if not self._bits[index] & mask:
            self._bits[index] |= mask
            self.count += 1

    def add_all(self, seqs: Iterable[int]) -> None:
        """`add` each of `seqs`: a run of consecutive seqs at a time."""
        ordered = sorted(seqs)
        start, count = 0, len(ordered)
        for index in range(1, count + 1):
            if index == count or ordered[index] != ordered[index - 1] + 1:
                if index - start == 1:
                    self.add(ordered[start])
                else:
                    self._set_range(ordered[start], ordered[index - 1] + 1)
                start = index

    def take_from(self, cursor: int) -> int:
        """Where the cursor goes from `cursor` over the seqs held from there on; `cursor`
        itself when it is not held. Everything below the cursor returned is dropped."""
        if cursor in self:
            bits, offset = self._bits, cursor - self._base
            index = offset >> 3
            byte = bits[index] | ((1 << (offset & 7)) - 1)  # (as if those below were held)
            if byte == 0xFF:
                found = _NOT_FULL.search(bits, index + 1)
                index = found.start() if found else len(bits)
                byte = bits[index] if index < len(bits) else 0
            trailing = (~byte & (byte + 1)).bit_length() - 1  # the held bits below a gap
            cursor = self._base + (index << 3) + trailing
        self._drop_below(cursor)
        return cursor

    def ranges(self, limit: int) -> list[tuple[int, int]]:
        """The first `limit` ranges [start, end) held, lowest first. (A chunk of the
        bitmap at a time: whole when all held, skipped when none is, else spread to a byte
        a seq, where a regular expression finds the runs: C does the work per seq, Python
        only per range.)"""
        found: list[tuple[int, int]] = []
        bits = self._bits
        for at in range(0, len(bits), _CHUNK):
            chunk = bytes(bits[at : at + _CHUNK])
            first = self._base + (at << 3)
            if chunk == _FULL[: len(chunk)]:
                spans = [(0, len(chunk) << 3)]
            elif chunk.count(0) == len(chunk):
                continue
            else:
                spread = bytearray(len(chunk) << 3)
                for bit, table in enumerate(_BIT):
                    spread[bit::8] = chunk.translate(table)
                matches = itertools.islice(_RUN.finditer(spread), limit - len(found) + 1)
                spans = [match.span() for match in matches]
            if found and spans and found[-1][1] == first + spans[0][0]:  # (across chunks)
                found[-1] = (found[-1][0], first + spans.pop(0)[1])
            found += [(first + low, first + high) for low, high in spans]
            if len(found) > limit:  # (one more than asked: the last one asked is whole)
                return found[:limit]
        return found

    def _set_range(self, start: int, end: int) -> None:
        low = self._room_for(start, end)
        high = low + end - start
        first, last = low >> 3, (high - 1) >> 3
        bits = self._bits
        before = _popcount(bits[first : last + 1])
        if first == last:
            bits[first] |= ((1 << (high - low)) - 1) << (low & 7)
        else:
            bits[first] |= (0xFF << (low & 7)) & 0xFF
            bits[first + 1 : last] = b"\xff" * (last - first - 1)
            bits[last] |= (1 << ((high - 1 & 7) + 1)) - 1
        self.count += _popcount(bits[first : last + 1]) - before

    def _room_for(self, start: int, end: int) -> int:
        """Make the bitmap reach [start, end); the bit offset of `start`."""
        if not self.count:  # (nothing held: start afresh where the seqs are)
            self._base, self._bits = start & ~7, bytearray()
        elif start < self._base:
            grow = (self._base - start + 7) >> 3
            self._bits[0:0] = bytes(grow)
            self._base -= grow << 3
        need = (end - self._base + 7) >> 3
        if need > len(self._bits):
            self._bits.extend(bytes(need - len(self._bits)))
        return start - self._base

    def _drop_below(self, seq: int) -> None:
        bits = self._bits
        whole = (seq - self._base) >> 3
        if whole > 0:
            self.count -= _popcount(bits[:whole])
            del bits[:whole]
            self._base += whole << 3
        part = seq - self._base
        if 0 < part < 8 and bits:
            mask = (1 << part) - 1
            self.count -= (bits[0] & mask).bit_count()
            bits[0] &= 0xFF ^ mask


class AckedRanges:
    """Ranges as a cursor file holds them (merged if they touch or overlap)."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []  # ranges [start, end), sorted, apart (never touching)
        for start, end in sorted(ranges):
            if end <= start:
                continue
            if self._ends and start <= self._ends[-1]:
                self._ends[-1] = max(end, self._ends[-1])
                continue
            self._starts.append(start)
            self._ends.append(end)

    def __contains__(self, seq: int) -> bool:
        index = bisect.bisect_right(self._starts, seq) - 1
        return index >= 0 and seq < self._ends[index]

    def holds_all(self, seqs: Sequence[int]) -> bool:
        """Whether every one of `seqs` is held (at once when one range spans them all)."""
        if not seqs:
            return True
        low, high = min(seqs), max(seqs)
        index = bisect.bisect_right(self._starts, low) - 1
        if index >= 0 and high < self._ends[index]:
            return True
        return all(seq in self for seq in seqs)
