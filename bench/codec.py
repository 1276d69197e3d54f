"""Measure the candidates for the hot path: JSON codecs and CRC32C implementations.

Run: .venv/bin/python bench/codec.py
Prints ns per operation for each candidate and its ratio to the stdlib (json / zlib.crc32,
the ceiling-free baseline measured in the same run).
"""

from __future__ import annotations

import json
import sys
import timeit
import zlib
from pathlib import Path

import crc32c
import google_crc32c
import msgspec
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from ingest import RECORD  # bench/ingest.py: one record for every benchmark

BODY = json.dumps(RECORD).encode()
ARRAY = json.dumps([RECORD] * 1000).encode()
PAYLOAD = BODY * 4


def ns(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9  # type: ignore[arg-type]


def main() -> None:
    dec = msgspec.json.Decoder()
    enc = msgspec.json.Encoder()
    rows = {
        "decode record: json": ns(lambda: json.loads(BODY), 20000),
        "decode record: orjson": ns(lambda: orjson.loads(BODY), 20000),
        "decode record: msgspec": ns(lambda: dec.decode(BODY), 20000),
        "decode 1000-array: json": ns(lambda: json.loads(ARRAY), 50),
        "decode 1000-array: orjson": ns(lambda: orjson.loads(ARRAY), 50),
        "decode 1000-array: msgspec": ns(lambda: dec.decode(ARRAY), 50),
        "encode record: json": ns(lambda: json.dumps(RECORD).encode(), 20000),
        "encode record: orjson": ns(lambda: orjson.dumps(RECORD), 20000),
        "encode record: msgspec": ns(lambda: enc.encode(RECORD), 20000),
        "crc 1 KiB: zlib.crc32 (not C)": ns(lambda: zlib.crc32(PAYLOAD), 50000),
        "crc 1 KiB: crc32c": ns(lambda: crc32c.crc32c(PAYLOAD), 50000),
        "crc 1 KiB: google_crc32c": ns(lambda: google_crc32c.value(PAYLOAD), 50000),
    }
    base: dict[str, float] = {}
    for name, value in rows.items():
        group = name.split(":")[0]
        base.setdefault(group, value)
        print(f"{name:34s} {value:10.0f} ns   x{base[group] / value:5.2f} vs first")


if __name__ == "__main__":
    main()
