"""A real Prometheus scrapes a relay (real Kafka) under traffic and evaluates every query we ship:
each dashboard panel query and each alert rule, without error and non-empty where traffic exists."""

from __future__ import annotations

import math
import re
import time
from typing import Any

import httpx2 as httpx
import pytest
import pytest_asyncio

from relay.settings import Secret
from tests.conftest import make_settings
from tests.deploy.prometheus import LocalPrometheus
from tests.deploy.tools import RULES, dashboard_queries, rules
from tests.helpers import OLD_SECRET, SECRET, sample, signed_headers
from tests.servers import RunningRelay, running_relay

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

# Grafana's variables, as the dashboard's defaults resolve them.
VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$job": "mytpe-relay", "$source": ".*"}
COMPARISON = re.compile(r"^(?P<signal>.*\S)\s*(==|!=|>=|<=|>|<)\s*[-+]?[0-9.]+\s*$", re.S)


def resolve(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


async def send_traffic(relay: RunningRelay) -> dict[str, int]:
    """Every kind of answer the dashboard shows: accepted on both families and both secrets, a duplicate,
    a bad signature, a stale timestamp and a quarantined body. Returns the expected counts."""
    now = int(time.time())
    async with httpx.AsyncClient(timeout=15) as client:
        # First: each /readyz answer sets mytpe_relay_ready (0 until then). Asked last, a scrape between the
        # quarantined body and it showed DlqInflow firing beside MytpeRelayNotReady still pending (critical),
        # which the alert test below caught in one fresh-clone CI run.
        assert (await client.get(relay.url + "/readyz")).status_code == 200

        async def post(body: bytes, headers: dict[str, str], status: int) -> None:
            response = await client.post(relay.webhook_url, content=body, headers=headers)
            assert response.status_code == status, response.text

        for i, event in enumerate(["transaction.completed", "pay_link.activated", "transaction.pending"] * 3):
            body, delivery_id = sample(event)
            secret = OLD_SECRET if i % 3 == 0 else SECRET
            await post(body, signed_headers(body, secret=secret, timestamp=now, delivery_id=delivery_id), 200)
        await post(body, signed_headers(body, timestamp=now, delivery_id=delivery_id), 200)  # duplicate
        await post(body, signed_headers(body, secret="whsec_" + "0" * 48, timestamp=now), 401)
        await post(body, signed_headers(body, timestamp=now - 3600), 401)
        junk = b'{"event": "transaction.completed", "data": '
        await post(junk, signed_headers(junk, timestamp=now), 200)
    return {"accepted": 9, "duplicate": 1, "quarantined": 1}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scraped(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One relay, one Prometheus and one round of traffic, shared by this module's read-only tests."""
    tmp_path = tmp_path_factory.mktemp("prometheus")
    # A second source whose MyTPE API never answers, so the drift series and their alerts have data.
    sources = tmp_path / "sources.yaml"
    block = '{api: legacy, base_url: "http://127.0.0.1:1", instance_id: i-1, allow_http: true}'
    sources.write_text(f"sources:\n  - {{name: shop, secrets: [{SECRET}], mytpe: {block}}}\n")
    settings = make_settings(
        kafka_bootstrap_servers=(kafka.bootstrap,),
        secrets=(Secret(SECRET), Secret(OLD_SECRET)),
        sources_file=sources,
        public_url="https://hooks.example.com",
        mytpe_api_key=Secret("k"),
        mytpe_api_secret=Secret("s"),
        drift_check_seconds=1.0,
    )
    async with running_relay(settings) as relay:
        target = relay.url.removeprefix("http://")
        async with LocalPrometheus(tmp_path, target=target, rule_files=[RULES]) as prometheus:
            # A baseline of scrapes before the traffic, so every counter's first increase is visible.
            await prometheus.wait_for('count_over_time(up{job="mytpe-relay"}[1m]) >= 2')
            expected = await send_traffic(relay)
            # The quarantined body is the last request sent, and one scrape reads every counter at once: once
            # it shows, so do all the others. Waiting for `accepted` alone let the queries run on a scrape
            # taken before the quarantined request (increase() of 0; seen once in a fresh-clone CI run).
            last = 'sum(mytpe_relay_requests_total{job="mytpe-relay",outcome="quarantined"})'
            await prometheus.wait_for(f"{last} >= {expected['quarantined']}")
            errors = 'mytpe_relay_drift_checks_total{job="mytpe-relay",result="error"}'
            await prometheus.wait_for(f"sum(increase({errors}[1h])) > 0")  # a second failed check
            yield prometheus


async def test_every_dashboard_query_evaluates_and_has_data(scraped: LocalPrometheus) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    for title, expr in queries:
        result = await scraped.query(resolve(expr))
        assert result, f"panel {title!r}: no data for {expr}"


async def increases(prometheus: LocalPrometheus, name: str, label: str) -> dict[str, float]:
    result = await prometheus.query(f'sum by ({label}) (increase(mytpe_relay_{name}_total{{job="mytpe-relay"}}[1m]))')
    return {r["metric"][label]: float(r["value"][1]) for r in result}


async def test_dashboard_figures_match_the_traffic(scraped: LocalPrometheus) -> None:
    increase = 'sum by ({label}) (increase(mytpe_relay_{name}_total{{job="mytpe-relay"}}[1m]))'
    outcomes = {
        r["metric"]["outcome"]: float(r["value"][1])
        for r in await scraped.query(increase.format(label="outcome", name="requests"))
    }
    # increase() extrapolates to the window's edges, so figures are ratios of the truth, not exact.
    assert outcomes["accepted"] > 0 and outcomes["duplicate"] > 0 and outcomes["quarantined"] > 0
    assert outcomes["accepted"] / outcomes["duplicate"] == pytest.approx(9, rel=0.01)
    assert outcomes["unavailable"] == 0
    secrets = {
        r["metric"]["secret_index"]: float(r["value"][1])
        for r in await scraped.query(increase.format(label="secret_index", name="secret_matches"))
    }
    # Index 0 verified 6 accepted, the duplicate and the quarantined body; index 1 (the old secret) 3.
    assert secrets["0"] / secrets["1"] == pytest.approx(8 / 3, rel=0.01)
    buckets = 'mytpe_relay_publish_duration_seconds_bucket{job="mytpe-relay"}'
    p99 = await scraped.value(f"histogram_quantile(0.99, sum by (le) (rate({buckets}[1m])))")
    assert 0 < p99 < math.inf


async def test_every_rule_loads_and_evaluates(scraped: LocalPrometheus) -> None:
    loaded = await scraped.api("/api/v1/rules")
    states = {rule["name"]: rule for group in loaded["groups"] for rule in group["rules"]}
    assert set(states) == {rule["alert"] for rule in rules()}
    for rule in rules():
        assert states[rule["alert"]]["health"] == "ok", states[rule["alert"]].get("lastError")
        await scraped.query(rule["expr"])
        match = COMPARISON.match(rule["expr"].strip())
        if match is None:  # absent(): empty while a relay target exists
            assert rule["expr"].startswith("absent(")
            assert await scraped.query(rule["expr"]) == []
            continue
        signal = match["signal"]
        assert await scraped.query(signal), f"{rule['alert']}: no data for {signal}"


async def test_a_quarantined_webhook_fires_the_dlq_alert_and_nothing_critical_fires(scraped: LocalPrometheus) -> None:
    await scraped.wait_for('ALERTS{alertname="MytpeRelayDlqInflow",alertstate="firing"}')
    alerts = (await scraped.api("/api/v1/alerts"))["alerts"]
    named = [(a["labels"]["alertname"], a["labels"]["severity"], a["state"]) for a in alerts]
    assert {alert["labels"]["severity"] for alert in alerts} <= {"warning", "info"}, named
    assert not [a for a in alerts if a["labels"]["alertname"] in {"MytpeRelayScrapeDown", "MytpeRelayAbsent"}]
