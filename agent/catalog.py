"""The dimension catalog: Paigo's dimensions, fetched, kept on disk, and asked at ingest.

Paigo stores usage for a dimension it does not have with a 201, and never bills it: silent
lost revenue. With `upstream.dimensions = "auto"` (the default) the agent reads Paigo's
`GET /dimensions` at start and every `upstream.dimensions_refresh_s`, and keeps the last
answer in `dimensions.json` beside the spool, so a restart without Paigo still has it:

    {"fetched_at": <Unix time>, "data": [<Paigo's dimension objects, as it sent them>]}

The catalog is *fresh* while its fetch is at most two refresh periods old and lists at least
one dimension. Only a fresh catalog refuses anything; a stale or missing one (Paigo down,
an endpoint that does not serve `/dimensions`) refuses nothing: usage is never blocked on
Paigo being up. A fresh catalog refuses, at ingest, with a 400 on `dimensionId`:

* a dimension Paigo does not have, with the nearest known ids as hints; a miss first
  triggers one refresh (at most one every `MISS_REFRESH_S`), for a dimension made minutes ago;
* `invoice=true` for a dimension that is not `upfront` with `last` aggregation (Paigo
  stores such a record and then answers 400: the app would never know).

It also names the `last` dimensions, which delivery keeps in order per customer, and is
shown in `/status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from agent.errors import Problem
from agent.fsio import write_atomically
from agent.logs import Throttled

log = logging.getLogger(__name__)

FILE_NAME: Final = "dimensions.json"
MISS_REFRESH_S: Final = 10.0  # at most one refresh a miss triggers, this often
RETRY_S: Final = 30.0  # a failed refresh is tried again this soon (or at the refresh period)

Fetch = Callable[[], Awaitable[list[dict[str, Any]]]]


class CatalogUnavailable(Exception):
    """`GET /dimensions` did not give a catalog (the reason says why)."""


@dataclass(frozen=True, slots=True)
class Dimension:
    id: str
    aggregation: str  # Paigo's aggregationMethod (default max)
    payment: str  # Paigo's paymentSchedule (default arrear)

    @property
    def invoiceable(self) -> bool:
        """Whether Paigo takes `invoice=true` for it: upfront, with last aggregation."""
        return self.payment == "upfront" and self.aggregation == "last"

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Dimension:
        return cls(
            str(entry["dimensionId"]),
            str(entry.get("aggregationMethod") or "max"),
            str(entry.get("paymentSchedule") or "arrear"),
        )


class Catalog:
    def __init__(
        self,
        directory: Path,
        refresh_s: float,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = directory / FILE_NAME
        self._refresh_s = refresh_s
        self._fetch = fetch
        self._clock = clock
        self._dimensions: dict[str, Dimension] = {}
        self._fetched_at = 0.0
        self._miss_refreshed_at = -MISS_REFRESH_S
        self._lock = asyncio.Lock()
        self.last_error = ""
        self._failed = Throttled(log, "could not fetch the dimension catalog")

    # --- state ----------------------------------------------------------------------------

    @property
    def age_s(self) -> float | None:
        return self._clock() - self._fetched_at if self._fetched_at else None

    @property
    def fresh(self) -> bool:
        age = self.age_s
        return bool(self._dimensions) and age is not None and age <= 2 * self._refresh_s

    @property
    def last_dimensions(self) -> frozenset[str]:
        """The dimensions with `last` aggregation: delivered in order per customer."""
        return frozenset(d.id for d in self._dimensions.values() if d.aggregation == "last")

    def aggregation(self, dimension_id: str) -> str | None:
        """The dimension's aggregationMethod; None when the catalog does not know it."""
        dimension = self._dimensions.get(dimension_id)
        return dimension.aggregation if dimension is not None else None

    def status(self) -> dict[str, object]:
        age = self.age_s
        return {
            "fresh": self.fresh,
            "age_s": round(age, 1) if age is not None else None,
            "dimensions": {d.id: d.aggregation for d in self._dimensions.values()},
            "last_error": self.last_error,
        }

    # --- keeping it -----------------------------------------------------------------------

    def load(self) -> None:
        """The catalog the last run kept, if any (an unreadable file is ignored)."""
        try:
            kept = orjson.loads(self._path.read_bytes())
            self._use(kept["data"], float(kept["fetched_at"]))
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring %s: %s", self._path, exc)

    async def run(self) -> None:
        """Refresh now and every refresh period (sooner after a failure), until cancelled."""
        while True:
            ok = await self.refresh()
            await asyncio.sleep(self._refresh_s if ok else min(RETRY_S, self._refresh_s))

    async def refresh(self) -> bool:
        """Fetch the catalog and keep it; False (and the old catalog kept) on failure."""
        async with self._lock:
            try:
                data = await self._fetch()
                fetched_at = self._clock()
                self._use(data, fetched_at)
            except (CatalogUnavailable, KeyError, TypeError, ValueError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                self._failed.warning("%s", self.last_error)
                return False
            self.last_error = ""
            body = orjson.dumps({"fetched_at": fetched_at, "data": data})
            try:
                await asyncio.to_thread(write_atomically, self._path, body)
            except OSError as exc:  # kept in memory; the next start fetches again
                log.warning("could not keep the dimension catalog in %s: %s", self._path, exc)
            return True

    def _use(self, data: list[dict[str, Any]], fetched_at: float) -> None:
        dimensions = [Dimension.of(entry) for entry in data]
        self._dimensions = {d.id: d for d in dimensions}
        self._fetched_at = fetched_at

    # --- asking it ------------------------------------------------------------------------

    async def problems(self, dimension_ids: list[str], invoice: bool) -> list[Problem]:
        """What a fresh catalog says against records of these dimensions (in request order)."""
        if not self.fresh:
            return []
        distinct = set(dimension_ids)  # a request holds few: each is judged once
        if not distinct <= self._dimensions.keys():
            await self._refresh_for_a_miss()
        why = {d: reason for d in distinct if (reason := self._problem(d, invoice)) is not None}
        if not why:
            return []
        return [
            Problem(index, "dimensionId", why[dimension_id])
            for index, dimension_id in enumerate(dimension_ids)
            if dimension_id in why
        ]

    async def _refresh_for_a_miss(self) -> None:
        if self._clock() - self._miss_refreshed_at < MISS_REFRESH_S:
            return
        self._miss_refreshed_at = self._clock()
        with contextlib.suppress(Exception):  # refresh() logs; a miss is answered anyway
            await self.refresh()

    def _problem(self, dimension_id: str, invoice: bool) -> str | None:
        if not self.fresh:
            return None  # the refresh after a miss may have found an empty catalog
        dimension = self._dimensions.get(dimension_id)
        if dimension is None:
            near = difflib.get_close_matches(dimension_id, list(self._dimensions), n=3)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
            return (
                f"Paigo has no dimension {dimension_id[:80]!r}{hint} (Paigo would store the "
                "record and never bill it; the catalog was read "
                f"{self.age_s or 0:.0f} s ago)"
            )
        if invoice and not dimension.invoiceable:
            return (
                f"invoice=true is refused for {dimension_id[:80]!r}: Paigo invoices only "
                f"upfront dimensions with last aggregation, and it is {dimension.payment} with "
                f"{dimension.aggregation}"
            )
        return None
