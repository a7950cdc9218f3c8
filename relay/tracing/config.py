"""The standard OTEL_* variables the relay reads, checked once at start (only while tracing is on)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

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
SHUTDOWN_SECONDS = 5.0
"""How long a stopping relay gives the exporter to send the spans it still holds (`Tracer.shutdown`), after the
app has stopped: part of its time from SIGTERM to exit while tracing is on."""
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")
# One `name=value` of OTEL_EXPORTER_OTLP_HEADERS: the SDK's own (liberal) pattern, so that what passes here
# never makes the SDK log the variable's text (which it does, whole, for a value it cannot parse).
_HEADER = re.compile(
    r"[ \t]*[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a\x7c\x7e]+[ \t]*="
    r"[ \t]*[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*[ \t]*"
)
Headers = tuple[tuple[str, str], ...]
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")  # an HTTP header name, once decoded
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what no HTTP header value may hold, once decoded
TIMEOUTS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
MAX_TIMEOUT = 300.0
COMPRESSIONS = ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
DETECTORS = "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"
MAX_SCHEDULE_DELAY = 3_600_000
"""OTEL_BSP_SCHEDULE_DELAY's most, in milliseconds (an hour; the SDK's export thread dies of an OverflowError at
its first wait past a couple of centuries, and every span then queues and none is exported)."""
BATCH_INTEGERS = (
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
)


@dataclass(frozen=True, kw_only=True)
class TracingConfig:
    """What tracing does. `endpoint` is the full traces URL (`…/v1/traces`); None: tracing is off."""

    endpoint: str | None = None
    endpoint_variable: str = "OTEL_EXPORTER_OTLP_ENDPOINT"
    service_name: str = DEFAULT_SERVICE
    sampler: str = "parentbased_traceidratio"
    ratio: float = 1.0
    disabled: bool = False
    exporter: str = "otlp"
    headers_set: bool = False
    """OTEL_EXPORTER_OTLP_(TRACES_)HEADERS is set: it may hold a token, so only this fact is ever shown."""
    headers: Headers = field(default=(), repr=False)
    """The parsed OTLP headers, given to the exporter (never shown, never in a repr)."""

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None and not self.disabled and self.exporter != "none"

    @property
    def stop_seconds(self) -> float:
        """What tracing adds to the relay's time from SIGTERM to exit (Settings.stop_bound_seconds)."""
        return SHUTDOWN_SECONDS if self.enabled else 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TracingConfig:
        """Raises ConfigError naming the variable when one is invalid. Tracing off (no endpoint,
        OTEL_TRACES_EXPORTER=none, OTEL_SDK_DISABLED=true), the other OTEL_* variables are not read:
        they may be meant for another process."""
        exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
        named = [n for n in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT") if _get(env, n)]
        if not named or exporter == "none":
            return cls(exporter=exporter if exporter == "none" else "otlp")
        if _flag(env, "OTEL_SDK_DISABLED"):
            return cls(disabled=True)
        if exporter != "otlp":
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {exporter!r}; the relay exports otlp (or none)")
        _protocol(env)
        sampler = _get(env, "OTEL_TRACES_SAMPLER").lower() or "parentbased_traceidratio"
        if sampler not in SAMPLERS:
            raise ConfigError(f"OTEL_TRACES_SAMPLER: {sampler!r} is not one of {', '.join(SAMPLERS)}")
        headers = _headers(env)
        _exporter_values(env)
        _detectors(env)
        return cls(
            endpoint=_endpoint(named[0], _get(env, named[0])),
            endpoint_variable=named[0],
            service_name=_get(env, "OTEL_SERVICE_NAME") or _resource_service(env) or DEFAULT_SERVICE,
            sampler=sampler,
            ratio=_ratio(env.get("OTEL_TRACES_SAMPLER_ARG", "")),
            headers_set=bool(headers),
            headers=headers,
        )

    def describe(self) -> str:
        """One line for `check`: where spans go and how many. Never a header value, a path or a query."""
        if self.disabled:
            return "tracing: off (OTEL_SDK_DISABLED=true)"
        if self.exporter == "none":
            return "tracing: off (OTEL_TRACES_EXPORTER=none; no traceparent is written by this process)"
        if self.endpoint is None:
            return "tracing: off (no OTEL_EXPORTER_OTLP_ENDPOINT; no traceparent is written by this process)"
        sampling = self.sampler + (f" {self.ratio:g}" if self.sampler.endswith("traceidratio") else "")
        headers = ", OTLP headers set (not shown)" if self.headers_set else ""
        where = urlsplit(self.endpoint)  # a path or query could hold a token: only scheme://host:port
        target = f"{where.scheme}://{where.netloc}"
        return f"tracing: on (service {self.service_name}, OTLP/HTTP to {target}, sampler {sampling}{headers})"


def _get(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = _get(env, name).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: {value!r} is not true or false")


def _protocol(env: Mapping[str, str]) -> None:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = _get(env, name).lower()
        if protocol:
            if protocol != "http/protobuf":
                raise ConfigError(f"{name}: {protocol!r}; the relay exports http/protobuf only")
            return


def _endpoint(name: str, value: str) -> str:
    """The traces URL. A base endpoint gets `/v1/traces` appended to its path (before any query), as the
    spec says; a signal endpoint is used as it is."""
    where = _url(name, value)
    if name == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
        return value
    path = where.path.rstrip("/") + "/v1/traces"
    return urlunsplit((where.scheme, where.netloc, path, where.query, where.fragment))


def _url(name: str, value: str) -> SplitResult:
    try:
        where = urlsplit(value)
    except ValueError:  # an unclosed IPv6 bracket, say
        raise ConfigError(f"{name}: not a valid URL") from None
    if where.scheme not in ("http", "https") or not where.netloc or "@" in where.netloc:
        raise ConfigError(f"{name}: an http:// or https:// URL without credentials (put tokens in the headers)")
    try:
        where.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ConfigError(f"{name}: the port is not a number from 0 to 65535") from None
    if not where.hostname:
        raise ConfigError(f"{name}: the URL names no host")
    return where


def _headers(env: Mapping[str, str]) -> Headers:
    """OTEL_EXPORTER_OTLP_TRACES_HEADERS, else OTEL_EXPORTER_OTLP_HEADERS: `name=value` pairs, comma-separated,
    URL-encoded. A bad one is refused naming the variable; its text (a token, often) is never echoed."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"):
        text = _get(env, name)
        if text:
            break
    else:
        return ()
    pairs: list[tuple[str, str]] = []
    for item in re.split(r"[ \t]*,[ \t]*", text):
        if not item:
            continue
        if not _HEADER.fullmatch(item):
            raise ConfigError(
                f"{name}: not a comma-separated list of name=value pairs (URL-encoded, as the OpenTelemetry"
                " spec says: e.g. authorization=Bearer%20...); the value is not shown"
            )
        key, value = (unquote(part).strip() for part in item.split("=", 1))
        if not _TOKEN.fullmatch(key.lower()) or _CONTROL.search(value):  # the HTTP client would log it, whole
            raise ConfigError(
                f"{name}: a header name or value decodes to characters HTTP does not allow in it (a line break,"
                " say); the value is not shown"
            )
        pairs.append((key.lower(), value))
    return tuple(pairs)


def _exporter_values(env: Mapping[str, str]) -> None:
    """The exporter's and batch processor's own variables, which the SDK reads itself: a value that would stop
    every export (a timeout of 0 or not a number), or that the SDK only warns about and replaces, is refused
    here; of a `_TRACES_` variable and its base, only the one the exporter reads. The SDK reads the timeout in
    seconds, where the specification says milliseconds: a value over MAX_TIMEOUT is taken for milliseconds
    meant, and refused (10000 would hold each export for 2.8 hours against a collector that does not answer)."""
    for names in (TIMEOUTS, COMPRESSIONS):
        name = next((n for n in names if _get(env, n)), "")
        text = _get(env, name) if name else ""
        if not text:
            continue
        if names is COMPRESSIONS:
            if text.lower() not in ("gzip", "deflate", "none"):
                raise ConfigError(f"{name}: {text!r} is not gzip, deflate or none")
            continue
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds <= MAX_TIMEOUT:  # NaN included
            raise ConfigError(
                f"{name}: {text!r} is not a number of seconds above 0 and at most {MAX_TIMEOUT:g} (the SDK reads"
                " seconds, not the specification's milliseconds)"
            )
    for name in BATCH_INTEGERS:
        text = _get(env, name)
        if not text and name in env:  # the SDK reads the raw value: int("") would be its traceback
            raise ConfigError(f"{name}: empty: unset it, or give a whole number")
        try:
            value = int(text or "0")
        except ValueError:  # the SDK would print a traceback and use its default
            raise ConfigError(f"{name}: {text[:30]!r} is not a whole number") from None
        if name == "OTEL_BSP_SCHEDULE_DELAY" and value > MAX_SCHEDULE_DELAY:
            raise ConfigError(f"{name}: {text[:30]!r} is over {MAX_SCHEDULE_DELAY} milliseconds (an hour)")


def _detectors(env: Mapping[str, str]) -> None:
    """OTEL_EXPERIMENTAL_RESOURCE_DETECTORS, which the SDK reads itself: a name no installed package provides
    would be its traceback at start (and skipped), so it is refused here. `*` means every installed one."""
    text = _get(env, DETECTORS)
    names = {name.strip() for name in text.split(",") if name.strip()} - {"*"}
    if not names:
        return
    installed = set(entry_points(group="opentelemetry_resource_detector").names)
    unknown = sorted(names - installed)
    if unknown:
        raise ConfigError(
            f"{DETECTORS}: {', '.join(repr(n[:40]) for n in unknown[:3])} is no installed resource detector"
            f" (installed: {', '.join(sorted(installed)) or 'none'})"
        )


def _resource_service(env: Mapping[str, str]) -> str:
    """`service.name` in OTEL_RESOURCE_ATTRIBUTES, which the specification ranks below OTEL_SERVICE_NAME and
    above the relay's default ("" when absent)."""
    for item in _get(env, "OTEL_RESOURCE_ATTRIBUTES").split(","):
        key, _, value = item.partition("=")
        if unquote(key).strip() == "service.name" and unquote(value).strip():
            return unquote(value).strip()
    return ""


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
