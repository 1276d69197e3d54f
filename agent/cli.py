"""The `usage-agent` command: sub-commands mapped onto the parts, no logic of its own.

usage-agent run [--config PATH]           serve until SIGTERM/SIGINT
usage-agent check-config [--config PATH]  load and check the configuration, print it
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

import orjson

from agent import __version__, config
from agent.errors import AgentError
from agent.service import Service

DEFAULT_CONFIG = "/etc/usage-agent/agent.toml"
EXIT_CONFIG = 2
EXIT_FAILED = 1


def _load(path: str | None) -> config.Config:
    return config.load(path) if path else config.Config()


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    logging.basicConfig(
        level=cfg.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(Service(cfg).run())
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(orjson.dumps(dataclasses.asdict(cfg), option=orjson.OPT_INDENT_2).decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="usage-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"usage-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("run", cmd_run, "serve until SIGTERM or SIGINT"),
        ("check-config", cmd_check_config, "load and check the configuration, print it"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", default=None, help=f"TOML file (e.g. {DEFAULT_CONFIG})")
        sub.set_defaults(handler=handler)
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
