"""The shipped systemd units, checked by systemd's own tools: `systemd-analyze verify`, the
`systemd-analyze security` exposure score, and `systemd-sysusers` / `systemd-tmpfiles`
applied to a scratch root. (`make test` installs systemd's tools where it can.)"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import config_sources

ROOT = Path(__file__).parents[1]
UNITS = ROOT / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)"
)


def installed_copy(tmp_path: Path) -> Path:
    """The units as installed: ExecStart pointing at this checkout's usage-agent."""
    for unit in ("usage-agent.service", "usage-agent.socket"):
        text = (UNITS / unit).read_text()
        executable = Path(sys.executable).with_name("usage-agent")
        (tmp_path / unit).write_text(text.replace("/usr/local/bin/usage-agent", str(executable)))
    return tmp_path


@needs_analyze
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path):
    units = installed_copy(tmp_path)
    result = subprocess.run(
        [ANALYZE, "verify", str(units / "usage-agent.service"), str(units / "usage-agent.socket")],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage-agent" not in result.stderr, result.stderr


@needs_analyze
def test_the_security_exposure_score_is_at_most_2(tmp_path: Path):
    units = installed_copy(tmp_path)
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(units / "usage-agent.service")],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for usage-agent.service: ([0-9.]+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers / systemd-tmpfiles are not installed",
)
def test_sysusers_and_tmpfiles_make_the_user_and_the_private_files(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    for tool, snippet in (
        ("systemd-sysusers", "usage-agent.sysusers.conf"),
        ("systemd-tmpfiles", "usage-agent.tmpfiles.conf"),
    ):
        args = [tool, f"--root={tmp_path}", str(UNITS / snippet)]
        if tool == "systemd-tmpfiles":
            args.insert(1, "--create")
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    assert "usage-agent:x:" in (tmp_path / "etc" / "passwd").read_text()
    secret = tmp_path / "etc" / "usage-agent" / "paigo_client_secret"
    assert secret.stat().st_mode & 0o777 == 0o600


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def test_the_socket_unit_listens_where_the_systemd_configuration_says():
    cfg = config_sources.load(str(ROOT / "config" / "agent.systemd.toml"), {}).config
    lines = (UNITS / "usage-agent.socket").read_text().splitlines()
    listens = [line.split("=", 1)[1] for line in lines if line.startswith("ListenStream=")]
    assert sorted(listens) == sorted([cfg.ingest.unix_socket, cfg.ingest.listen])
    socket = unit("usage-agent.socket")["Socket"]
    assert socket["SocketMode"] == cfg.ingest.unix_socket_mode
    service = unit("usage-agent.service")["Service"]
    assert service["RestartPreventExitStatus"] == "2"
    assert service["WatchdogSec"] and service["ExecReload"].endswith("-HUP $MAINPID")
    assert service["RuntimeDirectoryPreserve"] == "yes"  # the socket outlives a restart
