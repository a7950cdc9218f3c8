"""The deployment files and the real tools that check them (kubectl, promtool, docker compose, node)."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import deploy_sync
import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = deploy_sync.RULES
RULE_TESTS = DEPLOY / "prometheus/tests/alerts_test.yml"
DASHBOARD = DEPLOY / "grafana/mytpe-relay.json"
OVERLAYS = ("dev", "prod")


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
