"""The service: builds every part from one Config, runs the listeners, owns shutdown.

Start-up order: spool (lock, recover) -> idempotency keys -> HTTP app -> listeners ->
systemd READY=1. Shutdown order, in `stop`, is the reverse and is written only here:

1. mark shutting down: new `POST /usage` get 503 with Retry-After, `/readyz` says so;
2. close the listeners and let requests under way finish;
3. stop the sender: no new sends; sends under way may finish until `shutdown_grace_s`
   after the stop began, the rest are abandoned (unacknowledged, so sent again later);
4. close the HTTP client, stop the idempotency store, then the spool (commit what is
   pending, persist the cursor, release the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
from prometheus_client import CollectorRegistry

from agent import __version__
from agent.catalog import Catalog, CatalogUnavailable
from agent.config import Config, IngestConfig, parse_listen, socket_mode, verify_mode
from agent.delivery import deadletter
from agent.delivery.auth import TokenError, TokenManager
from agent.delivery.deadletter import DeadLetterFile
from agent.delivery.exits import Exits
from agent.delivery.ledger import Ledger
from agent.delivery.rollup import Rollups
from agent.delivery.sender import Sender
from agent.delivery.uplink import LookupFailed, Uplink, refreshing
from agent.delivery.verify import Verifier
from agent.errors import AgentError
from agent.http_server import HttpServer, Limits
from agent.idempotency import IdempotencyStore
from agent.ingest import IngestState, oldest_unsent_age, refused_by_http, routes
from agent.ingest_first import IngestFirst
from agent.metrics import Metrics
from agent.records import Rules
from agent.spool import Spool
from agent.spool.space import DRAIN_RESERVE
from agent.systemd import Notifier, listen_sockets

log = logging.getLogger(__name__)

RECOVERY_BUDGET_S = 120.0  # what start-up may take before systemd gives up on it
STOP_MARGIN_S = 5.0  # beyond shutdown_grace_s: closing the spool, persisting the cursor


def bind_unix_socket(ingest: IngestConfig) -> socket.socket:
    """A listening unix socket at ingest.unix_socket with the configured mode. A stale
    socket file from a crashed run is removed; a live one, or any other file, is refused."""
    path = Path(ingest.unix_socket)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise AgentError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale socket %s", path)
            path.unlink(missing_ok=True)
        else:
            raise AgentError(f"{path} is served by another process; is an agent running?")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which the socket is more open than asked
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, socket_mode(ingest))
    return sock


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def ingest_rules(config: Config) -> Rules:
    """The record checks this configuration asks for."""
    return Rules(
        reserved_key=config.upstream.id_key or None,
        max_metadata_bytes=config.ingest.max_metadata_bytes,
        drop_unknown=config.ingest.unknown_fields == "drop",
    )


class StartFailed(AgentError):
    """The agent could not start (the reason names what and where); nothing was served."""


class Service:
    """Every part, built from one Config; `start` brings them up, `stop` takes them down
    in the order this module's docstring gives (also after a failed start)."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.metrics = Metrics(registry or CollectorRegistry())
        self.spool = Spool(config.spool, observer=self.metrics, drain_reserve=DRAIN_RESERVE)
        self.keys = IdempotencyStore(config.spool, config.ingest)
        self.addresses: list[str] = []
        self.state: IngestState | None = None
        self.sender: Sender | None = None
        self._stack = contextlib.AsyncExitStack()
        self._deadline = 0.0
        self.systemd = Notifier()
        self.tokens: TokenManager | None = None
        self.first = IngestFirst()  # the apps' requests before delivery's bulk work

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        log.info("usage-agent ready on %s; spool %s", ", ".join(self.addresses), self.spool.dir)
        self.systemd.ready(self.status_line())
        keep_alive = asyncio.create_task(self.systemd.keep_alive(self.status_line), name="systemd")
        self._stack.push_async_callback(_cancel, keep_alive)

    def status_line(self) -> str:
        """One line for `systemctl status`: the backlog and the delivery state."""
        age = oldest_unsent_age(self.spool)
        line = f"backlog {self.spool.backlog} records"
        if age is not None:
            line += f", oldest {age:.0f} s"
        if self.sender is not None:
            degraded = self.sender.status().degraded
            line += f"; delivery degraded: {degraded}" if degraded else "; delivery working"
        return line

    async def _start(self) -> None:
        token = self.config.ingest.token.encode() or None
        stack = self._stack
        self.systemd.extend_timeout(RECOVERY_BUDGET_S)  # recovery reads the idempotency keys
        self.spool.open()
        stack.push_async_callback(self.spool.close)
        spool = self.config.spool
        log.info(
            "usage-agent %s starting: spool %s, max_bytes %d, min_free_bytes %d (kept free: "
            "%d), fsync %s",
            __version__,
            spool.dir,
            spool.max_bytes,
            spool.min_free_bytes,
            self.spool.space.reserve,
            spool.fsync,
        )
        await self.spool.start()
        if self.spool.backlog:
            log.info("recovered %d records pending delivery", self.spool.backlog)
        await self.keys.start()
        stack.push_async_callback(self.keys.stop)
        self.spool.space.count_also(lambda: self.keys.bytes_used)
        self.metrics.watch_spool(self.spool, lambda: oldest_unsent_age(self.spool))
        state = IngestState(self.config.ingest, self.spool, self.keys, self.metrics, token)
        state.rules = ingest_rules(self.config)
        self.state = state
        if self.config.upstream.enabled:
            await self._start_delivery(state)
        ingest = self.config.ingest
        limits = Limits(ingest.max_request_bytes, ingest.body_timeout_s, ingest.keepalive_timeout_s)
        server = HttpServer(routes(state), lambda error: refused_by_http(state, error), limits)
        server.first = self.first
        stack.push_async_callback(server.close, self.config.shutdown_grace_s)
        stack.callback(setattr, state, "shutting_down", True)  # runs first at stop
        if activated := listen_sockets():
            await self._serve_activated(server, activated)
            return
        if ingest.listen:
            host, port = parse_listen(ingest.listen)
            ports = await server.listen_tcp(host, port)
            self.addresses += [f"http://{host}:{p}" for p in ports]
        if ingest.unix_socket:
            sock = bind_unix_socket(ingest)
            stack.callback(Path(ingest.unix_socket).unlink, missing_ok=True)
            await server.listen_socket(sock)
            self.addresses.append(f"unix:{ingest.unix_socket}")

    async def _serve_activated(
        self, server: HttpServer, activated: list[tuple[str, socket.socket]]
    ) -> None:
        """Serve on the sockets systemd passed (socket activation) instead of binding
        ingest.listen and ingest.unix_socket: systemd owns them, and keeps them listening
        while the agent restarts."""
        for name, sock in activated:
            await server.listen_socket(sock)
            where = sock.getsockname()
            address = (
                f"unix:{where}"
                if sock.family == socket.AF_UNIX
                else f"http://{where[0]}:{where[1]}"
            )
            self.addresses.append(address)
            log.info("serving on %s from systemd (%s)", address, name)

    async def _start_delivery(self, state: IngestState) -> None:
        upstream = self.config.upstream
        user_agent = f"usage-agent/{__version__}"
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=upstream.concurrency + 2),
            headers={"User-Agent": user_agent},
        )
        self._stack.push_async_callback(session.close)
        uplink = Uplink(
            session,
            upstream.url,
            upstream.request_timeout_s,
            gzip_arrays=upstream.gzip,
            max_retry_after_s=upstream.max_retry_after_s,
            user_agent=user_agent,
        )
        self._stack.callback(uplink.close)
        tokens = TokenManager(upstream, session)
        self.tokens = tokens
        catalog = (
            await self._start_catalog(uplink, tokens) if upstream.dimensions == "auto" else None
        )
        state.catalog = catalog
        ledger = Ledger(self.config.spool, upstream.ledger_max_bytes, self.spool.space.reserve)
        await ledger.start()
        self._stack.push_async_callback(ledger.stop)
        self.spool.space.count_also(lambda: ledger.bytes_used)
        dead_letters = DeadLetterFile(deadletter.path_in(self.config.spool.dir))
        verifier = await self._start_verifier(uplink, tokens, dead_letters)
        exits = Exits(self.spool, ledger, dead_letters, upstream.id_key, verifier)
        rollup = self.config.rollup
        rollups = (
            Rollups(
                rollup,
                catalog.aggregation,
                self.spool.spool_id,
                upstream.id_key,
                catalog_read=lambda: catalog.age_s is not None,
            )
            if catalog is not None and (rollup.dimensions or rollup.auto)
            else None
        )
        if verifier is not None:
            verifier.undecided = exits.undecided.__contains__
        sender = Sender(
            self.spool,
            uplink,
            tokens,
            exits,
            ledger,
            upstream=upstream,
            retry=self.config.retry,
            catalog_order=(lambda: catalog.last_dimensions) if catalog else frozenset,
            rollups=rollups,
            first=self.first,
        )
        sender.on_reply = lambda reply, seconds: self.metrics.upstream_replied(
            reply.status, seconds
        )
        sender.gate.waiting_records = lambda: self.spool.backlog
        await sender.start()
        self._stack.push_async_callback(self._stop_sender, sender)
        self.metrics.watch_sender(sender.status)
        state.delivery_status = sender.status
        self.sender = sender
        if verifier is not None:
            gate = sender.gate
            verifier.blocked = lambda: gate.paused_for() > 0 or gate.circuit_open
            self.metrics.watch_verifier(verifier.snapshot)
            state.verify_status = verifier.snapshot

    async def _start_verifier(
        self, uplink: Uplink, tokens: TokenManager, dead_letters: DeadLetterFile
    ) -> Verifier | None:
        mode = verify_mode(self.config)
        if mode == "off" or not self.config.upstream.id_key:
            return None
        verifier = Verifier(
            self.config,
            uplink,
            tokens,
            dead_letters,
            mode=mode,
            reserve=self.spool.space.reserve,
            ack=self.spool.ack,
        )
        await verifier.start()
        self._stack.push_async_callback(verifier.stop)
        self.spool.space.count_also(lambda: verifier.bytes_used)
        return verifier

    async def _start_catalog(self, uplink: Uplink, tokens: TokenManager) -> Catalog:
        """Paigo's dimension catalog: the one kept on disk now, refreshed in the background
        (start-up never waits for Paigo)."""
        read_base = self.config.upstream.read_base

        async def fetch() -> list[dict[str, Any]]:
            try:
                return await refreshing(tokens, lambda t: uplink.read_dimensions(read_base, t))
            except (LookupFailed, TokenError) as exc:
                raise CatalogUnavailable(f"GET {read_base}/dimensions: {exc}") from None

        catalog = Catalog(self.spool.dir, self.config.upstream.dimensions_refresh_s, fetch)
        catalog.load()
        task = asyncio.create_task(catalog.run(), name="catalog")
        self._stack.push_async_callback(_cancel, task)
        return catalog

    async def _stop_sender(self, sender: Sender) -> None:
        await sender.stop(max(0.0, self._deadline - time.monotonic()))

    async def stop(self) -> None:
        self.systemd.stopping()
        self.systemd.extend_timeout(self.config.shutdown_grace_s + STOP_MARGIN_S)
        self._deadline = time.monotonic() + self.config.shutdown_grace_s
        await self._stack.aclose()
        log.info("usage-agent stopped; %d records kept in %s", self.spool.backlog, self.spool.dir)

    def reload(self, fresh: Config) -> None:
        """SIGHUP: take what can change without a restart from `fresh` (the configuration
        read again): the log level, the ingest token, the Paigo credentials. Any other
        change is logged as waiting for a restart."""
        logging.getLogger().setLevel(fresh.log.level.upper())
        if self.state is not None:
            self.state.token = fresh.ingest.token.encode() or None
        if self.tokens is not None:
            self.tokens.replace_credentials(fresh.upstream)
        waiting = changed_keys(self.config, fresh) - RELOADABLE
        self.config = dataclasses.replace(  # what took effect, so the next reload compares
            self.config,  # against what is in force
            log=dataclasses.replace(self.config.log, level=fresh.log.level),
            ingest=dataclasses.replace(
                self.config.ingest, token=fresh.ingest.token, token_file=fresh.ingest.token_file
            ),
            upstream=dataclasses.replace(
                self.config.upstream,
                client_id=fresh.upstream.client_id,
                client_secret=fresh.upstream.client_secret,
                client_secret_file=fresh.upstream.client_secret_file,
            ),
        )
        log.log(
            logging.WARNING if waiting else logging.INFO,
            "reloaded: log level %s, ingest token %s, credentials%s",
            fresh.log.level,
            "set" if fresh.ingest.token else "none",
            f"; needs a restart: {', '.join(sorted(waiting))}" if waiting else "",
        )

    async def run(self, reread: Callable[[], Config] | None = None) -> None:
        """Start, serve until SIGTERM or SIGINT, stop. SIGHUP calls `reread` and takes what
        it can of the result (`reload`); a configuration that no longer loads is logged and
        changes nothing."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup, reread)
        try:
            await self.start()
        except (OSError, AgentError) as exc:  # a port in use, a locked or unsafe spool ...
            self.systemd.failed(exc)
            raise StartFailed(str(exc)) from None
        try:
            await stopping.wait()
        finally:
            await self.stop()

    def _on_hangup(self, reread: Callable[[], Config] | None) -> None:
        if reread is None:
            log.info("SIGHUP: nothing to reload")
            return
        self.systemd.send("RELOADING=1")
        try:
            self.reload(reread())
        except AgentError as exc:
            log.error("SIGHUP: the configuration was not reloaded: %s", exc)
        finally:
            self.systemd.send("READY=1")


RELOADABLE: Final = frozenset(
    {"log.level", "ingest.token", "ingest.token_file", "upstream.client_id",
     "upstream.client_secret", "upstream.client_secret_file"}
)  # fmt: skip


def changed_keys(old: Config, new: Config) -> set[str]:
    """The dotted keys whose values differ between `old` and `new`."""
    changed = set()
    for section in dataclasses.fields(Config):
        before, after = getattr(old, section.name), getattr(new, section.name)
        if not dataclasses.is_dataclass(before):
            if before != after and section.name != "source":
                changed.add(section.name)
            continue
        for key in dataclasses.fields(before):
            if getattr(before, key.name) != getattr(after, key.name):
                changed.add(f"{section.name}.{key.name}")
    return changed
