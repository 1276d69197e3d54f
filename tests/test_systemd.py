"""systemd's side: the notify protocol on a real datagram socket, and socket activation
with real listening descriptors handed to a real agent process, the way systemd does."""

from __future__ import annotations

import http.client
import itertools
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from agent.systemd import Notifier, listen_sockets
from tests.conftest import record
from tests.integration.agent_process import AgentProcess, write_config


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket: every message, timed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def wait_for(self, prefix: str, timeout: float = 20) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.messages):
                if line.startswith(prefix):
                    return at
            time.sleep(0.01)
        raise AssertionError(f"no {prefix} in {self.messages}")

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(at, line) for at, line in self.messages if line.startswith(prefix)]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def notified_agent(tmp_path: Path, **env: str) -> tuple[AgentProcess, NotifySocket]:
    notify = NotifySocket(tmp_path / "notify.sock")
    agent = AgentProcess(tmp_path)
    agent.start(wait=False, env={"NOTIFY_SOCKET": str(notify.path), **env})
    return agent, notify


def test_ready_after_the_listeners_then_status_watchdog_cadence_and_stopping(tmp_path: Path):
    agent, notify = notified_agent(tmp_path, WATCHDOG_USEC="400000")  # a ping every 0.2 s
    try:
        notify.wait_for("READY=1")
        with socket.create_connection(("127.0.0.1", agent.port), timeout=1):
            pass  # listening by the time READY=1 was sent
        assert notify.lines("EXTEND_TIMEOUT_USEC")[0][0] < notify.lines("READY=1")[0][0]
        assert "backlog 0 records" in notify.lines("STATUS=")[0][1]
        time.sleep(2.0)
        pings = [at for at, _ in notify.lines("WATCHDOG=1")]
        assert 6 <= len(pings) <= 14, pings
        assert max(b - a for a, b in itertools.pairwise(pings)) < 0.4
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        stopping = notify.wait_for("STOPPING=1")
        assert any(at >= stopping for at, _ in notify.lines("EXTEND_TIMEOUT_USEC"))
    finally:
        agent.kill()
        notify.close()


def test_a_failed_start_sends_errno(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        notify = NotifySocket(tmp_path / "notify.sock")
        agent = AgentProcess(tmp_path, ingest={"listen": f"127.0.0.1:{taken.getsockname()[1]}"})
        agent.start(wait=False, env={"NOTIFY_SOCKET": str(notify.path)})
        try:
            assert agent.wait() == 2
            notify.wait_for("ERRNO=")
            assert "ERRNO=98" in [line for _, line in notify.messages], notify.messages
            assert notify.lines("READY=1") == []
        finally:
            notify.close()


def test_outside_systemd_nothing_is_sent_and_no_socket_is_taken():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_s == 0
    notifier.ready("x")  # a no-op, not an error
    assert listen_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "2"}) == []  # not for this pid
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000"}).watchdog_s == 1.0


ACTIVATE = (
    "import os, sys\n"
    "tcp, unix = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.dup2(tcp, 3); os.dup2(unix, 4)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2', "
    "LISTEN_FDNAMES='usage-agent-tcp:usage-agent-unix')\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'agent', *sys.argv[3:]])\n"
)


def activated(
    config: Path, tcp: socket.socket, unix: socket.socket, log: Path
) -> subprocess.Popen[bytes]:
    """The agent started the way systemd does it: the listening sockets at descriptors 3
    and 4, LISTEN_PID its own pid (set after the fork, before the exec)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                ACTIVATE,
                str(tcp.fileno()),
                str(unix.fileno()),
                "run",
                "--config",
                str(config),
            ],
            pass_fds=(tcp.fileno(), unix.fileno()),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def post(port: int, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/usage", body, {"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_socket_activation_keeps_connections_waiting_through_a_restart(tmp_path: Path):
    """With systemd's sockets, a post made while the agent is down waits in the kernel's
    backlog and gets its 202 once the agent is back; the agent binds nothing itself."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(64)
    port = tcp.getsockname()[1]
    unix_path = tmp_path / "activated.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(unix_path))
    unix.listen(64)
    config = tmp_path / "agent.toml"
    write_config(
        config,
        {
            "spool": {"dir": str(tmp_path / "spool"), "min_free_bytes": 0},
            "ingest": {"listen": "127.0.0.1:1", "unix_socket": str(tmp_path / "unused.sock")},
            "upstream": {"enabled": False},
        },
    )
    log = tmp_path / "agent.log"
    agent = activated(config, tcp, unix, log)
    try:
        deadline = time.monotonic() + 20
        while "ready on" not in log.read_text():
            assert time.monotonic() < deadline and agent.poll() is None, log.read_text()
            time.sleep(0.02)
        assert post(port, orjson.dumps(record(1))) == 202
        assert not (tmp_path / "unused.sock").exists()  # systemd's sockets, not its own
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0
        waiting: list[int] = []
        poster = threading.Thread(
            target=lambda: waiting.append(post(port, orjson.dumps(record(2))))
        )
        poster.start()
        time.sleep(0.5)
        assert poster.is_alive() and not waiting  # connected, waiting in the backlog
        agent = activated(config, tcp, unix, log)
        poster.join(30)
        assert waiting == [202]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as over_unix:
            over_unix.connect(str(unix_path))
            over_unix.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert over_unix.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        tcp.close()
        unix.close()


@pytest.fixture(autouse=True)
def _no_inherited_notify(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test run itself may be under systemd: its variables must not leak in."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS"):
        monkeypatch.delenv(name, raising=False)
