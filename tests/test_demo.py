"""`usage-agent demo --short`: the promise, end to end, as a real process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def demo_processes() -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "usage-agent-demo-" in text:
            found.append(text)
    return found


def test_the_short_demo_tallies_accepted_equal_to_delivered_and_leaves_nothing_running():
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--short"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the agent is killed with SIGKILL" in result.stdout
    tally = re.search(
        r"tally: accepted (\d+), delivered (\d+), lost (\d+), doubled (\d+)", result.stdout
    )
    assert tally is not None, result.stdout
    accepted, delivered, lost, doubled = map(int, tally.groups())
    assert (accepted, delivered, lost, doubled) == (450, 450, 0, 0)
    assert demo_processes() == []
