"""A local stand-in for Paigo's API, following its published behaviour, with faults to inject.

* `POST /oauth/token`: OAuth 2.0 client credentials, JSON body `{"audience", "grant_type":
  "client_credentials", "client_id", "client_secret"}` -> `{"access_token", "expires_in",
  "token_type": "Bearer"}`; refused credentials get 401.
* `POST /usage`: one record per request (JSON), `Authorization: Bearer <token>`, optional
  `?invoice=true`; checks the record as Paigo documents it (400 when it is not valid) and
  stores it. With `accept_arrays`, a JSON array is taken too (for `upstream.mode = "array"`),
  answered `{"results": [{"status": N}, ...]}`, one per record.
* Faults (methods here, or `POST /_fake/faults` with the same names as JSON): fail the
  next N requests with a status (and Retry-After), delay answers, drop the connection,
  expire every token, reject given customers with 400, answer 404 for given customers.
* `GET /customers/{customerId}/usage?aggregationInterval=none&aggregationPurpose=metering&
  startTime=...&endTime=...`: the raw records stored for that customer in the window, with
  their metadata, grouped by dimension: `{"message", "data": [{"dimensionId", "usage":
  [{"timestamp", "recordValue", "metadata"}]}]}` (same bearer auth).
* Outcome-unknown faults, as shares of requests: store then drop the connection, store then
  answer 504 after a delay, answer 504 without storing.
* `GET /_fake/records` lists what was stored; `GET /_fake/stats` counts requests by second.

It is what `make demo` and the project's tests deliver to; `usage-agent fake-paigo` runs it.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

REQUIRED = ("timestamp", "customerId", "dimensionId", "recordValue")


@dataclass
class Received:
    record: dict[str, Any]
    invoice: bool
    at: float


@dataclass
class Faults:
    fail_next: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    delay_s: float = 0.0
    drop_next: int = 0
    reject_customers: set[str] = field(default_factory=set)
    unknown_customers: set[str] = field(default_factory=set)
    # Outcome-unknown faults, each a share of the accepted single-record requests:
    store_then_drop_rate: float = 0.0  # store the record, then close the connection unanswered
    store_then_504_rate: float = 0.0  # store it, then answer 504 after store_then_504_delay_s
    store_then_504_delay_s: float = 0.0
    lose_504_rate: float = 0.0  # answer 504 and store nothing


def paigo_problem(record: object) -> str | None:
    """Why Paigo would refuse `record` (400), or None. Written from Paigo's documentation,
    independently of the agent's own validator."""
    if not isinstance(record, dict):
        return "body must be a usage record object"
    for name in REQUIRED:
        if not isinstance(record.get(name), str) or not record[name]:
            return f"{name} is required and must be a non-empty string"
    stamp = record["timestamp"]
    if len(stamp) < 20 or not stamp[:4].isdigit() or stamp[4] != "-":
        return "timestamp must be RFC 3339 with a 4-digit year"
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return "timestamp must be RFC 3339"
    if parsed.tzinfo is None:
        return "timestamp needs an offset"
    try:
        float(record["recordValue"])
    except ValueError:
        return "recordValue must be a number in a string"
    metadata = record.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return "metadata must be an object"
    return None


class FakePaigo:
    def __init__(
        self,
        client_id: str = "test-client",
        client_secret: str = "test-secret",
        *,
        accept_arrays: bool = False,
        token_ttl_s: int = 86400,
        seed: int = 0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.accept_arrays = accept_arrays
        self.token_ttl_s = token_ttl_s
        self.faults = Faults()
        self.received: list[Received] = []
        self._by_customer: dict[str, list[Received]] = {}
        self.tokens: dict[str, float] = {}  # token -> expiry (Unix time)
        self.token_requests = 0
        self.usage_requests: Counter[int] = Counter()  # per second (Unix time, floored)
        self.statuses: Counter[int] = Counter()
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- running --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/oauth/token", self._token)
        app.router.add_post("/usage", self._usage)
        app.router.add_get("/customers/{customerId}/usage", self._read_usage)
        app.router.add_post("/_fake/faults", self._set_faults)
        app.router.add_get("/_fake/records", self._records)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_post("/_fake/reset", self._reset)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def usage_url(self) -> str:
        return f"{self.url}/usage"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/token"

    # --- faults ---------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = None) -> None:
        self.faults.fail_next, self.faults.fail_status = count, status
        self.faults.retry_after = retry_after

    def expire_tokens(self) -> None:
        self.tokens.clear()

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r.record for r in self.received]

    # --- handlers -------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json(400, {"error": "invalid_request"})
        if body.get("grant_type") != "client_credentials":
            return _json(400, {"error": "unsupported_grant_type"})
        if (body.get("client_id"), body.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return _json(401, {"error": "access_denied", "error_description": "Unauthorized"})
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.token_ttl_s
        return _json(
            200, {"access_token": token, "expires_in": self.token_ttl_s, "token_type": "Bearer"}
        )

    async def _usage(self, request: web.Request) -> web.StreamResponse:
        self.usage_requests[int(time.time())] += 1
        response = await self._answer_usage(request)
        self.statuses[response.status] += 1
        return response

    async def _answer_usage(self, request: web.Request) -> web.StreamResponse:
        faults = self.faults
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.drop_next > 0:
            faults.drop_next -= 1
            return _drop(request)
        if not self._authorized(request):
            return _json(401, {"message": "Unauthorized"})
        if faults.fail_next > 0:
            faults.fail_next -= 1
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else None
            return _json(faults.fail_status, {"message": "injected failure"}, headers)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json(400, {"message": "Invalid JSON"})
        invoice = request.query.get("invoice") == "true"
        if isinstance(body, list) and self.accept_arrays:
            results = [self._store_one(record, invoice) for record in body]
            return _json(200, {"results": [{"status": status} for status in results]})
        draw = self._random.random()
        if draw < faults.lose_504_rate:
            return _json(504, {"message": "Endpoint request timed out"})
        status = self._store_one(body, invoice)
        draw -= faults.lose_504_rate
        if status == 200 and draw < faults.store_then_drop_rate:
            return _drop(request)
        draw -= faults.store_then_drop_rate
        if status == 200 and draw < faults.store_then_504_rate:
            await asyncio.sleep(faults.store_then_504_delay_s)
            return _json(504, {"message": "Endpoint request timed out"})
        messages = {200: "Success", 400: "Bad Request", 404: "Not Found"}
        return _json(status, {"message": messages.get(status, "error")})

    async def _read_usage(self, request: web.Request) -> web.Response:
        """Paigo's raw usage read: `aggregationInterval=none`, records in
        [startTime, endTime) grouped by dimension, with their metadata."""
        if not self._authorized(request):
            return _json(401, {"message": "Unauthorized"})
        query = request.query
        if query.get("aggregationInterval") != "none":
            return _json(400, {"message": "only aggregationInterval=none is served here"})
        try:
            start = _instant(query["startTime"])
            end = _instant(query["endTime"])
        except (KeyError, ValueError):
            return _json(400, {"message": "startTime and endTime must be RFC 3339"})
        customer = request.match_info["customerId"]
        by_dimension: dict[str, list[dict[str, Any]]] = {}
        for received in self._by_customer.get(customer, []):
            record = received.record
            if not start <= _instant(record["timestamp"]) < end:
                continue
            by_dimension.setdefault(record["dimensionId"], []).append(
                {
                    "timestamp": record["timestamp"],
                    "recordValue": record["recordValue"],
                    "metadata": record.get("metadata", {}),
                }
            )
        data = [{"dimensionId": d, "usage": usage} for d, usage in by_dimension.items()]
        return _json(200, {"message": "Success", "data": data})

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Bearer" and self.tokens.get(token, 0) >= time.time()

    def _store_one(self, record: Any, invoice: bool) -> int:
        if paigo_problem(record) is not None:
            return 400
        if record["customerId"] in self.faults.reject_customers:
            return 400
        if record["customerId"] in self.faults.unknown_customers:
            return 404
        self._keep(Received(record, invoice, time.time()))
        return 200

    def _keep(self, received: Received) -> None:
        self.received.append(received)
        self._by_customer.setdefault(received.record["customerId"], []).append(received)

    def delete(self, received: Received) -> None:
        """Lose a stored record behind the agent's back (for reconcile tests)."""
        self.received.remove(received)
        self._by_customer[received.record["customerId"]].remove(received)

    def duplicate(self, received: Received) -> None:
        """Store a record a second time behind the agent's back."""
        self._keep(Received(dict(received.record), received.invoice, time.time()))

    async def _set_faults(self, request: web.Request) -> web.Response:
        changes = orjson.loads(await request.read())
        for key, value in changes.items():
            if key == "expire_tokens":
                self.expire_tokens()
            elif hasattr(self.faults, key):
                setattr(self.faults, key, set(value) if key.endswith("customers") else value)
            else:
                return _json(400, {"error": f"unknown fault {key!r}"})
        return _json(200, {"ok": True})

    async def _records(self, request: web.Request) -> web.Response:
        return _json(200, [{"record": r.record, "invoice": r.invoice} for r in self.received])

    async def _reset(self, request: web.Request) -> web.Response:
        self.received.clear()
        self._by_customer.clear()
        self.usage_requests.clear()
        self.statuses.clear()
        return _json(200, {"ok": True})

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(
            200,
            {
                "per_second": {str(k): v for k, v in sorted(self.usage_requests.items())},
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "token_requests": self.token_requests,
                "records": len(self.received),
            },
        )


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer (the client sees a reset or EOF)."""
    if request.transport is not None:
        request.transport.abort()
    return web.StreamResponse(status=500)  # never reaches the client


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )
