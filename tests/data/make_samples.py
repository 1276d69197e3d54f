"""Write the damaged spool samples in this folder, one directory per scenario.

Run from the project root: .venv/bin/python tests/data/make_samples.py
Each sample is a spool directory whose segments hold frames with payloads b"record-<seq>";
tests/spool/test_recovery.py says what the agent must make of each.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.spool import format as fmt

HERE = Path(__file__).parent


def segment(first: int, count: int) -> bytearray:
    payloads = [f"record-{seq}".encode() for seq in range(first, first + count)]
    return bytearray(fmt.encode_segment_header(first) + fmt.encode_frames(first, payloads))


def frame_offset(first: int, index: int) -> int:
    """Where the index-th frame (0-based) of a segment made by `segment` starts."""
    offset = fmt.SEGMENT_HEADER_SIZE
    for seq in range(first, first + index):
        offset += fmt.FRAME_HEADER_SIZE + len(f"record-{seq}".encode())
    return offset


def write(name: str, files: dict[int, bytes]) -> None:
    directory = HERE / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    for first, data in files.items():
        fmt.segment_path(directory, first).write_bytes(bytes(data))


def main() -> None:
    torn = segment(1, 10)
    write("torn-tail", {1: torn[: frame_offset(1, 9) + 7]})

    flipped = segment(1, 10)
    flipped[frame_offset(1, 4) + fmt.FRAME_HEADER_SIZE + 2] ^= 0x40
    write("bit-flip-in-tail-segment", {1: flipped})

    bad_length = segment(1, 10)
    bad_length[frame_offset(1, 4) + 8 : frame_offset(1, 4) + 12] = b"\xff\xff\xff\x00"
    write("bad-length", {1: bad_length})

    zeros = segment(1, 10) + bytes(300)
    write("zeroed-tail", {1: zeros})

    torn_in_zeros = torn[: frame_offset(1, 9) + 7] + bytes(4096)  # cut mid-append, zeros after
    write("torn-tail-in-zeros", {1: torn_in_zeros})

    sealed = segment(1, 10)
    sealed[frame_offset(1, 2) + fmt.FRAME_HEADER_SIZE] ^= 0x01
    write("bit-flip-in-sealed-segment", {1: sealed, 11: segment(11, 5)})

    sealed_torn = segment(1, 10)[: frame_offset(1, 8) + 5]
    write("torn-sealed-segment", {1: sealed_torn, 11: segment(11, 5)})

    write("empty-new-segment", {1: segment(1, 10), 11: b""})

    future = segment(1, 3)
    future[6:8] = (99).to_bytes(2, "little")
    write("future-version", {1: future})


if __name__ == "__main__":
    main()
