"""Every label value the code can emit is primed at 0, so alerts on increase() see the first event."""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay import __version__
from relay import metrics as relay_metrics
from relay.metrics import Metrics

RELAY = Path(relay_metrics.__file__).parent

# Call name -> the primed values its first string argument must belong to.
EMITTERS = {
    "Unusable": relay_metrics.QUARANTINE_REASONS,
    "HeaderError": relay_metrics.REJECTIONS,
    "SignatureError": relay_metrics.REJECTIONS,
    "Unavailable": relay_metrics.UNAVAILABLE_CAUSES,
    "_store": relay_metrics.DEDUPE_OPS,
}


def _literal_calls() -> list[tuple[str, str, str]]:
    """(module, callee, first string argument) for every call of an emitter in relay/."""
    found = []
    for path in sorted(RELAY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0]
            if callee in EMITTERS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((path.name, callee, first.value))
    return found


def test_every_emitted_reason_is_primed() -> None:
    calls = _literal_calls()
    assert {callee for _, callee, _ in calls} == set(EMITTERS), "the scan no longer finds every emitter"
    for module, callee, value in calls:
        assert value in EMITTERS[callee], f"{module}: {callee}({value!r}) is not primed in relay/metrics.py"


def test_errors_with_fixed_reasons_are_primed() -> None:
    """BodyTooLarge, ClientGone and BodyTimeout pass their reason to RelayError.__init__ in errors.py."""
    tree = ast.parse((RELAY / "errors.py").read_text(encoding="utf-8"))
    reasons = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "__init__"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert reasons == {
        "body_too_large",
        "client_disconnected",
        "body_timeout",
        "unavailable",
        "dedupe_error",
        "unknown_source",
        "rotation_window",
        "parking_error",
        "kafka_timeout",
        "kafka_refused",
        "kafka_error",
    }
    causes = {"unavailable", "dedupe_error", "unknown_source", "kafka_timeout", "kafka_refused", "kafka_error"}
    assert reasons - causes <= set(relay_metrics.REJECTIONS)
    assert "kafka_timeout" in relay_metrics.UNAVAILABLE_CAUSES
    assert "kafka_refused" in relay_metrics.UNAVAILABLE_CAUSES
    assert "unknown_source" in relay_metrics.NOT_FOUND
    assert "dedupe_error" in relay_metrics.UNAVAILABLE_CAUSES


def test_primed_series_are_exposed_at_zero() -> None:
    metrics = Metrics()
    metrics.prime(topics=["mytpe.transaction", "mytpe.dlq"])
    metrics.prime_source("shop", 2)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in family.samples
    }
    assert samples[("mytpe_relay_quarantined_total", (("reason", "malformed_json"),))] == 0
    assert samples[("mytpe_relay_secret_matches_total", (("secret_index", "1"), ("source", "shop")))] == 0
    assert samples[("mytpe_relay_published_total", (("topic", "mytpe.dlq"),))] == 0
    assert samples[("mytpe_relay_requests_total", (("outcome", "bad_signature"), ("source", "shop")))] == 0
    assert samples[("mytpe_relay_requests_total", (("outcome", "unknown_source"), ("source", "unknown")))] == 0
    assert samples[("mytpe_relay_parking_refused_total", (("reason", "rate_limited"), ("source", "shop")))] == 0
    assert samples[("mytpe_relay_build_info", (("version", __version__),))] == 1


def test_a_removed_source_leaves_no_series() -> None:
    metrics = Metrics()
    metrics.prime_source("shop", 2)
    metrics.prime_source("kiosk", 1)
    metrics.source_secrets_changed.labels("shop").set(1.0)
    metrics.forget_source("shop", 2)
    exposed = generate_latest(metrics.registry).decode()
    assert 'source="shop"' not in exposed
    assert 'source="kiosk"' in exposed


def test_a_shorter_secret_list_drops_its_last_indexes() -> None:
    metrics = Metrics()
    metrics.prime_source("shop", 3)
    metrics.resize_secrets("shop", 3, 1)
    exposed = generate_latest(metrics.registry).decode()
    assert 'secret_index="0",source="shop"' in exposed
    assert 'secret_index="1"' not in exposed and 'secret_index="2"' not in exposed


def test_the_drainers_quarantine_reasons_are_primed() -> None:
    """Review finding: the drainer passes its reasons by name (`labels(moved)`), which the scan above does not
    see, and `spool_damaged` was not primed: the first damaged spool row moved to the DLQ made its series at 1,
    which increase() reads as no change, so MytpeRelayDlqInflow stayed quiet."""
    from relay.spool import drainer

    assert {drainer.DAMAGED, drainer.REFUSED} <= set(relay_metrics.QUARANTINE_REASONS)
    metrics = Metrics()
    metrics.prime(topics=[])
    assert 'mytpe_relay_quarantined_total{reason="spool_damaged"} 0.0' in generate_latest(metrics.registry).decode()
