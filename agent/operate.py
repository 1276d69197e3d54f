"""Asking the running agent, for operators: `usage-agent health`, `status` and `send`.

Each finds the agent from the configuration (its unix socket when that exists, else its
TCP listener, with the ingest token when one is set) and talks to it with `agent.client`.
Exit codes, for scripts and exec probes:

| command  | 0                         | 1                             | 2                      |
|----------|---------------------------|-------------------------------|------------------------|
| `health` | `/healthz` (`--ready`:    | it answered otherwise         | no answer              |
|          | `/readyz`) answered 200   |                               |                        |
| `status` | the agent is ready        | it is not (reasons printed)   | no answer              |
| `send`   | the records were stored   | the agent refused them (4xx)  | no answer, or 503/507  |
|          |                           |                               | past the deadline      |
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final, TextIO

from agent.client import AgentUnavailable, UsageClient, UsageRejected
from agent.config import Config, parse_listen

OK: Final = 0
NOT_OK: Final = 1
UNREACHABLE: Final = 2


def local_client(config: Config, deadline_s: float = 30.0) -> UsageClient:
    """A client for the agent that `config` describes, on this host."""
    ingest = config.ingest
    socket_path = ingest.unix_socket if ingest.unix_socket else None
    if socket_path and not Path(socket_path).exists():
        socket_path = None
    host, port = parse_listen(ingest.listen) if ingest.listen else ("127.0.0.1", 7411)
    if host in ("0.0.0.0", "::"):  # listening everywhere: loopback is one of them
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    url_host = f"[{host}]" if ":" in host else host
    return UsageClient(
        f"http://{url_host}:{port}",
        unix_socket=socket_path,
        token=ingest.token or None,
        timeout_s=5.0,
        deadline_s=deadline_s,
    )


def health(config: Config, ready: bool, out: TextIO = sys.stdout) -> int:
    try:
        answer = local_client(config).get("/readyz" if ready else "/healthz")
    except AgentUnavailable as exc:
        print(f"usage-agent: {exc}", file=sys.stderr)
        return UNREACHABLE
    print(json.dumps(answer.body), file=out)
    return OK if answer.status == 200 else NOT_OK


def status(config: Config, as_json: bool, out: TextIO = sys.stdout) -> int:
    try:
        answer = local_client(config).get("/status")
    except AgentUnavailable as exc:
        print(f"usage-agent: {exc}", file=sys.stderr)
        return UNREACHABLE
    if answer.status != 200 or not isinstance(answer.body, dict):
        print(f"usage-agent: /status answered {answer.status}: {answer.body}", file=sys.stderr)
        return NOT_OK
    body = answer.body
    print(json.dumps(body, indent=2) if as_json else "\n".join(status_lines(body)), file=out)
    return OK if body.get("ready") else NOT_OK


def status_lines(body: dict[str, Any]) -> list[str]:
    """`/status` as a readable table."""
    spool, delivery = body.get("spool") or {}, body.get("delivery") or {}
    catalog, verify = body.get("catalog"), body.get("verify")
    rows = [
        ("version", body.get("version")),
        ("uptime", f"{body.get('uptime_s', 0):.0f} s"),
        ("ready", "yes" if body.get("ready") else "NO: " + "; ".join(body["not_ready_reasons"])),
        ("backlog", f"{spool.get('backlog_records', 0):,} records"),
        ("oldest unsent", _age(spool.get("oldest_unsent_age_s"))),
        ("disk", f"{_mib(spool.get('bytes'))} of {_mib(spool.get('max_bytes'))}"),
        ("free space kept", _mib(spool.get("min_free_bytes"))),
        ("lost to damage", f"{spool.get('lost_records', 0)} records"),
    ]
    if delivery:
        state = f"degraded: {delivery['reason']}" if delivery.get("degraded") else "working"
        if delivery.get("paused_for_s"):
            state += f", paused {delivery['paused_for_s']:.1f} s (Retry-After)"
        parked = ", ".join(
            f"{p['customerId']}/{p['dimensionId']}" for p in delivery["parked_pairs"]
        )
        rows += [
            ("delivery", f"{delivery.get('mode')}, {state}"),
            (
                "in flight",
                f"{delivery.get('in_flight')} of {int(delivery.get('concurrency_limit') or 0)}",
            ),
            ("delivered", f"{delivery.get('delivered', 0):,}"),
            ("dead letters", f"{delivery.get('dead_lettered', 0):,}"),
            ("parked pairs", (parked or "none") + _given_back(delivery)),
        ]
    else:
        rows.append(("delivery", "off (upstream.enabled = false)"))
    if catalog is not None:
        fresh = "fresh" if catalog.get("fresh") else "stale"
        rows.append(
            ("catalog", f"{len(catalog.get('dimensions') or {})} dimensions, {fresh}, "
             f"read {_age(catalog.get('age_s'))} ago"),
        )  # fmt: skip
    if verify is not None:
        rows.append(
            ("verification", f"{verify.get('mode')}: {verify.get('unverified', 0):,} waiting "
             f"(oldest {_age(verify.get('oldest_unverified_age_s'))}), "
             f"{verify.get('repaired', 0)} repaired, {verify.get('doubles_detected', 0)} doubled"),
        )  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]


def send(
    config: Config,
    source: TextIO,
    *,
    invoice: bool,
    idempotency_key: str | None,
    out: TextIO = sys.stdout,
) -> int:
    """Post the records in `source` (a JSON object, an array, or NDJSON)."""
    try:
        records = parse_records(source.read())
    except ValueError as exc:
        print(f"usage-agent: not JSON or NDJSON: {exc}", file=sys.stderr)
        return NOT_OK
    try:
        ids = local_client(config).post(records, idempotency_key=idempotency_key, invoice=invoice)
    except UsageRejected as exc:
        print(f"usage-agent: refused ({exc.status}): {exc}", file=sys.stderr)
        for problem in exc.errors:
            print(f"  record {problem.get('index')}, {problem.get('field')}: "
                  f"{problem.get('message')}", file=sys.stderr)  # fmt: skip
        return NOT_OK
    except AgentUnavailable as exc:
        print(f"usage-agent: {exc}", file=sys.stderr)
        return UNREACHABLE
    print(json.dumps({"accepted": len(ids), "ids": ids}), file=out)
    return OK


def parse_records(text: str) -> list[dict[str, Any]]:
    """A JSON object, a JSON array, or one JSON object a line."""
    try:
        value = json.loads(text)
    except ValueError:
        value = [json.loads(line) for line in text.splitlines() if line.strip()]
    return value if isinstance(value, list) else [value]


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def _given_back(delivery: dict[str, Any]) -> str:
    """What parked pairs gave back to the spool, when they did (read again when back)."""
    given = delivery.get("records_given_back") or 0
    return f" ({given:,} records given back to the spool since start)" if given else ""
