"""The OTEL_* variables: off unless an endpoint is set, one clear line for each bad value, no header value shown."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from relay import tracing
from relay.settings import ConfigError
from relay.tracing import TracingConfig
from relay.tracing.otel import Tracer, sampler_of


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
    assert TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "often"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_SDK_DISABLED": "maybe"}, "OTEL_SDK_DISABLED"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:tok@collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        TracingConfig.from_env(env)


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
    assert "https://otlp.example.com/v1/traces" in line
    assert "parentbased_traceidratio 0.01" in line


def test_parent_based_ratio_by_default() -> None:
    sampler = sampler_of(TracingConfig.from_env({"OTEL_TRACES_SAMPLER_ARG": "0.25"}))
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
