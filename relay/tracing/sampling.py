"""The sampler OTEL_TRACES_SAMPLER names, the same decision as a bound the relay applies itself, and the ids
the relay draws for a webhook request (the `otel` extra)."""

from __future__ import annotations

import random
import threading

from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
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
draw = random.getrandbits  # the SDK's RandomIdGenerator draws from the same generator


def nonzero(bits: int) -> int:
    """A random id of `bits` bits that is not 0 (an all-zero id is invalid); called only when a draw gave 0."""
    value = 0
    while not value:
        value = draw(bits)
    return value


class ChosenIds(RandomIdGenerator):
    """The provider's ids. A webhook's trace id is drawn, and sampled or not, by `Tracer.request` first; when
    it is sampled, the SDK's span takes that id, so the SDK's sampler makes the same decision on the same id."""

    def __init__(self) -> None:
        self._chosen = threading.local()

    def choose(self, trace_id: int) -> None:
        """The trace id of the next root span this thread starts."""
        self._chosen.trace_id = trace_id

    def generate_trace_id(self) -> int:
        chosen: int = getattr(self._chosen, "trace_id", 0)
        if chosen:
            self._chosen.trace_id = 0
            return chosen
        return super().generate_trace_id()
