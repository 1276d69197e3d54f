"""The Kubernetes examples and the Dockerfile: valid for Kubernetes 1.29 and the newest
version kubernetes-validate knows (--strict: no unknown field), a native sidecar, exec
probes, least privilege, and an image built from pinned, hashed dependencies."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import latest_version

ROOT = Path(__file__).parents[1]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
WORKLOADS = [m for m in MANIFESTS if "secret" not in m.name]


@pytest.mark.parametrize("version", ["1.29.0", latest_version()])
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_the_manifests_validate_strictly(manifest: Path, version: str):
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def pod_spec(manifest: Path) -> dict[str, Any]:
    document = yaml.safe_load(manifest.read_text())
    spec: dict[str, Any] = document["spec"]["template"]["spec"]
    return spec


def probes(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in container
    ]


@pytest.mark.parametrize("manifest", WORKLOADS, ids=lambda p: p.name)
def test_the_agent_is_a_native_sidecar_probed_by_exec_never_over_http(manifest: Path):
    spec = pod_spec(manifest)
    assert all(c["name"] != "usage-agent" for c in spec["containers"]), "not a native sidecar"
    [agent] = [c for c in spec["initContainers"] if c["name"] == "usage-agent"]
    assert agent["restartPolicy"] == "Always"
    assert agent["startupProbe"]["exec"]["command"] == ["usage-agent", "health"]
    for container in spec["initContainers"] + spec["containers"]:
        for probe in probes(container):
            assert "httpGet" not in probe and "host" not in str(probe), probe
    assert spec["terminationGracePeriodSeconds"] >= 30  # the drain's shutdown_grace_s and more


@pytest.mark.parametrize("manifest", WORKLOADS, ids=lambda p: p.name)
def test_the_agent_runs_with_least_privilege_and_bounded_resources(manifest: Path):
    spec = pod_spec(manifest)
    [agent] = [c for c in spec["initContainers"] if c["name"] == "usage-agent"]
    context = agent["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsGroup"] == 10001
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert {"cpu", "memory"} <= set(agent["resources"]["requests"])
    assert "memory" in agent["resources"]["limits"]
    env = {e["name"]: e for e in agent["env"]}
    assert "secretKeyRef" in env["PAIGO_CLIENT_SECRET"]["valueFrom"]
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    assert {"/var/lib/usage-agent", "/run/usage-agent"} <= mounts


def test_the_image_is_pinned_labelled_probed_and_built_from_the_lock():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"python:[\w.-]+@sha256:[0-9a-f]{64}", dockerfile)
    assert not re.search(r"^EXPOSE", dockerfile, re.MULTILINE)
    assert "HEALTHCHECK" in dockerfile and '["usage-agent", "health"]' in dockerfile
    for label in ("title", "version", "source", "description"):
        assert f"org.opencontainers.image.{label}=" in dockerfile
    assert "--require-hashes" in dockerfile and "requirements.lock" in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)


def test_the_lock_pins_every_runtime_dependency_with_hashes():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = (ROOT / "deploy" / "requirements.lock").read_text()
    pinned = {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\", lock, re.MULTILINE)
    }
    for requirement in pyproject["project"]["dependencies"]:
        if "python_version < '3.11'" in requirement:
            continue
        name = re.split(r"[<>=;\[ ]", requirement)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is not in deploy/requirements.lock (make lock)"
    blocks = re.split(r"\n(?=\S)", lock.split("\n", 3)[3])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)
