"""A local stand-in for Paigo's API: its published contract, the behaviour observed in a
public copy of its backend (both in `../shared/PAIGO.md`), and faults to inject.

Published, and served as published:
* `POST /oauth/token`: client credentials, JSON `{"audience", "grant_type":
  "client_credentials", "client_id", "client_secret"}` -> `{"access_token", "expires_in",
  "token_type": "Bearer"}`. Wrong credentials: 401; a wrong audience: 403.
* `POST /usage`: one record a request, bearer token, `?invoice`. **201** `{"message"}`; a
  record Paigo's validator refuses: 400 `{"statusCode": 400, "message": [...], "error"}`
  (`paigo_rules`). A missing token is answered 401; an unknown or expired one 403, as
  Paigo's API gateway does.
* `GET /customers/{customerId}/usage` with `aggregationInterval=none`: the raw records of
  [startTime, endTime) (default: the last 24 h) grouped by dimension, `{"message", "data":
  [{"dimensionId", "offeringId", "usage": [{"timestamp", "recordValue", "metadata"}]}]}`.
  An `endTime` after now is refused with 400 ("end time must be before the current time").
* `GET /dimensions`: the catalog given to the stand-in, `{"message", "data": [...]}`.

Observed, and copied:
* unknown top-level fields are stripped; unknown customers and dimensions are stored (201);
* `invoice` with **any** value switches invoicing on; it is refused with 400 (after the
  record is stored) unless the dimension is `upfront` with `last` aggregation and the
  customer's offering has it;
* a customer has an enrollment date and an offering: reads leave out records before the
  enrollment unless `ignoreEnrollmentDate=true`, and show only the offering's dimensions.
  (Customers the stand-in was not told about read as enrolled since 1970 in every
  dimension: tests make usage for customers made up on the spot.);
* a point's identity is (customer, dimension, metadata, millisecond): a second write with
  the same identity overwrites the first; a write becomes readable `write_delay_s` after
  its 201; `recordValue` is stored as a 64-bit float and read back as JavaScript prints it;
  timestamps are read back as `toISOString` prints them.

Test hooks: `received` lists every write answered 201 (a resend that was stored twice is
there twice, though the store holds one point); `stored()` is what the store holds. Faults
(attributes of `Faults`, also `POST /_fake/faults`): fail the next N usage requests with a
status (and Retry-After), delay answers, drop connections, refuse customers (400) or
answer 404 for them, the outcome-unknown trio (store then drop, store then 504, 504
without storing), losses after the 201 (`store-nothing-after-201`, `lose-later`:
`lost_after_201` lists them), and failing reads. `GET /_fake/records`,
`GET /_fake/stats`, `POST /_fake/reset`.

It is what `make demo` and the project's tests deliver to; `usage-agent fake-paigo` runs it.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web

from agent.testing.paigo_rules import (
    epoch_ms,
    instant,
    iso_ms,
    js_number,
    read_window,
    strip_unknown,
    usage_problems,
)

AUDIENCE: Final = "https://qnonyh1pc7.execute-api.us-east-1.amazonaws.com"
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
DIMENSION_DEFAULTS: Final = {
    "aggregationMethod": "max",
    "aggregationInterval": "hour",
    "paymentSchedule": "arrear",
    "sampleType": "delta",
    "consumptionUnit": "unit",
    "usageIncrement": "1",
    "rounding": "none",
    "tiers": [],
    "tiersGroupByMetadata": [],
    "metadata": {},
}


@dataclass
class Received:
    """One write answered 201 (stored unless a fault dropped it after the answer)."""

    record: dict[str, Any]
    invoice: bool
    at: float


@dataclass
class Point:
    """What the store holds for one identity; readable from `visible_at` (Unix time)."""

    received: Received
    ms: int  # the timestamp, in milliseconds since the epoch
    value: float
    visible_at: float
    gone_at: float = float("inf")  # a lose-later fault drops it then


@dataclass
class Customer:
    enrolled_at: datetime = EPOCH
    offering_id: str = "offering-1"
    dimensions: frozenset[str] | None = None  # the offering's; None: every dimension


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
    reads_fail_next: int = 0  # the next N usage reads get reads_fail_status
    reads_fail_status: int = 503
    dimensions_fail: int = 0  # GET /dimensions answers this status (0: no fault)
    # Losses after a 201 (Paigo's write is asynchronous, and a failed one only logged), as
    # shares of the records answered 201; over HTTP also "store-nothing-after-201" and
    # "lose-later":
    store_nothing_after_201: float = 0.0  # answered 201, never stored
    lose_later: float = 0.0  # stored, then gone after lose_later_after_s
    lose_later_after_s: float = 1.0


class FakePaigo:
    def __init__(
        self,
        client_id: str = "test-client",
        client_secret: str = "test-secret",
        *,
        accept_arrays: bool = False,
        token_ttl_s: int = 86400,
        seed: int = 0,
        audience: str = AUDIENCE,
        write_delay_s: float = 0.0,
        dimensions: list[dict[str, Any]] | None = None,
        customers: dict[str, Customer] | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.audience = audience
        self.accept_arrays = accept_arrays  # for upstream.mode = "array": not Paigo's API
        self.token_ttl_s = token_ttl_s
        self.write_delay_s = write_delay_s
        self.dimensions = [{**DIMENSION_DEFAULTS, **d} for d in dimensions or []]
        self.customers = customers or {}
        self.faults = Faults()
        self.received: list[Received] = []
        # the store: customer -> point identity -> point (a read touches one customer's)
        self._points: dict[str, dict[tuple[str, bytes, int], Point]] = {}
        self._extra_points: list[Point] = []  # doubles made behind the agent's back
        self.tokens: dict[str, float] = {}  # token -> expiry (Unix time)
        self.token_requests = 0
        self.reads: list[dict[str, str]] = []  # the query of every usage read
        self.read_customers: list[str] = []  # and whose usage it read
        self.dimension_reads = 0
        self.lost_after_201: list[Received] = []  # the writes a loss fault dropped
        self.refused_reads: list[str] = []  # why each read answered 400 was refused
        self.usage_requests: Counter[int] = Counter()  # per second (Unix time, floored)
        self.arrivals: deque[float] = deque(maxlen=10_000)  # monotonic time of the latest
        self.failed_at: list[float] = []  # monotonic time of each injected failure (fail_next)
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
        app.router.add_get("/dimensions", self._dimensions)
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

    # --- faults and test hooks ------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = None) -> None:
        self.faults.fail_next, self.faults.fail_status = count, status
        self.faults.retry_after = retry_after

    def expire_tokens(self) -> None:
        self.tokens.clear()

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record written with a 201, in order: a record stored twice is here twice."""
        return [r.record for r in self.received]

    def stored(self) -> list[dict[str, Any]]:
        """The records the store holds now (after overwrites, before any write delay)."""
        return [p.received.record for p in self._all_points()]

    def delete(self, received: Received) -> None:
        """Lose a stored record behind the agent's back."""
        points = self._points.get(received.record["customerId"], {})
        for key, point in list(points.items()):
            if point.received is received:
                del points[key]

    def duplicate(self, received: Received) -> None:
        """Hold a record a second time behind the agent's back (Paigo's store cannot do this
        by itself: a point with the same identity overwrites)."""
        point = self._point(Received(dict(received.record), received.invoice, time.time()))
        if point is not None:
            self._extra_points.append(point)

    # --- POST /oauth/token ----------------------------------------------------------------

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
        if body.get("audience") != self.audience:
            return _json(
                403,
                {"error": "access_denied", "error_description": "Service not enabled"},
            )
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.token_ttl_s
        return _json(
            200, {"access_token": token, "expires_in": self.token_ttl_s, "token_type": "Bearer"}
        )

    def _refusal(self, request: web.Request) -> web.Response | None:
        """401 without a bearer token, 403 with one Paigo does not know (its gateway)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return _json(401, {"message": "Unauthorized"})
        if self.tokens.get(token, 0) < time.time():
            return _json(403, {"message": "Forbidden"})
        return None

    # --- POST /usage ----------------------------------------------------------------------

    async def _usage(self, request: web.Request) -> web.StreamResponse:
        self.usage_requests[int(time.time())] += 1
        self.arrivals.append(time.monotonic())
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
        if (refused := self._refusal(request)) is not None:
            return refused
        if faults.fail_next > 0:
            faults.fail_next -= 1
            self.failed_at.append(time.monotonic())
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else None
            return _json(faults.fail_status, {"message": "injected failure"}, headers)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _bad_request(["Unexpected token in JSON"])
        invoice = "invoice" in request.query  # any value, false included
        if isinstance(body, list) and self.accept_arrays:
            results = [self._write(record, invoice)[0] for record in body]
            return _json(200, {"results": [{"status": status} for status in results]})
        draw = self._random.random()
        if draw < faults.lose_504_rate:
            return _json(504, {"message": "Endpoint request timed out"})
        status, problems = self._write(body, invoice)
        draw -= faults.lose_504_rate
        if status == 201 and draw < faults.store_then_drop_rate:
            return _drop(request)
        draw -= faults.store_then_drop_rate
        if status == 201 and draw < faults.store_then_504_rate:
            await asyncio.sleep(faults.store_then_504_delay_s)
            return _json(504, {"message": "Endpoint request timed out"})
        if status == 400:
            return _bad_request(problems)
        if status == 404:
            return _json(404, {"message": "Customer not found"})
        return _json(201, {"message": "Usage record created"})

    def _write(self, body: Any, invoice: bool) -> tuple[int, list[str]]:
        """Validate and store one record: (status, problems)."""
        if problems := usage_problems(body):
            return 400, problems
        record = strip_unknown(body)
        customer = record["customerId"]
        if customer in self.faults.reject_customers:
            return 400, ["customer refused by an injected fault"]
        if customer in self.faults.unknown_customers:
            return 404, []
        received = Received(record, invoice, time.time())
        self.received.append(received)
        point = self._point(received)
        if point is not None and self._draw(self.faults.store_nothing_after_201):
            self.lost_after_201.append(received)
        elif point is not None:  # else the write after the 201 fails, logged only at Paigo
            if self._draw(self.faults.lose_later):
                point.gone_at = received.at + self.faults.lose_later_after_s
                self.lost_after_201.append(received)
            self._points.setdefault(customer, {})[self._identity(record, point.ms)] = point
        if invoice and (why := self._cannot_invoice(record)) is not None:
            return 400, [why]  # stored first, then refused, as Paigo does
        return 201, []

    def _draw(self, rate: float) -> bool:
        return rate > 0 and self._random.random() < rate

    def _point(self, received: Received) -> Point | None:
        moment = instant(received.record["timestamp"])
        if moment is None:
            return None
        value = float(received.record["recordValue"])
        return Point(received, epoch_ms(moment), value, received.at + self.write_delay_s)

    @staticmethod
    def _identity(record: dict[str, Any], ms: int) -> tuple[str, bytes, int]:
        """A point's identity within its customer: dimension, metadata, millisecond."""
        metadata = orjson.dumps(record.get("metadata") or {}, option=orjson.OPT_SORT_KEYS)
        return record["dimensionId"], metadata, ms

    def _cannot_invoice(self, record: dict[str, Any]) -> str | None:
        dimension = self._dimension(record["dimensionId"])
        if dimension is None:
            return "dimension not found"
        if (dimension["paymentSchedule"], dimension["aggregationMethod"]) != ("upfront", "last"):
            return "invoice is only allowed for upfront dimensions with last aggregation"
        offering = self._customer(record["customerId"]).dimensions
        if offering is not None and record["dimensionId"] not in offering:
            return "the customer is not enrolled in an offering with this dimension"
        return None

    # --- GET /customers/{customerId}/usage ------------------------------------------------

    async def _read_usage(self, request: web.Request) -> web.Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        query = request.query
        self.reads.append(dict(query))
        self.read_customers.append(request.match_info["customerId"])
        if self.faults.reads_fail_next > 0:
            self.faults.reads_fail_next -= 1
            return _json(self.faults.reads_fail_status, {"message": "injected failure"})
        now = datetime.now(UTC)
        window = read_window(query, now)
        if isinstance(window, str):
            self.refused_reads.append(window)
            return _bad_request([window])
        start, end = window
        customer_id = request.match_info["customerId"]
        customer = self._customer(customer_id)
        if query.get("ignoreEnrollmentDate") != "true":
            start = max(start, customer.enrolled_at)
        first, last = epoch_ms(start), epoch_ms(end)
        by_dimension: dict[str, list[dict[str, Any]]] = {}
        for point in sorted(self._all_points(customer_id), key=lambda p: p.ms):
            record = point.received.record
            if not first <= point.ms < last:
                continue
            if point.visible_at > time.time():
                continue
            if customer.dimensions is not None and record["dimensionId"] not in customer.dimensions:
                continue
            by_dimension.setdefault(record["dimensionId"], []).append(
                {
                    "timestamp": iso_ms(point.ms),
                    "recordValue": js_number(point.value),
                    "metadata": record.get("metadata") or {},
                }
            )
        data = [
            {"dimensionId": d, "offeringId": customer.offering_id, "usage": usage}
            for d, usage in by_dimension.items()
        ]
        return _json(200, {"message": "Success", "data": data})

    def _customer(self, customer_id: str) -> Customer:
        return self.customers.get(customer_id) or Customer()

    def _all_points(self, customer: str | None = None) -> list[Point]:
        """The points held now (of one customer, or of all)."""
        now = time.time()
        if customer is None:
            held = [p for points in self._points.values() for p in points.values()]
        else:
            held = list(self._points.get(customer, {}).values())
        extra = [
            p for p in self._extra_points if customer in (None, p.received.record["customerId"])
        ]
        return [p for p in (*held, *extra) if p.gone_at > now]

    # --- GET /dimensions ------------------------------------------------------------------

    async def _dimensions(self, request: web.Request) -> web.Response:
        self.dimension_reads += 1
        if (refused := self._refusal(request)) is not None:
            return refused
        if self.faults.dimensions_fail:
            return _json(self.faults.dimensions_fail, {"message": "injected failure"})
        return _json(200, {"message": "Success", "data": self.dimensions})

    def _dimension(self, dimension_id: str) -> dict[str, Any] | None:
        return next((d for d in self.dimensions if d["dimensionId"] == dimension_id), None)

    # --- /_fake ---------------------------------------------------------------------------

    async def _set_faults(self, request: web.Request) -> web.Response:
        changes = orjson.loads(await request.read())
        for name, value in changes.items():
            key = name.replace("-", "_")
            if key == "expire_tokens":
                self.expire_tokens()
            elif hasattr(self.faults, key):
                setattr(self.faults, key, set(value) if key.endswith("customers") else value)
            else:
                return _json(400, {"error": f"unknown fault {name!r}"})
        return _json(200, {"ok": True})

    async def _records(self, request: web.Request) -> web.Response:
        return _json(200, [{"record": r.record, "invoice": r.invoice} for r in self.received])

    async def _reset(self, request: web.Request) -> web.Response:
        self.received.clear()
        self._points.clear()
        self._extra_points.clear()
        self.usage_requests.clear()
        self.arrivals.clear()
        self.failed_at.clear()
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
                "points": len(self._all_points()),
                "reads": len(self.reads),
                "lost_after_201": len(self.lost_after_201),
            },
        )


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer (the client sees a reset or EOF)."""
    if request.transport is not None:
        request.transport.abort()
    return web.StreamResponse(status=500)  # never reaches the client


def _bad_request(messages: list[str]) -> web.Response:
    return _json(400, {"statusCode": 400, "message": messages, "error": "Bad Request"})


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )
