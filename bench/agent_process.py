"""The agent as the benchmarks run it: a process of its own, with a config written for the
run, listening on a free loopback port, stopped and waited for at the end.

Its CPU is counted from readiness (`Agent.cpu_s`): importing and starting are not the
workload, and over a short run they would add several microseconds a record.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

BIG_SPOOL_BYTES = 64 * 1024**3  # the benchmarks' spools never fill


class Agent:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._cpu_at_start = cpu_seconds(process.pid)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the agent has used since it was ready."""
        return cpu_seconds(self.process.pid) - self._cpu_at_start

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = call(f"{self.url}/status")
        return answer


@contextlib.contextmanager
def running_agent(
    root: Path,
    name: str,
    sections: str,
    *,
    spool_dir: Path | None = None,
    spool: str = "",
    ingest: str = "",
) -> Iterator[Agent]:
    """An agent run with `<root>/<name>.toml`: its spool in `spool_dir` (default
    `<root>/spool-<name>`), never full, plus the `spool` lines; ingest on a free loopback
    port and no unix socket, plus the `ingest` lines; then `sections`, TOML ([upstream],
    [log], ...)."""
    port = free_port()
    config = root / f"{name}.toml"
    config.write_text(
        f'[spool]\ndir = "{spool_dir or root / ("spool-" + name)}"\nmin_free_bytes = 0\n'
        f"max_bytes = {BIG_SPOOL_BYTES}\n{spool}"
        f'[ingest]\nlisten = "127.0.0.1:{port}"\nunix_socket = ""\n{ingest}'
        f"{sections}"
    )
    process = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)])
    try:
        wait_port(port)
        yield Agent(process, port)
    finally:
        process.terminate()
        process.wait(timeout=60)


def stand_in_upstream(fake_url: str) -> str:
    """The [upstream] lines that deliver to the Paigo stand-in at `fake_url`."""
    return (
        f'[upstream]\nurl = "{fake_url}/usage"\ntoken_url = "{fake_url}/oauth/token"\n'
        'client_id = "test-client"\nclient_secret = "test-secret"\n'
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def call(url: str, body: Mapping[str, object] | None = None) -> Any:
    """One JSON request (POST when `body` is given); the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())
