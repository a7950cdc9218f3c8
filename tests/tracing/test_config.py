"""The OTEL_* variables: off unless an endpoint is set, one clear line for each bad value, no header value shown."""

from __future__ import annotations

import builtins
import logging
import subprocess
import sys
from typing import Any

import pytest

from relay import tracing
from relay.settings import ConfigError
from relay.tracing import TracingConfig
from relay.tracing.otel import Tracer, quiet_drops
from relay.tracing.sampling import sampler_of

TOKEN = "s3cr3t-collector-token"
ON = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}


def test_unset_is_off_and_starts_no_tracer() -> None:
    config = TracingConfig.from_env({"OTEL_SERVICE_NAME": "relay-eu"})
    assert not config.enabled
    assert tracing.start(config) is None
    assert "off" in config.describe()


def test_a_base_endpoint_gets_the_traces_path_and_the_signal_endpoint_wins() -> None:
    base = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert base.endpoint == "http://collector:4318/v1/traces"
    both = TracingConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4318/x"}
    )
    assert both.endpoint == "http://b:4318/x"
    assert both.endpoint_variable == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"


def test_sdk_disabled_wins_over_an_endpoint() -> None:
    config = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not config.enabled
    assert tracing.start(config) is None
    exporter_none = TracingConfig.from_env({**ON, "OTEL_TRACES_EXPORTER": "none"})
    assert not exporter_none.enabled
    assert "OTEL_TRACES_EXPORTER=none" in exporter_none.describe()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({**ON, "OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        ({**ON, "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({**ON, "OTEL_TRACES_SAMPLER_ARG": "often"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({**ON, "OTEL_SDK_DISABLED": "maybe"}, "OTEL_SDK_DISABLED"),
        ({**ON, "OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({**ON, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc'"),
        ({**ON, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": " GRPC "}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'grpc'"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:tok@collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:43l8"}, "OTEL_EXPORTER_OTLP_ENDPOINT: the port"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:99999/v1/traces"}, "_TRACES_ENDPOINT: the port"),
        ({**ON, "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization: Bearer {TOKEN}"}, "OTEL_EXPORTER_OTLP_HEADERS: "),
        ({**ON, "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"a=b,{TOKEN}"}, "OTEL_EXPORTER_OTLP_TRACES_HEADERS: "),
        # review: these passed, then the HTTP client refused the decoded header on every export and logged it whole
        ({**ON, "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{TOKEN}%0Ax"}, "OTEL_EXPORTER_OTLP_HEADERS: "),
        ({**ON, "OTEL_EXPORTER_OTLP_HEADERS": f"x-api%0Akey={TOKEN}"}, "OTEL_EXPORTER_OTLP_HEADERS: "),
        # review: a traceback from urlsplit
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1"}, "OTEL_EXPORTER_OTLP_ENDPOINT: not a valid URL"),
        # review: these passed, then every export failed (a timeout of 0, below 0 or NaN) or the SDK replaced them
        ({**ON, "OTEL_EXPORTER_OTLP_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({**ON, "OTEL_EXPORTER_OTLP_TIMEOUT": "-1"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({**ON, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "nan"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
        ({**ON, "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION"),
        ({**ON, "OTEL_BSP_SCHEDULE_DELAY": "abc"}, "OTEL_BSP_SCHEDULE_DELAY"),
        # the SDK's export thread died of an OverflowError at its first wait: every span queued, none exported
        ({**ON, "OTEL_BSP_SCHEDULE_DELAY": "1" + "0" * 20}, "OTEL_BSP_SCHEDULE_DELAY"),
        ({**ON, "OTEL_BSP_SCHEDULE_DELAY": "3600001"}, "OTEL_BSP_SCHEDULE_DELAY: '3600001' is over"),
        # review: a blank one passed, then the SDK's int("") printed a traceback (and it used its default)
        ({**ON, "OTEL_BSP_SCHEDULE_DELAY": ""}, "OTEL_BSP_SCHEDULE_DELAY: empty"),
        ({**ON, "OTEL_BSP_MAX_QUEUE_SIZE": "  "}, "OTEL_BSP_MAX_QUEUE_SIZE: empty"),
        # review of the above: the specification's milliseconds, which the SDK reads as seconds (2.8 hours)
        ({**ON, "OTEL_EXPORTER_OTLP_TIMEOUT": "10000"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        # the SDK printed a StopIteration traceback at start for a detector no package provides (and skipped it)
        ({**ON, "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "host, nosuch"}, "_DETECTORS: 'nosuch' is no installed"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_its_variable(env: dict[str, str], variable: str) -> None:
    """One line naming the variable (found by review: a bad port was a traceback from describe(); the
    protocol error named the base variable when the _TRACES_ one was set); a header value is never echoed."""
    with pytest.raises(ConfigError, match=variable) as refused:
        TracingConfig.from_env(env)
    assert TOKEN not in str(refused.value)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_TRACES_SAMPLER": "jaeger_remote", "OTEL_EXPORTER_OTLP_HEADERS": "Authorization: Bearer x"},
        {**ON, "OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {**ON, "OTEL_TRACES_EXPORTER": "none", "OTEL_TRACES_SAMPLER_ARG": "often"},
    ],
)
def test_otel_variables_meant_for_others_do_not_stop_the_relay_while_tracing_is_off(env: dict[str, str]) -> None:
    """Found by review: OTEL_EXPORTER_OTLP_PROTOCOL=grpc with no endpoint was a ConfigError."""
    config = TracingConfig.from_env(env)
    assert not config.enabled
    assert tracing.start(config) is None


def test_a_base_endpoint_with_a_query_string_gets_the_traces_path_before_the_query() -> None:
    """Found by review: it was `https://otlp.example/?tenant=a/v1/traces`."""
    config = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.example/?tenant=a"})
    assert config.endpoint == "https://otlp.example/v1/traces?tenant=a"
    prefixed = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1]:4318/otlp/?t=1"})
    assert prefixed.endpoint == "http://[::1]:4318/otlp/v1/traces?t=1"


def test_headers_are_parsed_url_decoded_and_never_in_the_repr() -> None:
    config = TracingConfig.from_env({**ON, "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer%20{TOKEN}, x-a = b"})
    assert config.headers == (("authorization", f"Bearer {TOKEN}"), ("x-a", "b"))
    assert TOKEN not in repr(config)


def test_the_sdk_header_parser_never_logs_the_text(caplog: pytest.LogCaptureFixture) -> None:
    """The second lock: the SDK logs a header item it cannot parse, whole; quiet_drops() hides its text."""
    from opentelemetry.util.re import parse_env_headers

    quiet_drops()
    with caplog.at_level(logging.WARNING, logger="opentelemetry.util.re"):
        parse_env_headers(f"Authorization: Bearer {TOKEN}", liberal=True)
    assert caplog.records
    assert TOKEN not in caplog.text


def _check(**otel: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "RELAY_MYTPE_SECRETS": "whsec_" + "a" * 40,
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "RELAY_STARTUP_TIMEOUT_SECONDS": "2",
        **otel,
    }
    command = [sys.executable, "-m", "relay", "check"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_check_with_malformed_otlp_headers_exits_2_and_never_prints_the_token() -> None:
    """Found by review: a colon for the `=` (`Authorization: Bearer ...`) made the SDK print the whole value on
    stderr in `check` (and `serve`, `replay`, `spool drain`)."""
    done = _check(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_HEADERS=f"Authorization: Bearer {TOKEN}"
    )
    assert TOKEN not in done.stdout + done.stderr, done.stderr[:400]
    assert done.returncode == 2, (done.returncode, done.stderr[-300:])
    assert "OTEL_EXPORTER_OTLP_HEADERS" in done.stderr


def test_check_with_a_bad_endpoint_port_exits_2() -> None:
    """Found by review: a traceback from describe()."""
    done = _check(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:43l8")
    assert "Traceback" not in done.stderr, done.stderr[-300:]
    assert done.returncode == 2, (done.returncode, done.stderr[-300:])


def test_describe_never_shows_a_header_value_nor_a_query() -> None:
    config = TracingConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://otlp.example.com/v1/traces?token=s3cr3t-query",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer s3cr3t-header",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
        }
    )
    line = config.describe()
    assert "s3cr3t" not in line
    assert "headers set (not shown)" in line
    assert "to https://otlp.example.com," in line  # scheme://host:port only: a path may hold a token too
    ipv6 = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1]:4318/t0ken"}).describe()
    assert "to http://[::1]:4318," in ipv6
    assert "parentbased_traceidratio 0.01" in line


def test_parent_based_ratio_by_default() -> None:
    sampler = sampler_of(TracingConfig.from_env({**ON, "OTEL_TRACES_SAMPLER_ARG": "0.25"}))
    assert "ParentBased" in sampler.get_description()
    assert "0.25" in sampler.get_description()


def test_configured_without_the_extra_refuses_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_otel(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "relay.tracing" and args[2] and "otel" in args[2]:
            raise ImportError("No module named 'opentelemetry'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    config = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_ENDPOINT: .*mytpe-relay\[otel\]"):
        tracing.start(config)


def test_configured_with_the_extra_starts_a_tracer() -> None:
    tracer = tracing.start(TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}))
    assert isinstance(tracer, Tracer)
    tracer.shutdown()


def test_serve_configured_without_the_extra_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from relay.ops.cli import EXIT_CONFIG, main

    real_import = builtins.__import__

    def no_otel(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "relay.tracing" and args[2] and "otel" in args[2]:
            raise ImportError("No module named 'opentelemetry'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    env = {"RELAY_MYTPE_SECRETS": "whsec_x", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    assert main(["serve"], env) == EXIT_CONFIG
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("mytpe-relay: configuration error: OTEL_EXPORTER_OTLP_ENDPOINT: ")
    assert "mytpe-relay[otel]" in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "abc"),
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "-1"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "5000"),  # over the queue's 2048
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", str(2**63)),  # review: the SDK's deque raised OverflowError, a traceback
        # review: the exporter's RuntimeError ("Requested component 'nope' not found") was a traceback, exit 1
        ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER", "nope"),
        ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER", "nope"),
    ],
)
def test_a_value_the_sdk_refuses_is_a_config_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Review finding: the SDK's ValueError (SpanLimits, BatchSpanProcessor) escaped `check` and `serve` as a
    traceback, exit 1."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match="tracing: ") as refused:
        tracing.start(TracingConfig.from_env(ON))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_BSP_EXPORT_TIMEOUT": "0"},  # the SDK accepts it (and does not use it)
        {"OTEL_BSP_SCHEDULE_DELAY": "3600000"},  # an hour: the longest the relay takes
        {"OTEL_BSP_MAX_QUEUE_SIZE": "+5000", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "5_000"},  # as int() reads them
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "0", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "5"},  # the base is another's
        {"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip"},
        {"OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": " host ,*, process"},  # `*`: every installed detector
    ],
)
def test_values_the_sdk_accepts_still_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, env: dict[str, str]
) -> None:
    """Review of the checks above: they refused values the SDK accepts, and a base variable the exporter does not
    read when its _TRACES_ one is set. The SDK logs no error starting with them (a detector it cannot load is one)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracer = tracing.start(TracingConfig.from_env({**ON, **env}))
    assert tracer is not None
    tracer.shutdown(timeout=1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_service_name_from_the_resource_attributes_when_otel_service_name_is_unset() -> None:
    """Review finding: the relay's default replaced a `service.name` given in OTEL_RESOURCE_ATTRIBUTES, which the
    specification ranks above it (and below OTEL_SERVICE_NAME)."""
    given = {**ON, "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=eu,service.name=payments%2Drelay"}
    assert TracingConfig.from_env(given).service_name == "payments-relay"
    assert TracingConfig.from_env({**given, "OTEL_SERVICE_NAME": "relay-eu"}).service_name == "relay-eu"
    assert TracingConfig.from_env(ON).service_name == "mytpe-relay"


def test_a_failed_export_never_logs_the_endpoint_query_nor_a_header(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: with a token in the endpoint's query, each failed export's lines quoted it (the HTTP
    client's error names the URL's path and query), while `check` hid it."""
    import socket

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from relay.tracing.otel import hide_secrets
    from relay.tracing.otlp import Exporter

    with socket.socket() as probe:  # a port nothing listens on: every POST is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3")
    config = TracingConfig.from_env(
        {
            # review: the HTTP client re-encodes the URL before its error names it (`|` as %7C, %41 as A)
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces?api_key={TOKEN}|x%41",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-other=another-secret-value,x-scope-orgid=host",
        }
    )
    hide_secrets(config)
    exporter = Exporter(endpoint=config.endpoint, headers=dict(config.headers))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with caplog.at_level(logging.DEBUG, logger="opentelemetry"):
        provider.get_tracer("t").start_span("s").end()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry.exporter")]
    assert any("(not shown)" in line for line in lines), lines  # the failure is still said
    assert not any(TOKEN in line or "another-secret-value" in line for line in lines), lines
    assert any("host='127.0.0.1'" in line for line in lines), lines  # review: a short value garbled other words
    provider.shutdown()
