"""Writes deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml (the source of truth), and the
Helm chart's copies: files/alerts.yml and files/mytpe-relay.json (Helm reads no file outside the chart), and the
values table of its README (scripts/chart_docs.py).

Run after editing the alert rules, the dashboard or the chart's values: `.venv/bin/python scripts/deploy_sync.py`.
tests/deploy checks that each copy equals its source, so a change made in one place only fails the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import chart_docs
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/alerts.yml"
TARGET = ROOT / "deploy/k8s/base/prometheusrule.yaml"
DASHBOARD = ROOT / "deploy/grafana/mytpe-relay.json"
CHART_COPIES = {RULES: chart_docs.CHART / "files/alerts.yml", DASHBOARD: chart_docs.CHART / "files/mytpe-relay.json"}
HEADER = "# Generated from deploy/prometheus/alerts.yml by scripts/deploy_sync.py. Edit that file, not this one.\n"


def rule_groups() -> list[dict[str, Any]]:
    """The rule groups of deploy/prometheus/alerts.yml."""
    return list(yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"])


def prometheus_rule() -> dict[str, Any]:
    groups = rule_groups()
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "mytpe-relay"},
        "spec": {"groups": groups},
    }


def render() -> str:
    return HEADER + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=1000)


def main() -> int:
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    for source, copy in CHART_COPIES.items():
        copy.write_bytes(source.read_bytes())
        print(f"wrote {copy.relative_to(ROOT)}")
    print(f"wrote {chart_docs.write().relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
