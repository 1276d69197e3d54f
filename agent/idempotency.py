"""Durable memory of `Idempotency-Key`s: a repeat of a key gets the first answer again.

The keys live in memory (an ordered map, oldest first) and in a spool of their own under
`<spool.dir>/idempotency/`, so they survive restarts and crashes with the same frame
format, checksums and torn-tail recovery as the usage spool. Each entry is the JSON
`{"k": key, "t": unix seconds, "s": status, "b": response body, "f": fingerprint}`, where
the fingerprint is a hash of the request (body and invoice flag): a key used again for a
*different* request is refused (`KeyReused`, answered 422 as the IETF Idempotency-Key draft
says) instead of replaying an answer that is not this request's. (Entries written before
fingerprints existed have none and match any request.)

Bounds: a key is remembered for `ingest.idempotency_window_s`, and at most
`ingest.idempotency_max_keys` keys are kept (the oldest are forgotten first). Forgetting a
key acknowledges its entry, so the key spool's segments are deleted as the window slides.
Start-up reads every remembered key: its cost grows with `idempotency_max_keys`, not with
the usage backlog.

Not guaranteed: the key is stored just after the records it answers for. A crash in that
window (one fsync long) forgets the key, and a retry of that request is stored again; both
copies carry the same stable key in their envelopes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import orjson

from agent.config import IngestConfig, MiB, SpoolConfig
from agent.errors import AgentError
from agent.spool.side import side_spool

MAX_KEY_CHARS: Final = 255
MAX_BYTES: Final = 64 * MiB  # past it a key is remembered in memory only, until a restart


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


@dataclass(slots=True)
class _Remembered:
    seq: int
    at: float
    answer: Answer
    fingerprint: str


class KeyReused(AgentError):
    """The key was used before for a different request."""


def fingerprint(body: bytes, invoice: bool) -> str:
    """What makes two requests under one key the same request."""
    digest = hashlib.blake2b(body, digest_size=16)
    digest.update(b"invoice" if invoice else b"")
    return digest.hexdigest()


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an idempotency key, or None."""
    if not key or len(key) > MAX_KEY_CHARS:
        return f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters"
    if not key.isascii() or not key.isprintable():
        return "Idempotency-Key must be printable ASCII"
    return None


class IdempotencyStore:
    def __init__(
        self,
        spool_config: SpoolConfig,
        ingest: IngestConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spool = side_spool(spool_config, "idempotency", MAX_BYTES)
        self._window = ingest.idempotency_window_s
        self._max_keys = ingest.idempotency_max_keys
        self._clock = clock
        self._keys: OrderedDict[str, _Remembered] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[Answer | None]] = {}

    async def start(self) -> None:
        self._spool.open()
        await self._spool.start()
        while entries := await self._spool.read(10_000):
            for entry in entries:
                item = orjson.loads(entry.payload)
                answer = Answer(item["s"], item["b"].encode())
                remembered = _Remembered(entry.seq, item["t"], answer, item.get("f", ""))
                self._keys[item["k"]] = remembered
        self._forget_old()

    async def stop(self) -> None:
        await self._spool.close()

    @property
    def bytes_used(self) -> int:
        return self._spool.bytes_used

    def __len__(self) -> int:
        return len(self._keys)

    async def begin(self, key: str, request: str) -> Answer | None:
        """The first answer for `key` if it is remembered; otherwise None, and the caller
        owns the key until it calls `finish` (a concurrent request with the same key waits
        for that and then gets the same answer). KeyReused when the key was used for a
        request with another fingerprint (`request`)."""
        self._forget_old()
        while True:
            remembered = self._keys.get(key)
            if remembered is not None:
                if remembered.fingerprint not in ("", request):
                    raise KeyReused(f"Idempotency-Key {key[:80]!r} was used for another request")
                return remembered.answer
            waiting = self._in_flight.get(key)
            if waiting is None:
                self._in_flight[key] = asyncio.get_running_loop().create_future()
                return None
            answer = await asyncio.shield(waiting)
            if answer is not None:
                return answer

    async def finish(self, key: str, answer: Answer | None, request: str = "") -> None:
        """Remember `answer` for `key` (durably) or, with None, release the key unanswered
        (the request failed and stored nothing, so a retry must be tried afresh)."""
        try:
            if answer is not None:
                now, seq = self._clock(), -1
                entry = {
                    "k": key,
                    "t": now,
                    "s": answer.status,
                    "b": answer.body.decode(),
                    "f": request,
                }
                try:
                    [seq] = await self._spool.append([orjson.dumps(entry)])
                finally:  # if it could not be stored, remember it at least until a restart
                    self._keys[key] = _Remembered(seq, now, answer, request)
        finally:
            waiting = self._in_flight.pop(key)
            waiting.set_result(answer)

    def _forget_old(self) -> None:
        horizon = self._clock() - self._window
        forgotten = []
        while self._keys:
            oldest = next(iter(self._keys.values()))
            if oldest.at >= horizon and len(self._keys) <= self._max_keys:
                break
            forgotten.append(self._keys.popitem(last=False)[1].seq)
        if forgotten:
            self._spool.ack(forgotten)
