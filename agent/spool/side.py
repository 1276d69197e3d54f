"""Side spools: small spools of their own under the usage spool's directory, for what the
agent must remember durably beside the usage (the delivery ledger's marks, the
`Idempotency-Key`s).

They share the usage spool's frame format, checksums and recovery, with settings of their
own: every append is fsynced (they are small and rare); their segments are small
(`SIDE_SEGMENT_BYTES`) and bounded by what they hold; and they are exempt from
`spool.min_free_bytes`, the reserve
that refuses *ingest*: the ledger's marks are what let delivery drain a full spool, so they
may use that reserve. Their bytes count in `spool.max_bytes` with the usage segments'.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from agent.config import SpoolConfig
from agent.spool.spool import Spool

SIDE_SEGMENT_BYTES: Final = 256 * 1024


def side_spool(main: SpoolConfig, name: str, max_bytes: int, *, reserve: int = 0) -> Spool:
    """The side spool `<main.dir>/<name>`, holding at most `max_bytes` (not opened yet).
    `reserve`: free space it leaves (0: it may use the ingest reserve, as the ledger may)."""
    segment = min(SIDE_SEGMENT_BYTES, max_bytes)
    config = replace(
        main,
        dir=f"{main.dir.rstrip('/')}/{name}",
        fsync="always",
        min_free_bytes=reserve,
        segment_bytes=segment,
        max_bytes=max_bytes,
        preallocate=True,
    )
    return Spool(config)
