"""The sampler OTEL_TRACES_SAMPLER names, the same decision as a bound the relay applies itself, the sampler
the provider runs (`Decided`: that one, skipped where the decision is known), and the ids the relay draws for a
webhook request (the `otel` extra)."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

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


class Decided(Sampler):
    """The configured sampler (`sampler_of`), except for a span whose decision is already known, which the
    relay marks (`deciding`) with its trace id around its start: a webhook's request span, sampled by
    `Tracer.request`'s own rule on that id, and a child of a sampled span of the relay's (`Tracer.child`,
    `Tracer.send`), on the trace id of the relay's current span. Every sampler OTEL_TRACES_SAMPLER names
    samples those: the parent-based ones follow a sampled local parent, the ratio decides on the trace id the
    sampled root has, always_on samples all, and under the always_off ones no span is sampled to have
    children. The result carries no trace state, so the span's is empty; the configured sampler's would
    carry the parent's, which is empty too for the relay's spans (a root has none, and the relay sets none).
    A span whose trace id is not the one marked (a context attached under the relay's by other code, a span
    started elsewhere) asks the configured sampler. Spares the SDK's sampler chain on each marked span."""

    def __init__(self, configured: Sampler) -> None:
        self.configured = configured
        self._marked = threading.local()

    def deciding(self, trace_id: int) -> None:
        """The spans of `trace_id` this thread starts next are known to be sampled; 0: none is."""
        self._marked.trace_id = trace_id

    def should_sample(  # noqa: PLR0917 - the SDK's signature
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if trace_id == getattr(self._marked, "trace_id", 0):  # never 0: an all-zero trace id is invalid
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)  # the span's attributes are these
        return self.configured.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return self.configured.get_description()
