"""Tracing: OpenTelemetry spans of each webhook, W3C trace context on its records, exemplars, log ids.
May import: relay (its version), relay.settings (its ConfigError).

Off unless an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
and OTEL_SDK_DISABLED is not true (and OTEL_TRACES_EXPORTER is not none). Off, no tracer exists: each
call site of the request path checks `tracer is None` inline and calls nothing here; other paths (replay,
spool drain, re-verification) call the helpers of `spans.py`, which then do nothing but that check. No
new `traceparent` is written (a spool drain passes a spooled record's on; a DLQ replay still gives the
CloudEvent the one its DLQ record kept). The SDK is the optional extra `mytpe-relay[otel]`; only `otel.py`
and the modules it loads (`current.py`, `light.py`, `sampling.py`, `otlp.py`) import it, and only `start()`
imports `otel.py`.

On, a webhook request gets no span from the SDK's tracer: the relay draws its ids and applies the sampler's
rule itself (`sampling.bound_of`). Not sampled, it gets a context of the relay's making (`current.Unsampled`),
which its records carry with the sampled flag clear; sampled, it and its children are the relay's own spans
(`light.LightSpan`), which the SDK's processors and the OTLP exporter take as the SDK's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.settings import ConfigError
from relay.tracing.config import TracingConfig
from relay.tracing.spans import NO_SPAN, acked, child, end, headers, traceparent, use
from relay.tracing.w3c import valid_traceparent

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

__all__ = [
    "NO_SPAN",
    "TracingConfig",
    "acked",
    "child",
    "end",
    "headers",
    "start",
    "traceparent",
    "use",
    "valid_traceparent",
]


def start(config: TracingConfig) -> Tracer | None:
    """The relay's tracer for `config`, exporting in a background thread; None when tracing is off.

    Raises ConfigError when tracing is configured but the `otel` extra is not installed.
    """
    if not config.enabled:
        return None
    try:
        from relay.tracing import otel  # noqa: PLC0415 - the optional extra, loaded only when tracing is on
    except ImportError:
        raise ConfigError(
            f"{config.endpoint_variable}: tracing needs the otel extra: pip install 'mytpe-relay[otel]'"
            " (or unset it, or set OTEL_SDK_DISABLED=true)"
        ) from None
    try:
        return otel.Tracer.from_config(config)
    except (ValueError, OverflowError, RuntimeError) as exc:  # an OTEL_*_LIMIT or OTEL_BSP_* value the SDK
        # refuses (its line names no secret); OverflowError: a queue size past a C ssize_t; RuntimeError: an
        # OTEL_PYTHON_EXPORTER_OTLP_*CREDENTIAL_PROVIDER no package provides
        said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"tracing: {said} (an OTEL_* value the SDK refuses)") from None
