"""Review of issue 26 (tracing): edge cases, each a failing test on main 26ba5a7."""

from __future__ import annotations

import sys
from typing import Any

from relay import tracing

NOW = 1775745000
URL = "/webhooks/mytpe"
TOKEN = "s3cr3t-collector-token"


def test_nothing_allocated_or_called_per_request_when_off() -> None:
    """relay/tracing/spans.py: 'nothing is allocated'; the issue: 'unset, ... the cost is nil'. Count the
    Python-level calls a request's tracing call sites make when the tracer is None."""
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(count)
    try:
        with tracing.child(None, "verify"):
            pass
        with tracing.child(None, "dedupe claim"):
            pass
        with tracing.use(None, None):
            pass
        tracing.acked(None, 0, 0)
        with tracing.child(None, "dedupe commit"):
            pass
        tracing.traceparent(None)
        tracing.headers(None)
    finally:
        sys.setprofile(None)
    assert calls <= 1, f"{calls} Python calls per request with tracing off"
