"""A spool writer to be killed: appends and consumes at random, printing every ack.

Run by tests/spool/test_crash.py as `python tests/spool/crash_writer.py DIR`. It prints `READY`,
then `A <seq> <payload>` once an append of that payload is acknowledged (durable), and
`C <seq>` once the consumer has acknowledged that entry (delivered: it may be gone after a
restart, or handed out again). The consumer reads and acknowledges in shuffled order, so
the cursor moves, acknowledgements sit beyond it, and segments are deleted, while the
process may be killed at any moment.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import zlib

from agent.config import SpoolConfig
from agent.spool import Spool
from agent.spool.reader import Entry


def payload(writer: int, n: int) -> bytes:
    body = f"w{writer}-n{n}-" + "x" * (n % 97)
    return f"{body}-{zlib.crc32(body.encode()):08x}".encode()


async def main(directory: str) -> None:
    config = SpoolConfig(
        dir=directory, min_free_bytes=0, segment_bytes=16 * 1024, cursor_interval_ms=5
    )
    spool = Spool(config)
    spool.open()
    await spool.start()
    rng = random.Random(os.getpid())
    out = sys.stdout
    out.write("READY\n")
    out.flush()

    async def appender(writer: int) -> None:
        n = 0
        while True:
            payloads = [payload(writer, n + i) for i in range(rng.randint(1, 8))]
            seqs = await spool.append(payloads)
            out.write("".join(f"A {s} {p.decode()}\n" for s, p in zip(seqs, payloads, strict=True)))
            out.flush()
            n += len(payloads)

    async def consumer() -> None:
        while True:
            entries = await spool.read(rng.randint(1, 40))
            rng.shuffle(entries)
            half = len(entries) // 2
            consume(entries[:half])
            await asyncio.sleep(0.002)
            consume(entries[half:])

    def consume(entries: list[Entry]) -> None:
        spool.ack(e.seq for e in entries)
        out.write("".join(f"C {e.seq}\n" for e in entries))  # (no await since the ack)
        out.flush()

    await asyncio.gather(*(appender(k) for k in range(8)), consumer())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
