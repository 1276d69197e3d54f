"""The ingest API: the handlers that take usage from local apps (served by http_server.py).

Its OpenAPI document is `openapi.json` beside this file (tests/test_openapi.py keeps it true).

`POST /usage` takes Paigo's own body (one record, a JSON array of records, or NDJSON) and
answers `202 {"accepted": N, "ids": [...]}` only once the spool has made every record of
the request durable. A request is all or nothing: any bad record, and none is stored.

| status | when                                                                           |
|--------|--------------------------------------------------------------------------------|
| 202    | stored durably (with `fsync = "always"`: after the fsync)                      |
| 400    | malformed JSON (with the parser's position), bad records (every problem), a    |
|        | bad `invoice` flag or `Idempotency-Key`, malformed HTTP                        |
| 401    | `ingest.token_file` is set and the bearer token is missing or wrong            |
| 405    | a method other than POST                                                       |
| 408    | the request did not arrive whole within `ingest.body_timeout_s`                |
| 413    | body over `ingest.max_request_bytes`, or over `ingest.max_records_per_request` |
| 414    | a URL over 8 KiB                                                               |
| 415    | a content type other than JSON or NDJSON (a form body that is JSON, as         |
|        | `curl -d` sends it, is taken)                                                  |
| 422    | an `Idempotency-Key` used before for another request (body or invoice flag)    |
| 431    | headers over 32 KiB or 100 fields                                              |
| 503    | the agent is shutting down (with Retry-After)                                  |
| 507    | the spool is full or the disk is out of space (with Retry-After)               |

Also `GET /healthz`, `GET /readyz` (always open, for probes), `GET /metrics` and
`GET /status` (behind the ingest token when `ingest.token_file` is set).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import orjson

from agent import __version__
from agent.catalog import Catalog
from agent.config import IngestConfig
from agent.delivery.status import DeliveryStatus
from agent.delivery.verify import VerifyStatus
from agent.errors import Problem, RecordInvalid, SpoolError, SpoolFull
from agent.http_server import HttpError, Request, Response, Routes
from agent.idempotency import Answer, IdempotencyStore, KeyReused, fingerprint, key_problem
from agent.logs import Throttled
from agent.metrics import Metrics
from agent.records import (
    DEFAULT_RULES,
    Rules,
    decode_envelope,
    encode_envelopes,
    validate_records,
)
from agent.spool import Spool

log = logging.getLogger(__name__)

JSON_TYPES: Final = ("application/json", "")
FORM_TYPES: Final = ("application/x-www-form-urlencoded",)
NDJSON_TYPES: Final = ("application/x-ndjson", "application/ndjson", "application/jsonl")
MAX_PROBLEMS_SHOWN: Final = 100


@dataclass
class IngestState:
    """What the handlers share; built by the service."""

    config: IngestConfig
    spool: Spool
    keys: IdempotencyStore
    metrics: Metrics
    token: bytes | None = None
    rules: Rules = DEFAULT_RULES  # the record checks as this deployment sets them
    catalog: Catalog | None = None  # Paigo's dimensions, when upstream.dimensions = "auto"
    started_at: float = field(default_factory=time.time)
    shutting_down: bool = False
    delivery_status: Callable[[], DeliveryStatus | None] = lambda: None
    verify_status: Callable[[], VerifyStatus | None] = lambda: None


class Refused(Exception):
    """A request refused before anything was stored: status, reason label, JSON body."""

    def __init__(
        self, status: int, reason: str, message: str, *, records: int = 1, **extra: object
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.records = records
        self.body: dict[str, object] = {"error": message, **extra}
        self.headers: dict[str, str] = {}


# Refusals an operator must hear of (the disk, a wrong token), at most once a minute each.
_REFUSALS_LOGGED: Final = {
    401: Throttled(log, "ingest refused a request without the right token (401)"),
    507: Throttled(log, "ingest refused records: no space (507)"),
}


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps(body), headers=headers)


def answer_response(answer: Answer, headers: dict[str, str] | None = None) -> Response:
    return Response(answer.status, answer.body, headers=headers)


def routes(state: IngestState) -> Routes:
    """The API's routes, for the HTTP server (openapi.json lists the same)."""
    return {
        "/usage": {"POST": functools.partial(post_usage, state)},
        "/healthz": {"GET": healthz},
        "/readyz": {"GET": functools.partial(readyz, state)},
        "/metrics": {"GET": functools.partial(_guarded, metrics, state)},
        "/status": {"GET": functools.partial(_guarded, status, state)},
    }


async def _guarded(
    handler: Callable[[IngestState, Request], Awaitable[Response]],
    state: IngestState,
    request: Request,
) -> Response:
    """`handler`, behind the ingest token when one is set (what the agent holds and how it
    is doing is not for every local user; /healthz and /readyz stay open for probes)."""
    try:
        _check_token(request, state)
    except Refused as refused:
        return json_response(refused.status, refused.body, refused.headers)
    return await handler(state, request)


def refused_by_http(state: IngestState, error: HttpError) -> Response:
    """The answer to a request the HTTP layer refused (or no route takes), counted by
    status, and as a rejected record unless it was for a path that is not ours. (The
    latency histogram is for answers that a handler timed.)"""
    headers = {"Allow": error.allow} if error.allow else None
    counts = state.metrics.ingest
    counts.requests[error.status] += 1
    if error.status != 404:
        counts.rejected[error.reason] += 1
    return json_response(error.status, {"error": str(error)}, headers)


# --- POST /usage --------------------------------------------------------------------------


async def post_usage(state: IngestState, request: Request) -> Response:
    started = time.perf_counter()
    try:
        response = await _ingest(request, state)
    except Refused as refused:
        response = json_response(refused.status, refused.body, refused.headers)
        state.metrics.ingest.rejected[refused.reason] += refused.records
        if (throttled := _REFUSALS_LOGGED.get(refused.status)) is not None:
            throttled.warning("%s", refused.body.get("error"))
    state.metrics.ingest.answered(response.status, time.perf_counter() - started)
    return response


async def _ingest(request: Request, state: IngestState) -> Response:
    _check_token(request, state)
    if state.shutting_down:
        raise _unavailable(state, 503, "shutting_down", "the agent is shutting down; retry")
    invoice = _invoice_flag(request)
    key = request.headers.get("idempotency-key")
    if key is not None and (why := key_problem(key)) is not None:
        raise Refused(400, "bad_idempotency_key", why)
    objs = _read_records(request, state.config)
    if key is None:
        return answer_response(await _store(state, objs, invoice, ""))
    this_request = fingerprint(request.body, invoice)
    try:
        earlier = await state.keys.begin(key, this_request)
    except KeyReused as exc:
        raise Refused(422, "idempotency_key_reused", f"{exc}; nothing was stored") from None
    if earlier is not None:
        return answer_response(earlier, {"Idempotent-Replayed": "true"})
    answer = None
    try:
        answer = await _store(state, objs, invoice, key)
    finally:
        await _remember(state, key, answer, this_request)
    return answer_response(answer)


async def _remember(state: IngestState, key: str, answer: Answer | None, request: str) -> None:
    try:
        await state.keys.finish(key, answer, request)
    except SpoolError as exc:
        log.error("could not remember Idempotency-Key (the records are stored): %s", exc)


async def _store(state: IngestState, objs: list[object], invoice: bool, key: str) -> Answer:
    try:
        records = validate_records(objs, state.rules)
    except RecordInvalid as exc:
        raise _invalid(exc.problems, len(objs)) from None
    if state.catalog is not None:
        dimensions = [str(r["dimensionId"]) for r in records]
        if problems := await state.catalog.problems(dimensions, invoice):
            raise _invalid(problems, len(objs), "refused_by_catalog")
    now_ms = time.time_ns() // 1_000_000
    payloads = encode_envelopes([orjson.dumps(r) for r in records], now_ms, invoice, key)
    try:
        seqs = await state.spool.append(payloads)
    except SpoolFull as exc:
        raise _unavailable(state, 507, "spool_full", str(exc), records=len(objs)) from None
    except SpoolError as exc:
        raise _unavailable(state, 503, "spool_unavailable", str(exc), records=len(objs)) from None
    state.metrics.ingest.accepted += len(payloads)
    body = {"accepted": len(payloads), "ids": state.spool.record_ids(seqs)}
    return Answer(202, orjson.dumps(body))


def _invalid(problems: list[Problem], records: int, reason: str = "invalid_record") -> Refused:
    bad = len({p.index for p in problems})
    return Refused(
        400,
        reason,
        f"{bad} of {records} records are invalid; nothing was stored",
        records=records,
        errors=[p.as_dict() for p in problems[:MAX_PROBLEMS_SHOWN]],
    )


def _unavailable(
    state: IngestState, status: int, reason: str, message: str, records: int = 1
) -> Refused:
    refused = Refused(status, reason, message, records=records)
    refused.headers["Retry-After"] = str(state.config.retry_after_s)
    return refused


def _check_token(request: Request, state: IngestState) -> None:
    if state.token is None:
        return  # an app that sends its Paigo token is not refused when none is configured
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), state.token
    ):
        refused = Refused(401, "unauthorized", "a valid bearer token is required")
        refused.headers["WWW-Authenticate"] = 'Bearer realm="usage-agent"'
        raise refused


def _invoice_flag(request: Request) -> bool:
    """Only `invoice=true` (any case) asks for invoicing; any other value is taken as
    false and never forwarded (Paigo would read any value, `false` included, as true)."""
    if not request.query:
        return False
    values = urllib.parse.parse_qs(request.query, keep_blank_values=True).get("invoice")
    return values is not None and values[0].lower() == "true"


def _read_records(request: Request, config: IngestConfig) -> list[object]:
    """The request's records as parsed JSON values, or Refused. (The HTTP layer has
    already held the body to ingest.max_request_bytes and ingest.body_timeout_s.)"""
    raw_type = request.headers.get("content-type", "")
    content_type = (
        raw_type if raw_type in JSON_TYPES else raw_type.partition(";")[0].strip().lower()
    )
    if content_type in FORM_TYPES:
        objs = _parse_form_as_json(request.body, content_type)
    elif content_type in NDJSON_TYPES:
        objs = _parse_ndjson(request.body)
    elif content_type in JSON_TYPES:
        objs = _parse_json(request.body)
    else:
        raise Refused(415, "unsupported_media_type", _send_json_instead(content_type))
    if not objs:
        raise Refused(400, "empty", "the request holds no records")
    if len(objs) > config.max_records_per_request:
        raise Refused(
            413,
            "too_many_records",
            f"{len(objs)} records in one request; at most {config.max_records_per_request}",
            records=len(objs),
        )
    return objs


def _send_json_instead(content_type: str) -> str:
    return (
        f"content type {content_type!r} is not accepted; send Content-Type: application/json "
        "(one record or an array) or application/x-ndjson (one record a line)"
    )


def _parse_form_as_json(body: bytes, content_type: str) -> list[object]:
    """A body sent as a form (what `curl -d` does unless told otherwise) is taken when it
    is JSON; a real form is refused with what to send instead."""
    try:
        return _parse_json(body)
    except Refused:
        raise Refused(415, "unsupported_media_type", _send_json_instead(content_type)) from None


def _parse_json(body: bytes) -> list[object]:
    try:
        value = _loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, "malformed_json", f"malformed JSON: {exc}") from None
    return value if isinstance(value, list) else [value]


def _loads(raw: bytes) -> object:
    """The JSON value of `raw`, every integer exact: orjson reads an integer beyond 64 bits
    as a float (and one beyond about 309 digits as an error), so such a body is read again
    by the standard library, which keeps integers whole (up to its 4,300 digits)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "infinity" not in str(exc):
            raise
        return _exact_loads(raw)
    if type(value) is dict:  # one record: the common case, checked without a generator
        return _exact_loads(raw) if type(value.get("recordValue")) is float else value
    records = value if isinstance(value, list) else [value]
    if any(isinstance(r, dict) and type(r.get("recordValue")) is float for r in records):
        return _exact_loads(raw)
    return value


def _exact_loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer over the standard library's limit
        raise orjson.JSONDecodeError(f"{exc}; send such a number as a string", "", 0) from None


def _parse_ndjson(body: bytes) -> list[object]:
    objs: list[object] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            objs.append(_loads(line))
        except orjson.JSONDecodeError as exc:
            raise Refused(
                400, "malformed_json", f"malformed JSON on line {number}: {exc}"
            ) from None
    return objs


# --- the other routes ---------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return json_response(200, {"status": "alive"})


async def readyz(state: IngestState, request: Request) -> Response:
    reasons = not_ready_reasons(state)
    if reasons:
        return json_response(503, {"status": "not ready", "reasons": reasons})
    return json_response(200, {"status": "ready"})


def not_ready_reasons(state: IngestState) -> list[str]:
    """Why the agent cannot take new usage now, or cannot deliver it ([] when ready)."""
    spool = state.spool.status()
    delivery = state.delivery_status()
    reasons = []
    if state.shutting_down:
        reasons.append("shutting down")
    if spool.unwritable:
        reasons.append(f"spool not writable: {spool.unwritable}")
    if spool.full:
        reasons.append(spool.full)
    if delivery is not None and delivery.degraded:
        reasons.append(f"delivery degraded: {delivery.degraded}")
    return reasons


async def metrics(state: IngestState, request: Request) -> Response:
    body = state.metrics.exposition()
    return Response(200, body, content_type="text/plain; version=0.0.4; charset=utf-8")


def oldest_unsent_age(spool: Spool) -> float | None:
    """Seconds since the oldest undelivered record was received (None: unknown or none)."""
    head = spool.head()
    if head is None:
        return None
    try:
        received_ms = decode_envelope(head).received_at_ms
    except ValueError:
        return None
    return max(0.0, time.time() - received_ms / 1000)


async def status(state: IngestState, request: Request) -> Response:
    delivery = state.delivery_status()
    reasons = not_ready_reasons(state)
    body = {
        "version": __version__,
        "uptime_s": round(time.time() - state.started_at, 3),
        "ready": not reasons,
        "not_ready_reasons": reasons,
        "spool": {
            **state.spool.status().as_dict(),
            "oldest_unsent_age_s": oldest_unsent_age(state.spool),
        },
        "idempotency_keys": len(state.keys),
        "catalog": state.catalog.status() if state.catalog is not None else None,
        "delivery": delivery.as_dict() if delivery is not None else {},
        "verify": verify.as_dict() if (verify := state.verify_status()) is not None else None,
    }
    return json_response(200, body)
