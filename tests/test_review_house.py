"""Review of issue 22 (the house, second pass): each test fails on 595b8af and names a behaviour the refactor
introduced. Written by the reviewer to confirm findings; not a fix."""

from __future__ import annotations

from bench import profile


def test_the_profile_still_has_a_pipeline_stage() -> None:
    # bench/profile.py's STAGES name "relay/pipeline.py", which the split removed: the pipeline's samples now
    # count as the http endpoint's (or "other"), so `scripts/bench --profile --ref` A/Bs across the split mislead.
    frames = [
        "__call__ (/repo/relay/http/webhook.py:130)",
        "handle (/repo/relay/pipeline/relay.py:52)",
        "deliver (/repo/relay/pipeline/deliverer.py:90)",
    ]
    assert profile.stage(frames) == "relay pipeline"
