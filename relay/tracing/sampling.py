"""The sampler OTEL_TRACES_SAMPLER names (the provider's, for roots off the request path), the same decision
as a bound the relay applies itself to a webhook request, and the ids the relay draws for its own spans (the
`otel` extra)."""

from __future__ import annotations

import random

from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

from relay.tracing.config import TracingConfig


def sampler_of(config: TracingConfig) -> Sampler:
    """OTEL_TRACES_SAMPLER as the spec names them. MyTPE sends no context: a root's ratio decides."""
    name = config.sampler.removeprefix("parentbased_")
    base: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(name) or TraceIdRatioBased(config.ratio)
    return ParentBased(base) if config.sampler.startswith("parentbased_") else base


def bound_of(config: TracingConfig) -> int:
    """`sampler_of(config)`'s decision for a root, as a bound: a trace id is sampled when its low 64 bits are
    below it (TraceIdRatioBased's own rule; a test holds the two equal for every sampler name)."""
    name = config.sampler.removeprefix("parentbased_")
    if name == "always_on":
        return LOW_BITS + 1
    if name == "always_off":
        return 0
    return TraceIdRatioBased.get_bound_for_rate(config.ratio)


LOW_BITS = (1 << 64) - 1
draw = random.getrandbits  # the SDK's RandomIdGenerator draws its ids from the same generator


def nonzero(bits: int) -> int:
    """A random id of `bits` bits that is not 0 (an all-zero id is invalid); called only when a draw gave 0."""
    value = 0
    while not value:
        value = draw(bits)
    return value
