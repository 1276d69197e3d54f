"""The `usage-agent` command: sub-commands mapped onto the parts, no logic of its own.

usage-agent run [--config PATH]           serve until SIGTERM/SIGINT
usage-agent check-config [--config PATH]  load and check the configuration, print it
usage-agent health [--ready]              ask the running agent (exit 0, 1, 2: agent.operate)
usage-agent status [--json]               what the running agent is doing
usage-agent send [FILE|-]                 post records to the running agent
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson

from agent import __version__, config, operate
from agent.delivery import deadletter, reconcile
from agent.delivery.auth import TokenError
from agent.delivery.uplink import LookupFailed
from agent.errors import AgentError
from agent.service import Service, StartFailed
from agent.testing.fake_paigo import FakePaigo

DEFAULT_CONFIG = "/etc/usage-agent/agent.toml"
EXIT_CONFIG = 2
EXIT_FAILED = 1


def _load(path: str | None) -> config.Config:
    """The configuration at `path`, or the defaults; secrets from the environment either way."""
    if path:
        return config.load(path)
    return config.resolve_secrets(config.Config(), os.environ)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    logging.basicConfig(
        level=cfg.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(Service(cfg).run())
    except StartFailed as exc:
        print(f"usage-agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    shown = dataclasses.asdict(cfg)
    shown["upstream"]["client_secret"] = "(set)" if cfg.upstream.client_secret else "(not set)"
    shown["ingest"]["token"] = "(set)" if cfg.ingest.token else "(not set)"
    print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_fake_paigo(args: argparse.Namespace) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    dimensions = orjson.loads(Path(args.dimensions).read_bytes()) if args.dimensions else None

    async def serve() -> None:
        fake = FakePaigo(
            args.client_id,
            args.client_secret,
            accept_arrays=args.accept_arrays,
            write_delay_s=args.write_delay_s,
            dimensions=dimensions,
        )
        url = await fake.start(args.host, args.port)
        print(f"fake Paigo on {url}: token {fake.token_url}, usage {fake.usage_url}", flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        await fake.stop()

    asyncio.run(serve())
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    try:
        report = asyncio.run(reconcile.reconcile(cfg, args.since, args.until))
    except (aiohttp.ClientError, TokenError, LookupFailed, ValueError) as exc:
        print(f"usage-agent: reconcile could not finish: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(report.lines()))
    return 0 if report.clean else EXIT_FAILED


def cmd_deadletter(args: argparse.Namespace) -> int:
    path = deadletter.path_in(_load(args.config).spool.dir)
    if args.action == "purge":
        print(f"purged {deadletter.purge(path)} dead letters from {path}")
        return 0
    for letter in deadletter.read(path):
        print(orjson.dumps(letter).decode())
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    return operate.health(_load(args.config), args.ready)


def cmd_status(args: argparse.Namespace) -> int:
    return operate.status(_load(args.config), args.json)


def cmd_send(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if args.file in (None, "-"):
        return operate.send(cfg, sys.stdin, invoice=args.invoice, idempotency_key=args.key)
    with open(args.file, encoding="utf-8") as source:
        return operate.send(cfg, source, invoice=args.invoice, idempotency_key=args.key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="usage-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"usage-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("run", cmd_run, "serve until SIGTERM or SIGINT"),
        ("check-config", cmd_check_config, "load and check the configuration, print it"),
        ("deadletter", cmd_deadletter, "list or purge the records the upstream refused"),
        ("reconcile", cmd_reconcile, "compare what was delivered with what Paigo holds"),
        ("health", cmd_health, "exit 0 when the running agent is alive (--ready: ready)"),
        ("status", cmd_status, "what the running agent is doing (exit 1: not ready)"),
        ("send", cmd_send, "post records (JSON object, array or NDJSON) to the running agent"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", default=None, help=f"TOML file (e.g. {DEFAULT_CONFIG})")
        sub.set_defaults(handler=handler)
        if name == "deadletter":
            sub.add_argument("action", choices=["list", "purge"])
        if name == "health":
            sub.add_argument("--ready", action="store_true", help="ask /readyz, not /healthz")
        if name == "status":
            sub.add_argument("--json", action="store_true", help="the /status document")
        if name == "send":
            sub.add_argument("file", nargs="?", help="a file of records; - or none: stdin")
            sub.add_argument("--invoice", action="store_true", help="Paigo's invoice=true")
            sub.add_argument("--key", default=None, help="the Idempotency-Key (default: new)")
        if name == "reconcile":
            sub.add_argument("--since", required=True, help="RFC 3339, inclusive")
            sub.add_argument("--until", required=True, help="RFC 3339, exclusive")
    fake = commands.add_parser("fake-paigo", help="run the local Paigo stand-in")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=7480)
    fake.add_argument("--client-id", default="test-client")
    fake.add_argument("--client-secret", default="test-secret")
    fake.add_argument("--accept-arrays", action="store_true", help="take JSON arrays (not Paigo)")
    fake.add_argument(
        "--dimensions", help="JSON file: the list GET /dimensions answers (Paigo's fields)"
    )
    fake.add_argument(
        "--write-delay-s", type=float, default=0.0, help="a write is readable this long after 201"
    )
    fake.set_defaults(handler=cmd_fake_paigo)
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except config.ConfigError as exc:
        print(f"usage-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as exc:
        print(f"usage-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
