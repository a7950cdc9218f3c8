"""Alert rules: promtool accepts them, every alert has unit tests that fire it, and a runbook."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.conftest import require_tool
from tests.deploy.tools import ROOT, RULE_TESTS, RULES, rules, run

REQUIRED = {
    "verification-failure ratio": "MytpeRelayVerificationFailureRatioHigh",
    "503 ratio": "MytpeRelayUnavailableRatioHigh",
    "publish latency p99": "MytpeRelayPublishLatencyHigh",
    "delivery lag": "MytpeRelayDeliveryLagHigh",
    "DLQ inflow": "MytpeRelayDlqInflow",
    "no traffic": "MytpeRelayNoTraffic",
    "scrape down": "MytpeRelayScrapeDown",
}


def test_promtool_checks_the_rules() -> None:
    done = run(require_tool("promtool"), "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = run(require_tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_fail_when_a_threshold_drifts(tmp_path: Path) -> None:
    """The unit tests are not vacuous: the same tests against a loosened rule fail."""
    loosened = RULES.read_text(encoding="utf-8").replace("[5m])) > 0.01", "[5m])) > 0.5")
    assert loosened != RULES.read_text(encoding="utf-8")
    (tmp_path / "alerts.yml").write_text(loosened, encoding="utf-8")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/alerts_test.yml").write_text(RULE_TESTS.read_text(encoding="utf-8"), encoding="utf-8")
    done = run(require_tool("promtool"), "test", "rules", str(tmp_path / "tests/alerts_test.yml"))
    assert done.returncode != 0
    assert "MytpeRelayUnavailableRatioHigh" in done.stdout + done.stderr


def test_every_alert_is_fired_by_a_unit_test_and_the_required_ones_exist() -> None:
    names = {rule["alert"] for rule in rules()}
    assert set(REQUIRED.values()) <= names
    suite = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    fired = {case["alertname"] for test in suite["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")}
    quiet = {
        case["alertname"] for test in suite["tests"] for case in test["alert_rule_test"] if not case.get("exp_alerts")
    }
    assert fired == names
    assert quiet == names, "each alert also needs a case where it must not fire"


def test_every_alert_has_a_runbook_section() -> None:
    operations = (ROOT / "docs/operations.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
        for h in re.findall(r"^#+ (.+)$", operations, re.M)
    }
    for rule in rules():
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/operations.md"
        assert anchor == rule["alert"].lower(), runbook
        assert anchor in anchors, f"docs/operations.md has no section {rule['alert']}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
