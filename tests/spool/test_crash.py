"""Crash safety with real processes: a writer is killed with SIGKILL at random moments.

After every kill the spool reopens, and every append the writer saw acknowledged is either
consumed (behind the durable cursor, or acknowledged by the consumer) or in the backlog
exactly once, with its bytes intact; and what was consumed out of order before a kill is
not all handed out again (the cursor file keeps acknowledgements beyond the cursor).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

from agent.config import SpoolConfig
from agent.spool import Spool

WRITER = Path(__file__).parent / "crash_writer.py"
ROUNDS = 24


def intact(payload: bytes) -> bool:
    body, _, crc = payload.decode().rpartition("-")
    return f"{zlib.crc32(body.encode()):08x}" == crc


def run_writer_and_kill(directory: Path, out: Path, rng: random.Random) -> None:
    with out.open("wb") as handle:
        proc = subprocess.Popen([sys.executable, str(WRITER), str(directory)], stdout=handle)
    deadline = time.monotonic() + 20
    while b"READY" not in out.read_bytes():
        assert proc.poll() is None, "the writer died before it was ready"
        assert time.monotonic() < deadline, "the writer never became ready"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.25))
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def acknowledged(out: Path) -> tuple[dict[int, bytes], set[int]]:
    """The appends acknowledged to the writer, and the seqs its consumer acknowledged."""
    found, consumed = {}, set()
    for line in out.read_bytes().split(b"\n")[:-1]:  # the last line may be cut by the kill
        if line.startswith(b"A "):
            _, seq, payload = line.split(b" ", 2)
            found[int(seq)] = payload
        elif line.startswith(b"C "):
            consumed.add(int(line[2:]))
    return found, consumed


async def backlog(directory: Path) -> tuple[int, list[tuple[int, bytes]]]:
    spool = Spool(SpoolConfig(dir=str(directory), min_free_bytes=0))
    spool.open()
    await spool.start()
    entries = []
    while batch := await spool.read(5000):
        entries.extend((e.seq, e.payload) for e in batch)
    cursor = spool.cursor
    await spool.close()
    return cursor, entries


async def test_every_acknowledged_append_survives_kill_9_exactly_once(tmp_path: Path):
    rng = random.Random(20261125)
    directory = tmp_path / "spool"
    acked: dict[int, bytes] = {}
    consumed: set[int] = set()
    not_again = 0  # consumed beyond the cursor before a kill, and not handed out again
    for round_ in range(ROUNDS):
        out = tmp_path / f"round-{round_}.out"
        run_writer_and_kill(directory, out, rng)
        new, taken = acknowledged(out)
        assert not set(new) & set(acked), "a seq was acknowledged twice"
        acked.update(new)
        consumed |= taken

        cursor, entries = await backlog(directory)
        seqs = [seq for seq, _ in entries]
        assert seqs == sorted(set(seqs)), f"round {round_}: backlog out of order or doubled"
        assert all(intact(payload) for _, payload in entries), f"round {round_}: corrupted"
        held = dict(entries)
        for seq, payload in acked.items():
            if seq >= cursor and seq not in consumed:
                assert held.get(seq) == payload, f"round {round_}: acknowledged seq {seq} lost"
            elif seq in held:
                assert held[seq] == payload, f"round {round_}: seq {seq} changed"
        not_again += sum(1 for seq in taken if seq >= cursor and seq not in held)
    assert len(acked) > 1000, "the writer barely ran: the test proves little"
    assert not_again > 0, "no acknowledgement beyond the cursor outlived a kill"
