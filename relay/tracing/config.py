"""The standard OTEL_* variables the relay reads, checked once at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from relay.settings import ConfigError

SAMPLERS = (
    "parentbased_traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "traceidratio",
    "always_on",
    "always_off",
)
DEFAULT_SERVICE = "mytpe-relay"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


@dataclass(frozen=True, kw_only=True)
class TracingConfig:
    """What tracing does. `endpoint` is the full traces URL (`…/v1/traces`); None: tracing is off."""

    endpoint: str | None = None
    endpoint_variable: str = "OTEL_EXPORTER_OTLP_ENDPOINT"
    service_name: str = DEFAULT_SERVICE
    sampler: str = "parentbased_traceidratio"
    ratio: float = 1.0
    disabled: bool = False
    headers_set: bool = False
    """OTEL_EXPORTER_OTLP_(TRACES_)HEADERS is set: it may hold a token, so only this fact is ever shown."""

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None and not self.disabled

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TracingConfig:
        """Raises ConfigError naming the variable when one is invalid (even while tracing is off)."""
        disabled = _flag(env, "OTEL_SDK_DISABLED")
        variable, endpoint = _endpoint(env)
        sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_traceidratio"
        if sampler not in SAMPLERS:
            raise ConfigError(f"OTEL_TRACES_SAMPLER: {sampler!r} is not one of {', '.join(SAMPLERS)}")
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
        if protocol not in ("", "http/protobuf"):
            raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r}; the relay exports http/protobuf only")
        exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        if exporter not in ("", "otlp", "none"):
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {exporter!r}; the relay exports otlp (or none)")
        return cls(
            endpoint=None if exporter == "none" else endpoint,
            endpoint_variable=variable,
            service_name=env.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE,
            sampler=sampler,
            ratio=_ratio(env.get("OTEL_TRACES_SAMPLER_ARG", "")),
            disabled=disabled,
            headers_set=bool(env.get("OTEL_EXPORTER_OTLP_HEADERS") or env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")),
        )

    def describe(self) -> str:
        """One line for `check`: where spans go and how many. Never a header value."""
        if self.disabled:
            return "tracing: off (OTEL_SDK_DISABLED=true)"
        if self.endpoint is None:
            return "tracing: off (no OTEL_EXPORTER_OTLP_ENDPOINT; no traceparent is written)"
        sampling = self.sampler + (f" {self.ratio:g}" if self.sampler.endswith("traceidratio") else "")
        headers = ", OTLP headers set (not shown)" if self.headers_set else ""
        where = urlsplit(self.endpoint)  # a query string could hold a token: never shown
        target = f"{where.scheme}://{where.hostname}{f':{where.port}' if where.port else ''}{where.path}"
        return f"tracing: on (service {self.service_name}, OTLP/HTTP to {target}, sampler {sampling}{headers})"


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: {value!r} is not true or false")


def _endpoint(env: Mapping[str, str]) -> tuple[str, str | None]:
    """(the variable that named it, the traces URL). A base endpoint gets `/v1/traces`, as the spec says."""
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", _url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces)
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not base:
        return "OTEL_EXPORTER_OTLP_ENDPOINT", None
    return "OTEL_EXPORTER_OTLP_ENDPOINT", _url("OTEL_EXPORTER_OTLP_ENDPOINT", base).rstrip("/") + "/v1/traces"


def _url(name: str, value: str) -> str:
    if not value.startswith(("http://", "https://")) or "@" in value.split("/")[2]:
        raise ConfigError(f"{name}: an http:// or https:// URL without credentials (put tokens in the headers)")
    return value


def _ratio(text: str) -> float:
    if not text.strip():
        return 1.0
    try:
        ratio = float(text)
    except ValueError:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG: {text!r} is not a number between 0 and 1") from None
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG: {ratio:g} is not between 0 and 1")
    return ratio
