"""The deployment files and the real tools that check them (kubectl, promtool, docker compose, node)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import deploy_sync
import pytest
import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = deploy_sync.RULES
RULE_TESTS = DEPLOY / "prometheus/tests/alerts_test.yml"
DASHBOARD = DEPLOY / "grafana/mytpe-relay.json"
OVERLAYS = ("dev", "prod")


def from_secrets(container: dict[str, Any]) -> dict[str, str]:
    """The settings a container reads from a Secret that change its stop bound: a dedupe URL, taken as Redis
    (what the chart's values and the manifests document there), whose drain and closes the bound counts."""
    named = {
        variable["name"] for variable in container.get("env", []) if "secretKeyRef" in variable.get("valueFrom", {})
    }
    return {"RELAY_DEDUPE_URL": "redis://placeholder:6379/0"} if "RELAY_DEDUPE_URL" in named else {}


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize` renders for an overlay."""
    done = run(require_tool("kubectl"), "kustomize", str(DEPLOY / "k8s/overlays" / overlay))
    assert done.returncode == 0, done.stderr
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


def find(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


@cache
def compose_command() -> tuple[str, ...]:
    """`docker compose`, or the standalone plugin scripts/install built when the machine has none."""
    docker = shutil.which("docker")
    if docker is not None and run(docker, "compose", "version").returncode == 0:
        return (docker, "compose")
    local = ROOT / ".cache/bin/docker-compose"
    if local.exists():
        return (str(local),)
    return (require_tool("docker-compose"),)


def rules() -> list[dict[str, Any]]:
    """Every alerting rule of deploy/prometheus/alerts.yml."""
    return [rule for group in deploy_sync.rule_groups() for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the Grafana dashboard."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]


CHART = DEPLOY / "helm/mytpe-relay"
SCENARIOS = tuple(sorted(path.name.removesuffix("-values.yaml") for path in (CHART / "ci").glob("*-values.yaml")))


@cache
def helm_command() -> str:
    """The helm scripts/install built for its pin (.cache/bin/helm-<HELM_VERSION>), or a helm v4 on the PATH. Another
    major is refused: v3 words its schema refusals differently."""
    (pin,) = re.findall(r"^HELM_VERSION=(v\S+)$", (ROOT / "scripts/install").read_text(encoding="utf-8"), re.MULTILINE)
    local = ROOT / f".cache/bin/helm-{pin}"
    if local.exists():
        return str(local)
    helm = require_tool("helm")
    version = run(helm, "version", "--template", "{{.Version}}").stdout.strip()
    if not version.startswith("v4."):
        message = f"{helm} is helm {version or '(unknown)'}, not v4: run scripts/install to build {pin}"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return helm


def helm_template(*args: str) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart as the release `mytpe-relay`, test hooks included."""
    return run(helm_command(), "template", "mytpe-relay", str(CHART), "--namespace", "mytpe-relay", *args)


@cache
def render_chart(scenario: str | None, *sets: str) -> tuple[dict[str, Any], ...]:
    """The objects the chart renders for a ci/ scenario (None: the chart's defaults), with `--set` overrides."""
    args = [] if scenario is None else ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")]
    for item in sets:
        args += ["--set", item]
    done = helm_template(*args)
    assert done.returncode == 0, done.stderr
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)
