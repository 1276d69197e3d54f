"""The agent as a real process: `python -m agent run --config FILE`, on loopback."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    return str(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")


class AgentProcess:
    def __init__(self, directory: Path, **sections: dict[str, Any]) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, dict[str, Any]] = {
            "spool": {"dir": str(directory / "spool"), "min_free_bytes": 0},
            "ingest": {
                "listen": f"127.0.0.1:{self.port}",
                "unix_socket": str(directory / "ingest.sock"),
            },
            "upstream": {"enabled": False},
        }
        for name, values in sections.items():
            config.setdefault(name, {}).update(values)
        self.config_path = directory / "agent.toml"
        write_config(self.config_path, config)
        self.log_path = directory / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(
        self,
        wait: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        with_config: bool = True,
    ) -> AgentProcess:
        """Run the agent on this configuration file, or (`with_config=False`) with no
        --config: then on `env` alone. `env` is added to this process's environment
        otherwise."""
        config = ["--config", str(self.config_path)] if with_config else []
        base = dict(os.environ) if with_config else {"PATH": os.environ["PATH"]}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", *config],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**base, **(env or {})},
                cwd=cwd,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.log()}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"agent not ready: {self.log()}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def post(self, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, data = self.request(
            "POST",
            "/usage",
            orjson.dumps(body),
            {"Content-Type": "application/json", **(headers or {})},
        )
        return status, orjson.loads(data) if data else None

    def get(self, path: str) -> tuple[int, Any]:
        status, data = self.request("GET", path)
        return status, orjson.loads(data) if data[:1] in (b"{", b"[") else data

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def usage_agent(
    agent: AgentProcess, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    """`python -m agent <args> --config <the agent's config>`, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(agent.config_path)],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
