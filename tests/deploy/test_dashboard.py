"""The Grafana dashboard: what the platform team asked to see is there, and the layout is sound."""

from __future__ import annotations

import json
from typing import Any

from tests.deploy.tools import DASHBOARD, dashboard_queries

REQUIRED = {
    "request rate by outcome": "mytpe_relay_requests_total",
    "verification failures by reason": "mytpe_relay_verification_failures_total",
    "duplicates": "mytpe_relay_duplicates_total",
    "publish latency quantiles": "mytpe_relay_publish_duration_seconds_bucket",
    "request latency quantiles": "mytpe_relay_request_duration_seconds_bucket",
    "delivery lag": "mytpe_relay_delivery_lag_seconds_bucket",
    "DLQ": "mytpe_relay_quarantined_total",
    "secret-index matches": "mytpe_relay_secret_matches_total",
    "Kafka errors": "mytpe_relay_kafka_producer_replacements_total",
    "parking by source": "mytpe_relay_parked_total",
    "re-verified after a secret change": "mytpe_relay_reverified_total",
    "parked now": "mytpe_relay_parked_entries",
    "sources file reloads": "mytpe_relay_config_reloads_total",
}


def _panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"])


def test_every_requested_view_has_a_query() -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries())
    missing = [view for view, metric in REQUIRED.items() if metric not in exprs]
    assert not missing


def test_panels_have_unique_ids_use_the_datasource_variable_and_do_not_overlap() -> None:
    panels = _panels()
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_quantile_panels_aggregate_buckets_by_le() -> None:
    for title, expr in dashboard_queries():
        if "histogram_quantile" in expr:
            assert "sum by (le" in expr, title
