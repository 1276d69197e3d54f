"""The `usage-agent` command: sub-commands mapped onto the parts, no logic of its own.

usage-agent run                       serve until SIGTERM/SIGINT
usage-agent check-config [--json]     the configuration in force, and where each value came from
usage-agent health [--ready]          ask the running agent (exit 0, 1, 2: agent.operate)
usage-agent status [--json]           what the running agent is doing
usage-agent send [FILE|-]             post records to the running agent
usage-agent spool inspect [--dir DIR] what a spool directory holds (read-only)
usage-agent deadletter list|show|replay|purge   (also `dlq`): agent.maintenance
usage-agent reconcile --since --until compare what was delivered with what Paigo holds
usage-agent fake-paigo                the local Paigo stand-in
usage-agent demo [--short]            the stand-in, an agent and apps, through an outage and a kill

Every sub-command takes `--config PATH` and `--set section.key=value` (agent.config_sources
says where the configuration comes from, and in which order).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from pathlib import Path
from typing import Final

import orjson

from agent import __version__, config, config_sources, operate
from agent.errors import AgentError

# The other parts (the service, aiohttp, the stand-in) are imported by the sub-commands that
# use them: `health` is a container's exec probe, run every few seconds, and starts in a
# fraction of the time without them.

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _loaded(args: argparse.Namespace) -> config_sources.Loaded:
    flags = [config_sources.parse_flag(text) for text in args.set or ()]
    for key, name in (("log.level", "log_level"), ("log.format", "log_format")):
        if getattr(args, name, None):
            flags.append((key, getattr(args, name)))
    return config_sources.load(args.config, flags=flags)


def _load(args: argparse.Namespace) -> config.Config:
    return _loaded(args).config


GC_THRESHOLDS: Final = (50_000, 20, 100)  # Python's default: (700, 10, 10)


def tune_collector() -> None:
    """The daemon holds hundreds of thousands of long-lived objects (the records on their
    way, open rollups, remembered keys) while it makes and drops as many a second. With
    Python's default thresholds the collector keeps walking the long-lived ones: 30 to 40 %
    of the agent's CPU per record in array delivery and rollups (bench/drain.py,
    bench/rollup.py). Collecting the young generation every 50,000 allocations instead of
    700 keeps reference cycles collected, at a few MB of garbage at most."""
    gc.set_threshold(*GC_THRESHOLDS)


def cmd_run(args: argparse.Namespace) -> int:
    from agent import logs
    from agent.service import Service, StartFailed

    cfg = _load(args)
    logs.configure(cfg.log.level, cfg.log.format)
    tune_collector()
    try:
        asyncio.run(Service(cfg).run(reread=lambda: _load(args)))
    except StartFailed as exc:
        print(f"usage-agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = _loaded(args)
    if args.json:
        shown = {
            "source": loaded.config.source,
            "values": {k: v for k, (v, _) in config_sources.effective(loaded).items()},
            "origins": {k: o for k, (_, o) in config_sources.effective(loaded).items()},
            "ignored_environment": list(loaded.ignored),
        }
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(config_sources.describe(loaded)))
    return 0


def cmd_fake_paigo(args: argparse.Namespace) -> int:
    from agent import logs
    from agent.testing.fake_paigo import FakePaigo

    logs.configure("INFO", "auto")
    tune_collector()  # it holds every point and write: as many long-lived objects as the agent

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
    import aiohttp

    from agent.delivery import reconcile
    from agent.delivery.auth import TokenError
    from agent.delivery.uplink import LookupFailed

    cfg = _load(args)
    try:
        report = asyncio.run(reconcile.reconcile(cfg, args.since, args.until))
    except (aiohttp.ClientError, TokenError, LookupFailed, ValueError) as exc:
        print(f"usage-agent: reconcile could not finish: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(report.lines()))
    return 0 if report.clean else EXIT_FAILED


def cmd_deadletter(args: argparse.Namespace) -> int:
    from agent import maintenance

    cfg = _load(args)
    if args.action == "purge":
        return maintenance.letters_purge(cfg, args.yes)
    if args.action == "show":
        return maintenance.letters_show(cfg, args.id)
    if args.action == "replay":
        if not args.all and not args.ids:
            print("usage-agent: name the letters to replay, or --all", file=sys.stderr)
            return EXIT_CONFIG
        return maintenance.letters_replay(cfg, [] if args.all else args.ids)
    return maintenance.letters_list(cfg)


def cmd_spool(args: argparse.Namespace) -> int:
    from agent import maintenance

    directory = Path(args.dir) if args.dir else Path(_load(args).spool.dir)
    return maintenance.spool_inspect(directory, args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent import demo

    return demo.main(args.short)


def cmd_health(args: argparse.Namespace) -> int:
    return operate.health(_load(args), args.ready)


def cmd_status(args: argparse.Namespace) -> int:
    return operate.status(_load(args), args.json)


def cmd_send(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.file in (None, "-"):
        return operate.send(cfg, sys.stdin, invoice=args.invoice, idempotency_key=args.key)
    with open(args.file, encoding="utf-8") as source:
        return operate.send(cfg, source, invoice=args.invoice, idempotency_key=args.key)


def _common(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--config", default=None, help=f"TOML file (default: $USAGE_AGENT_CONFIG, "
                     f"else {config_sources.DEFAULT_PATH} if it exists)")  # fmt: skip
    sub.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="override one key (over the file and the environment)")  # fmt: skip


def _deadletter_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = commands.add_parser(
        "deadletter", aliases=["dlq"], help="the records the upstream refused for good"
    )
    actions = sub.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "every dead letter, one JSON object a line"),
        ("show", "one dead letter"),
        ("replay", "put letters back on the spool (the agent stopped)"),
        ("purge", "remove every letter, keeping a backup"),
    ):
        action = actions.add_parser(name, help=text)
        _common(action)
        action.set_defaults(handler=cmd_deadletter)
        if name == "show":
            action.add_argument("id")
        if name == "replay":
            action.add_argument("ids", nargs="*", metavar="ID")
            action.add_argument("--all", action="store_true", help="every letter")
        if name == "purge":
            action.add_argument("--yes", action="store_true", help="do not ask")


def _other_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo_parser = commands.add_parser(
        "demo", help="the stand-in, an agent, apps, an outage, a kill"
    )
    demo_parser.add_argument("--short", action="store_true", help="a few seconds, fewer records")
    demo_parser.set_defaults(handler=cmd_demo)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="usage-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"usage-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("run", cmd_run, "serve until SIGTERM or SIGINT"),
        ("check-config", cmd_check_config, "the configuration in force and where it came from"),
        ("reconcile", cmd_reconcile, "compare what was delivered with what Paigo holds"),
        ("health", cmd_health, "exit 0 when the running agent is alive (--ready: ready)"),
        ("status", cmd_status, "what the running agent is doing (exit 1: not ready)"),
        ("send", cmd_send, "post records (JSON object, array or NDJSON) to the running agent"),
    ):
        sub = commands.add_parser(name, help=text)
        _common(sub)
        sub.set_defaults(handler=handler)
        if name == "run":
            sub.add_argument("--log-level", choices=config.LOG_LEVELS, help="log.level")
            sub.add_argument("--log-format", choices=config.LOG_FORMATS, help="log.format")
        if name == "check-config":
            sub.add_argument("--json", action="store_true", help="values and origins as JSON")
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
    _deadletter_parser(commands)
    spool = commands.add_parser("spool", help="a spool directory, read-only")
    spool_actions = spool.add_subparsers(dest="action", required=True)
    inspect = spool_actions.add_parser("inspect", help="segments, records, cursor, damage")
    _common(inspect)
    inspect.add_argument("--dir", help="the spool directory (default: spool.dir)")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=cmd_spool)
    _other_parsers(commands)
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except config.ConfigError as exc:
        print(f"usage-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as exc:
        print(f"usage-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `usage-agent ... | head`: the reader left; not an error to show
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
