"""The Helm chart (deploy/helm/mytpe-relay): lint, every ci/ scenario through the real validators, the values
schema, and one truth with the kustomize overlays: what the chart renders for an overlay's setup must equal
what kustomize renders for it."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import chart_docs
import deploy_sync
import kubernetes_validate
import pytest
import yaml

from relay import __version__
from relay.kafka.security import DIAGNOSE_TIMEOUT
from relay.settings import Settings, parsers, variables
from relay.settings.declare import specs
from relay.tracing import TracingConfig
from relay.tracing.config import SHUTDOWN_SECONDS
from tests.conftest import require_tool
from tests.deploy.drift import differences
from tests.deploy.tools import (
    CHART,
    ROOT,
    SCENARIOS,
    from_secrets,
    helm_command,
    helm_template,
    render,
    render_chart,
    run,
)

Objects = tuple[dict[str, Any], ...]
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
WORKLOADS = ("Deployment", "StatefulSet")
# What the base sets up beyond the chart's defaults (the ci/ scenarios set these themselves).
BASE_SETUP = ("serviceMonitor.enabled=true", "prometheusRule.enabled=true")


def _one(objects: Objects, *kinds: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] in kinds]
    return found


def _pod(objects: Objects) -> dict[str, Any]:
    return dict(_one(objects, *WORKLOADS)["spec"]["template"]["spec"])


def _container(objects: Objects) -> dict[str, Any]:
    (container,) = _pod(objects)["containers"]
    return dict(container)


def _config(objects: Objects) -> dict[str, str]:
    name = _container(objects)["envFrom"][0]["configMapRef"]["name"]
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
    return dict(config["data"])


@pytest.mark.parametrize("scenario", [None, *SCENARIOS])
def test_helm_lint_strict_passes(scenario: str | None) -> None:
    args = [] if scenario is None else ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")]
    done = run(helm_command(), "lint", "--strict", str(CHART), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout
    assert "funcMap fail" not in done.stderr, done.stderr  # a template's `fail` that lint only logs


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_every_object_passes_kubernetes_validate_strict(scenario: str, version: str) -> None:
    objects = render_chart(scenario)
    kinds = {o["kind"] for o in objects}
    assert {"ConfigMap", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy", "Pod"} <= kinds
    assert len(kinds & set(WORKLOADS)) == 1
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            continue  # checked against the operator's schemas below
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("scenario", ["production", "spool"])
def test_operator_objects_pass_the_prometheus_operator_schemas(scenario: str) -> None:
    node = require_tool("node")
    if not (ROOT / "tests/deploy/node_modules").is_dir():
        message = "tests/deploy/node_modules is missing (scripts/install runs npm ci there)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    objects = [o for o in render_chart(scenario) if o["kind"] in OPERATOR_KINDS]
    done = run(node, str(ROOT / "tests/deploy/validate_crds.mjs"), stdin=json.dumps(objects))
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(done.stdout.splitlines()) == ["VALID PrometheusRule/mytpe-relay", "VALID ServiceMonitor/mytpe-relay"]


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        ("replicaCont=3", "additional properties 'replicaCont' not allowed"),
        ("replicaCount=-1", "/replicaCount"),
        ("autoscaling.maxReplica=4", "additional properties 'maxReplica' not allowed"),
        ("config.RELAY_LOG_LEVLE=DEBUG", "additional properties 'RELAY_LOG_LEVLE' not allowed"),
        ("config.RELAY_KAFKA_SASL_PASSWORD=hunter2", "additional properties 'RELAY_KAFKA_SASL_PASSWORD' not allowed"),
        ("config.RELAY_DEDUPE_URL=redis://:pw@redis:6379/0", "additional properties 'RELAY_DEDUPE_URL' not allowed"),
        ("service.type=Ingress", "/service/type"),
        # a PVC deleted on scale-in or uninstall takes the records the relay answered 2xx for
        ("spool.retentionPolicy.whenScaled=Delete", "/spool/retentionPolicy/whenScaled"),
        ("spool.retentionPolicy.whenDeleted=Delete", "/spool/retentionPolicy/whenDeleted"),
        ("podDisruptionBudget.minAvailable=abc", "/podDisruptionBudget/minAvailable"),
        ("podLabels.app\\.kubernetes\\.io/component=worker", "invalid propertyName 'app.kubernetes.io/component'"),
        ("commonLabels.app\\.kubernetes\\.io/instance=other", "invalid propertyName 'app.kubernetes.io/instance'"),
        ("topologySpreadConstraints[0].labelSelecter.matchLabels.a=b", "additional properties 'labelSelecter'"),
        ("tolerations[0].efect=NoSchedule", "additional properties 'efect'"),
        ("extraEnv[0].valueForm.secretKeyRef.name=x", "additional properties 'valueForm'"),
    ],
)
def test_the_values_schema_refuses_a_wrong_value(setting: str, refusal: str) -> None:
    done = helm_template("--set", setting)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert refusal in done.stderr, done.stderr


def test_an_empty_ingress_namespace_list_is_refused() -> None:
    """An ingress rule with an empty `from` admits every source: an empty list must not open the relay."""
    done = helm_template("--set-json", "networkPolicy.ingressNamespaces=[]")
    assert done.returncode != 0
    assert "/networkPolicy/ingressNamespaces" in done.stderr, done.stderr


def test_the_schema_takes_every_non_secret_setting_the_relay_reads_in_config() -> None:
    """`config` holds what the relay reads (relay/settings/) except what the chart sets from other values:
    secrets (from Secrets only), the port, the spool, and file paths (mounted Secrets)."""
    read = set(variables(Settings))
    secrets = {"RELAY_MYTPE_SECRETS", "RELAY_DEDUPE_URL", "RELAY_KAFKA_SASL_PASSWORD"}
    secrets |= {"RELAY_MYTPE_API_KEY", "RELAY_MYTPE_API_SECRET"}
    chart_set = {"RELAY_PORT", "RELAY_CONFIG_FILE"} | {n for n in read if n.startswith("RELAY_SPOOL_")}
    expected = {n for n in read if not n.endswith("_FILE")} - secrets - chart_set
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert set(schema["properties"]["config"]["properties"]) == expected


def test_several_replicas_on_memory_dedupe_are_refused() -> None:
    done = helm_template("--set", "dedupe.urlSecret.secretName=", "--set", "autoscaling.enabled=false")
    assert done.returncode != 0
    assert "2 replicas can run, but dedupe.urlSecret is not set" in done.stderr


@pytest.mark.parametrize(
    ("sets", "refusal"),
    [
        (("autoscaling.minReplicas=8",), "autoscaling.minReplicas 8 is above autoscaling.maxReplicas 6"),
        (("podDisruptionBudget.maxUnavailable=0",), "podDisruptionBudget.maxUnavailable 0 would block every"),
        (("podDisruptionBudget.maxUnavailable=0%",), "podDisruptionBudget.maxUnavailable 0% would block every"),
        (("autoscaling.enabled=false", "replicaCount=1"), "podDisruptionBudget.minAvailable 1 would block every"),
        (("autoscaling.minReplicas=2", "podDisruptionBudget.minAvailable=100%"), "minAvailable 100% would block"),
        (("spool.enabled=true", "fullnameOverride=" + "a" * 53), "is longer than 52 characters"),
        (("spool.enabled=true", "spool.maxBytes=1073741825"), "spool.maxBytes 1073741825 is more than half of"),
        (("spool.enabled=true", "spool.size=1500Mi"), "Lower spool.maxBytes to 786432000 or less"),
        (("spool.enabled=true", "spool.size=1.6G"), "Lower spool.maxBytes to 800000000 or less"),
        (("spool.enabled=true", "spool.size=2e9"), 'spool.size "2e9" is not a size this chart reads'),
        (("spool.enabled=true", "spool.afterSeconds=10"), "spool.afterSeconds 10 is not below config.RELAY_PUBLISH"),
        (
            ("spool.enabled=true", "spool.afterSeconds=6", "config.RELAY_PUBLISH_TIMEOUT_SECONDS=5"),
            "spool.afterSeconds 6 is not below config.RELAY_PUBLISH_TIMEOUT_SECONDS (5)",
        ),
    ],
    ids=[
        *("hpa-min-above-max", "pdb-max-0", "pdb-max-0%", "pdb-min-1-of-1", "pdb-min-100%", "statefulset-name"),
        *("spool-over-half", "spool-mi", "spool-decimal", "spool-size-unread", "spool-after", "spool-after-set"),
    ],
)
def test_the_templates_refuse_values_that_cannot_work(sets: tuple[str, ...], refusal: str) -> None:
    """A PDB that no eviction can satisfy blocks every node drain; a StatefulSet's controller-revision-hash label
    is its name plus 11 characters, and a label holds 63."""
    args = [arg for item in sets for arg in ("--set", item)]
    done = helm_template(*args)
    assert done.returncode != 0
    assert refusal in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("size", "most"), [("2Gi", 1073741824), ("1.5Gi", 805306368), ("2G", 1000000000), ("3000000000", 1500000000)]
)
def test_a_spool_cap_of_half_its_volume_is_taken(size: str, most: int) -> None:
    """The spool's files take up to twice the records' bytes (relay/spool/room.py OVERHEAD): half the volume is
    the most the chart takes, and exactly that is taken."""
    objects = render_chart(None, "spool.enabled=true", f"spool.size={size}", f"spool.maxBytes={most}")
    assert _config(objects)["RELAY_SPOOL_MAX_BYTES"] == str(most)
    over = ("--set", f"spool.size={size}", "--set", f"spool.maxBytes={most + 1}")
    assert helm_template("--set", "spool.enabled=true", *over).returncode != 0
    assert helm_template(*over).returncode == 0  # no spool, no check


def test_a_spool_size_written_as_a_number_in_a_values_file_is_read_as_one(tmp_path: Path) -> None:
    """Review of the check above: Helm reads a number in a values file as a float, which `toString` writes
    4e+09: the chart refused a size written in bytes, as its own message asks."""
    values = tmp_path / "values.yaml"
    values.write_text("spool:\n  enabled: true\n  size: 4000000000\n  maxBytes: 2000000000\n")
    assert helm_template("-f", str(values)).returncode == 0
    values.write_text("spool:\n  enabled: true\n  size: 4000000000\n  maxBytes: 2000000001\n")
    refused = helm_template("-f", str(values))
    assert "spool.maxBytes 2000000001 is more than half of spool.size 4000000000" in refused.stderr


def test_a_statefulset_name_of_52_characters_is_taken() -> None:
    objects = render_chart(None, "spool.enabled=true", "fullnameOverride=" + "a" * 52)
    assert len(_one(objects, "StatefulSet")["metadata"]["name"]) == 52


def test_the_spool_recovery_check_is_a_value() -> None:
    """RELAY_SPOOL_RECOVERY_CHECK is the chart's to set (the schema keeps RELAY_SPOOL_* out of `config`)."""
    assert "RELAY_SPOOL_RECOVERY_CHECK" not in _config(render_chart(None, "spool.enabled=true"))
    checked = _config(render_chart(None, "spool.enabled=true", "spool.recoveryCheck=true"))
    assert checked["RELAY_SPOOL_RECOVERY_CHECK"] == "true"
    assert "RELAY_SPOOL_RECOVERY_CHECK" not in _config(render_chart(None, "spool.recoveryCheck=true"))  # no spool


def test_one_pod_hpa_on_memory_dedupe_is_allowed() -> None:
    """overlays/dev runs an HPA at 1..1 on memory://; replicaCount does not count while the HPA owns the count."""
    hpa = ("autoscaling.minReplicas=1", "autoscaling.maxReplicas=1", "podDisruptionBudget.maxUnavailable=1")
    objects = render_chart(None, "dedupe.urlSecret.secretName=", *hpa)
    assert _one(objects, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 1


def test_a_grace_period_shorter_than_the_relays_drain_is_refused() -> None:
    done = helm_template("--set", "spool.enabled=true", "--set", "terminationGracePeriodSeconds=45")
    assert done.returncode != 0
    assert "terminationGracePeriodSeconds 45 is not above preStop + the relay's stop bound (99 s)" in done.stderr


def test_a_drain_written_with_spaces_counts_in_the_grace_period_and_a_word_is_refused(tmp_path: Path) -> None:
    """Review finding: sprig's float64 read " 1000 " (quoted, spaced) as 0, so the chart rendered a grace period of
    45 s for a relay that strips the spaces and drains for 1000 s: the kubelet killed it mid-drain."""
    spaced = tmp_path / "spaced.yaml"
    spaced.write_text('config:\n  RELAY_SHUTDOWN_TIMEOUT_SECONDS: " 1000 "\n')
    done = helm_template("-f", str(spaced))
    assert done.returncode != 0
    assert "terminationGracePeriodSeconds 45 is not above preStop + the relay's stop bound" in done.stderr, done.stderr
    assert helm_template("-f", str(spaced), "--set", "terminationGracePeriodSeconds=1100").returncode == 0
    for written in (".5", "+5", "1_0", "1e1", "0"):  # each a number the relay reads (review: .5 and +5 failed)
        assert helm_template("--set-string", f"config.RELAY_SHUTDOWN_DELAY_SECONDS={written}").returncode == 0, written
    worded = helm_template("--set", "config.RELAY_FLUSH_TIMEOUT_SECONDS=five")
    assert worded.returncode != 0
    assert 'config.RELAY_FLUSH_TIMEOUT_SECONDS: "five" is not a number of seconds' in worded.stderr, worded.stderr


@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        ("RELAY_TOPIC_PREFIX: 010", "/config/RELAY_TOPIC_PREFIX"),  # YAML 1.1's octal: rendered "8"
        ("RELAY_KAFKA_SASL_USERNAME: 0x1F", "/config/RELAY_KAFKA_SASL_USERNAME"),  # rendered "31"
        ("RELAY_FAMILIES: no", "/config/RELAY_FAMILIES"),  # rendered "false"
        ("RELAY_DEDUPE_TTL_SECONDS: 1e20", "/config/RELAY_DEDUPE_TTL_SECONDS"),  # rendered as an int64 overflow
        ("RELAY_DEDUPE_FAIL_OPEN: 1", "/config/RELAY_DEDUPE_FAIL_OPEN"),
    ],
)
def test_a_yaml_number_or_boolean_where_the_relay_reads_text_is_refused(
    tmp_path: Path, value: str, refusal: str
) -> None:
    """Review finding: the schema took a string, a number or a boolean for every `config` setting, so a text
    setting written unquoted became another text: records to topic `8.transaction`, a SASL user "31"."""
    values = tmp_path / "values.yaml"
    values.write_text(f"config:\n  {value}\n")
    done = helm_template("-f", str(values))
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr and refusal in done.stderr, done.stderr


def test_the_schema_types_each_config_setting_as_the_relay_parses_it() -> None:
    numeric = {parsers.positive_int, parsers.positive_float, parsers.non_negative_float, parsers.kafka_seconds}
    declared = {spec.env: spec.parse for spec in specs(Settings)}
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    for name, rule in schema["properties"]["config"]["properties"].items():
        parse = declared[name]
        if parse in numeric:
            assert rule == {"type": ["string", "number"], "maximum": 2**53 - 1}, name
        elif parse is parsers.boolean:
            assert rule == {"type": ["string", "boolean"]}, name
        else:
            assert rule == {"type": "string"}, name


@pytest.mark.parametrize(("startup", "window"), [(None, 60), ("30", 60), ("120", 150)])
def test_the_startup_probe_waits_for_a_failed_start_to_say_why(startup: str | None, window: int) -> None:
    """Review finding: a start that cannot reach Kafka fails after RELAY_STARTUP_TIMEOUT_SECONDS, then takes up to
    DIAGNOSE_TIMEOUT to say why; the probe allowed 60 s whatever the timeout, so with a longer one the kubelet
    killed the pod before its line was written (the line MytpeRelayScrapeDown's runbook sends you to)."""
    sets = () if startup is None else (f"config.RELAY_STARTUP_TIMEOUT_SECONDS={startup}",)
    probe = _container(render_chart(None, *sets))["startupProbe"]
    allowed = probe["periodSeconds"] * probe["failureThreshold"]
    assert allowed == window and allowed >= float(startup or 30) + DIAGNOSE_TIMEOUT + 20


@pytest.mark.parametrize("startup", ["4294967300", "1e20"])
def test_a_startup_timeout_past_the_probes_int32_allows_the_most_it_holds(startup: str) -> None:
    """Review finding: the failures allowed went past Kubernetes' int32 (the API server refused the object), or,
    past int64, wrapped to a negative number and rendered 30 (the kubelet killed the start at 60 s)."""
    probe = _container(render_chart(None, f"config.RELAY_STARTUP_TIMEOUT_SECONDS={startup}"))["startupProbe"]
    assert probe["failureThreshold"] == 2**31 - 1


@pytest.mark.parametrize(
    ("sets", "without"),
    [
        ((), 37),
        (("spool.enabled=true",), 99),
        (
            (
                "dedupe.urlSecret.secretName=",
                "replicaCount=1",
                "autoscaling.enabled=false",
                "podDisruptionBudget.maxUnavailable=1",
            ),
            29,
        ),
    ],
    ids=["base", "spool", "memory-dedupe"],
)
def test_tracing_adds_the_exporters_last_spans_to_the_stop_bound(sets: tuple[str, ...], without: int) -> None:
    """A stopping relay gives the exporter up to SHUTDOWN_SECONDS after the app has stopped (Tracer.shutdown):
    a grace period of preStop + the bound + that is above the bound without tracing, not with it."""
    grace = without + int(SHUTDOWN_SECONDS)
    values = [arg for item in sets for arg in ("--set", item)]
    assert helm_template(*values, "--set", f"terminationGracePeriodSeconds={grace}").returncode == 0
    done = helm_template(*values, "--set", "tracing.enabled=true", "--set", f"terminationGracePeriodSeconds={grace}")
    assert done.returncode != 0
    assert (
        f"terminationGracePeriodSeconds {grace} is not above preStop + the relay's stop bound ({grace} s)"
        in done.stderr
    )
    below = helm_template(*values, "--set", f"terminationGracePeriodSeconds={without}")
    assert f"the relay's stop bound ({without} s)" in below.stderr  # `without` is the chart's own bound
    objects = render_chart(None, *sets)
    container = _container(objects)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert without == pre_stop + _settings(objects, container).stop_bound_seconds  # and the relay's, to the second


@pytest.mark.parametrize(
    ("name", "value"),
    [("RELAY_KAFKA_SASL_PASSWORD", "hunter2"), ("RELAY_SPOOL_DRAIN_SECONDS", "600"), ("RELAY_LOG_LEVLE", "DEBUG")],
    ids=["a-secret-in-plain-text", "a-stop-bound-past-the-grace-period", "a-typo"],
)
def test_extra_env_cannot_set_what_the_schema_and_the_templates_check(name: str, value: str) -> None:
    """extraEnv wins over the ConfigMap: a RELAY_* there would skip the schema (secrets, typos) and the grace
    period check (a longer spool drain)."""
    done = helm_template(
        "--set", "spool.enabled=true", "--set", f"extraEnv[0].name={name}", "--set-string", f"extraEnv[0].value={value}"
    )
    assert done.returncode != 0
    assert f"extraEnv: {name} is a relay setting" in done.stderr, done.stderr


def _settings(objects: Objects, container: dict[str, Any], **secrets: str) -> Settings:
    """The Settings the container would start with. Each `*_FILE` must lie in a directory mounted from a Secret
    (never a subPath); a placeholder file stands in for it."""
    volumes = {v["name"]: v for v in _pod_of(objects, container)["volumes"]}
    secret_dirs = {m["mountPath"] for m in container["volumeMounts"] if "secret" in volumes.get(m["name"], {})}
    assert not [m for m in container["volumeMounts"] if "subPath" in m]
    placeholders = Path(tempfile.mkdtemp(prefix="chart-files-"))
    env = from_secrets(container)
    for name, value in _config(objects).items():
        env[name] = value
        if name.endswith("_FILE"):
            assert value.rsplit("/", 1)[0] in secret_dirs, f"{name}={value} is not in a mounted Secret directory"
            (placeholders / name).write_text("placeholder")
            env[name] = str(placeholders / name)
    return Settings.from_env({**env, "RELAY_MYTPE_SECRETS": "whsec_placeholder", **secrets})


def _pod_of(objects: Objects, container: dict[str, Any]) -> dict[str, Any]:
    """The pod spec (of a workload, a Job or a Pod) that holds this container."""
    for obj in objects:
        spec = obj.get("spec", {})
        spec = spec.get("template", {}).get("spec", spec)
        if container in spec.get("containers", []):
            return dict(spec)
    raise AssertionError(container["name"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_are_hardened_and_outlive_the_relays_drain(scenario: str) -> None:
    objects = render_chart(scenario)
    pod, container = _pod(objects), _container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    settings = _settings(objects, container)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    tracing = TracingConfig.from_env(_config(objects)).stop_seconds  # the exporter's last spans, when on
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.stop_bound_seconds + tracing
    assert container["ports"][0]["containerPort"] == settings.port
    annotation = _one(objects, *WORKLOADS)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert re.fullmatch("[0-9a-f]{64}", annotation)


def test_a_changed_setting_rolls_the_pods() -> None:
    def checksum(objects: Objects) -> str:
        return str(_one(objects, *WORKLOADS)["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(render_chart(None)) != checksum(render_chart(None, "config.RELAY_LOG_LEVEL=DEBUG"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_helm_test_hook_runs_check_with_the_relays_settings_and_secrets(scenario: str) -> None:
    objects = render_chart(scenario)
    hook = _one(objects, "Pod")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (check,) = hook["spec"]["containers"]
    relay = _container(objects)
    assert check["args"] == ["check"]
    assert (check["envFrom"], check["securityContext"]) == (relay["envFrom"], relay["securityContext"])
    assert [e for e in check["env"] if e["name"] != "RELAY_SPOOL_DIR"] == relay.get("env", [])
    assert check["volumeMounts"] == [m for m in relay["volumeMounts"] if m["name"] != "spool"]
    assert {e["name"]: e.get("value") for e in check["env"]}.get("RELAY_SPOOL_DIR", "") == ""  # PVCs aren't here
    _settings(objects, check)


DRAIN_JOB = ("spool.drainJob.enabled=true", "spool.drainJob.claimName=spool-mytpe-relay-3")


def test_the_spool_scenario_ships_no_drain_job() -> None:
    """The drain Job is a one-off for a PVC a scale-in left behind: a scenario that installs it races a live
    replica for that PVC (or waits on one that does not exist)."""
    assert [o for o in render_chart("spool") if o["kind"] == "Job"] == []


def test_the_spool_drain_job_mounts_the_claim_and_what_the_relay_reads() -> None:
    objects = render_chart("spool", *DRAIN_JOB)
    job = _one(objects, "Job")
    kubernetes_validate.validate(job, "1.30.0", strict=True)
    (drain,) = job["spec"]["template"]["spec"]["containers"]
    relay = _container(objects)
    assert drain["args"] == ["spool", "drain", "--dir", "/var/lib/mytpe-relay/spool"]
    assert drain["volumeMounts"] == relay["volumeMounts"]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["spool"]["persistentVolumeClaim"] == {"claimName": "spool-mytpe-relay-3"}
    _settings(objects, drain)


def test_the_drain_job_is_a_hook_whose_pod_template_survives_an_upgrade() -> None:
    """A Job's pod template is immutable: a plain Job whose template carries the chart's version or the image
    fails every later upgrade ("field is immutable"). As a hook, Helm deletes and recreates it each time."""
    job = _one(render_chart("spool", *DRAIN_JOB), "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    other = _one(render_chart("spool", *DRAIN_JOB, "image.tag=0.1.1"), "Job")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels == other["spec"]["template"]["metadata"]["labels"]
    assert not {"app.kubernetes.io/version", "helm.sh/chart"} & set(labels)


def test_drain_job_names_differ_per_claim_with_a_long_release_name() -> None:
    def name(claim: str) -> str:
        values = ("-f", str(CHART / "ci/spool-values.yaml"), "--set", "spool.drainJob.enabled=true")
        done = helm_template("--set", f"fullnameOverride={LONG}", *values, "--set", f"spool.drainJob.claimName={claim}")
        assert done.returncode == 0, done.stderr
        (job,) = [o for o in yaml.safe_load_all(done.stdout) if o and o["kind"] == "Job"]
        assert len(job["metadata"]["name"]) <= 63
        return str(job["metadata"]["name"])

    names = {name(f"spool-{LONG}-3"), name(f"spool-{LONG}-4"), name("spool-other-4")}
    assert len(names) == 3, names
    assert name(f"spool-{LONG}-3").endswith("-drain-3")


LONG = "payments-prod-eu-west-1-mytpe-relay"


def test_the_check_pod_and_the_drain_job_are_under_the_network_policy() -> None:
    """In a namespace whose default denies all traffic, the `helm test` pod and the drain Job need the relay's
    egress (DNS, Kafka, Redis) as much as the relay does."""
    objects = render_chart("spool", *DRAIN_JOB)
    selector = _one(objects, "NetworkPolicy")["spec"]["podSelector"]
    assert set(selector) == {"matchLabels"}
    pods = [o["metadata"]["labels"] for o in objects if o["kind"] == "Pod"]
    pods += [o["spec"]["template"]["metadata"]["labels"] for o in objects if o["kind"] == "Job"]
    assert len(pods) == 2
    for labels in pods:
        assert selector["matchLabels"].items() <= labels.items(), labels


def test_the_chart_copies_of_the_alerts_and_the_dashboard_equal_their_sources() -> None:
    for source, copy in deploy_sync.CHART_COPIES.items():
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs: run .venv/bin/python scripts/deploy_sync.py"


def test_the_readme_values_table_is_generated_from_values_yaml() -> None:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    values = (CHART / "values.yaml").read_text(encoding="utf-8")
    assert readme == chart_docs.render_readme(readme, values), "run .venv/bin/python scripts/deploy_sync.py"
    documented = {row.path.split(".")[0] for row in chart_docs.rows(values)}
    assert documented == set(yaml.safe_load(values)), "every top-level value needs a `# --` description"


def _render_base() -> Objects:
    done = run(require_tool("kubectl"), "kustomize", str(ROOT / "deploy/k8s/base"))
    assert done.returncode == 0, done.stderr
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


def _without(spec: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in keys}


def _kustomize(name: str) -> Objects:
    return _render_base() if name == "base" else render(name)


# What the chart and kustomize render differently for one setup, each for its reason (dotted paths, `*` any part,
# named list items by name). Every other field of the workload, its pod and containers must be equal.
KNOWN_DIFFERENCES = {
    "metadata": "the chart's names and labels carry the release; the overlays set the namespace, `helm -n` does",
    "spec.selector": "the chart's selectors add app.kubernetes.io/instance and app.kubernetes.io/component",
    "spec.template.metadata.labels": "those selector labels, and the chart's version labels",
    "spec.template.metadata.annotations.checksum/config": "the chart rolls the pods by this checksum of the "
    "ConfigMap, kustomize by the ConfigMap's hash-suffixed name",
    "spec.template.spec.containers.*.envFrom.0.configMapRef.name": "kustomize's hash suffix; the ConfigMap's "
    "content is compared on its own",
    "spec.template.spec.topologySpreadConstraints.*.labelSelector": "the selector labels, as above",
}
HPA_OWNS_REPLICAS = {
    "spec.replicas": "with the HPA on, neither sets a count, so an upgrade or an apply keeps what the HPA chose "
    "(docs/operations.md, Upgrades)",
}
DEV_DIFFERENCES = {
    "spec.template.spec.containers.relay.env": "overlays/dev generates its Secret (a hash-suffixed name, "
    "RELAY_DEDUPE_URL=memory://); the chart creates none: ci/minimal needs mytpe-relay-secrets to exist and "
    "leaves RELAY_DEDUPE_URL unset, which is memory://",
    "settings (ConfigMap).RELAY_KAFKA_BOOTSTRAP_SERVERS": "each points at a Kafka in its own namespace "
    "(overlays/dev's mytpe-relay-dev)",
    "HPA": "overlays/dev keeps the base's HPA at 1..1; ci/minimal turns autoscaling off and runs replicaCount 1",
}
# ci/ scenario (None: the chart's defaults) -> the kustomize setup it renders, and the differences it adds.
PAIRS: dict[str | None, tuple[str, dict[str, str]]] = {
    None: ("base", HPA_OWNS_REPLICAS),
    "production": ("prod", HPA_OWNS_REPLICAS),
    "spool": ("prod-spool", HPA_OWNS_REPLICAS),
    "minimal": ("dev", DEV_DIFFERENCES),
}


def _workload(objects: Objects) -> dict[str, Any]:
    """The workload, whole, with the content of the ConfigMap it reads."""
    workload = _one(objects, *WORKLOADS)
    return {"kind": workload["kind"], "metadata": workload["metadata"], "spec": workload["spec"]} | {
        "settings (ConfigMap)": _config(objects)
    }


def _around(objects: Objects) -> dict[str, Any]:
    """The objects around the pods, without the names and selectors (the chart's carry the release)."""
    dashboard = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard"))
    parts = {
        "PDB": _without(_one(objects, "PodDisruptionBudget")["spec"], "selector"),
        "NetworkPolicy": _without(_one(objects, "NetworkPolicy")["spec"], "podSelector"),
        "Service": _without(_one(objects, "Service")["spec"], "selector"),
        "ServiceMonitor endpoints": _one(objects, "ServiceMonitor")["spec"]["endpoints"],
        "PrometheusRule": _one(objects, "PrometheusRule")["spec"],
        "dashboard": [dashboard["metadata"]["labels"]["grafana_dashboard"], dashboard["data"]],
    }
    for hpa in [o["spec"] for o in objects if o["kind"] == "HorizontalPodAutoscaler"]:
        parts["HPA"] = _without(hpa, "scaleTargetRef") | {"target kind": hpa["scaleTargetRef"]["kind"]}
    return parts


@pytest.mark.parametrize("scenario", PAIRS, ids=[str(s) for s in PAIRS])
def test_the_chart_renders_what_kustomize_renders_for_the_same_setup(scenario: str | None) -> None:
    """One truth: the chart's defaults are the base's setup, ci/production is overlays/prod, ci/spool is
    overlays/prod-spool, ci/minimal is overlays/dev. The whole workload (pod, containers, probes, mounts and their
    Secrets, security, grace period, strategy, claims) and the objects around it must be equal, field by field,
    except the known differences above."""
    overlay, known = PAIRS[scenario]
    chart, kustomize = render_chart(scenario, *BASE_SETUP), _kustomize(overlay)
    for shape in (_workload, _around):
        found = differences(shape(chart), shape(kustomize), KNOWN_DIFFERENCES | known)
        assert not found, "the chart and kustomize differ:\n" + "\n".join(found)


DRAIN_JOB_DIFFERENCES = {
    "metadata": "the chart's name and labels carry the release; the chart's Job is a Helm hook",
    "spec.template.metadata": "the chart labels the Job's pod (spool-drain) so no relay selector counts it",
    "spec.template.spec.containers.drain.envFrom.0.configMapRef.name": "the file names the ConfigMap without "
    "kustomize's hash suffix (its comment says to set it); the chart's has none",
    "spec.template.spec.containers.drain.env": "the chart gives the Job the relay's env from its Secrets; the file "
    "sets a placeholder RELAY_MYTPE_SECRETS (the drain reads no webhook)",
    "spec.template.spec.containers.drain.imagePullPolicy": "the chart's image.pullPolicy; the file leaves the default",
    "spec.template.spec.containers.drain.resources": "the chart gives the Job the relay's resources; the file none",
    "spec.template.spec.serviceAccountName": "the chart's ServiceAccount; the file uses the namespace's default",
    "spec.template.spec.*.sources": "the chart mounts every Secret the relay mounts; the file the Kafka ones only",
}


def test_the_drain_job_is_what_components_spool_drain_job_runs() -> None:
    claim = "spool.drainJob.claimName=spool-mytpe-relay-2"  # the file's placeholder
    ours = _one(render_chart("spool", "spool.drainJob.enabled=true", claim), "Job")
    theirs = yaml.safe_load((ROOT / "deploy/k8s/components/spool/drain-job.yaml").read_text(encoding="utf-8"))
    found = differences(ours, theirs, DRAIN_JOB_DIFFERENCES)
    assert not found, "the chart and components/spool/drain-job.yaml differ:\n" + "\n".join(found)


def test_the_drift_check_sees_any_field_outside_the_known_differences() -> None:
    """The fields an adversarial review added to the chart's workload unnoticed, when only chosen fields were
    compared: each one is now a difference."""
    chart = _workload(render_chart(None, *BASE_SETUP))
    known = KNOWN_DIFFERENCES | HPA_OWNS_REPLICAS
    assert differences(chart, _workload(_render_base()), known) == []
    pod = ("spec", "template", "spec")
    added = {
        (*pod, "hostNetwork"): True,
        (*pod, "enableServiceLinks"): True,
        (*pod, "containers", 0, "envFrom", 1): {"secretRef": {"name": "everything"}},
        ("spec", "minReadySeconds"): 30,
        ("spec", "revisionHistoryLimit"): 50,
    }
    for path, value in added.items():
        changed = json.loads(json.dumps(chart))
        *parents, last = path
        target = changed
        for key in parents:
            target = target[key]
        if isinstance(target, list):
            target.append(value)
        else:
            target[last] = value
        assert differences(changed, _workload(_render_base()), known), f"{path} went unnoticed"


@pytest.mark.parametrize("scenario", [None, *SCENARIOS])
def test_the_selectors_match_the_pods_and_the_scrape_job_is_the_alerts(scenario: str | None) -> None:
    objects = render_chart(scenario, *BASE_SETUP)
    workload = _one(objects, *WORKLOADS)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    selectors = [workload["spec"]["selector"]["matchLabels"], _one(objects, "Service")["spec"]["selector"]]
    selectors += [t["labelSelector"]["matchLabels"] for t in _pod(objects)["topologySpreadConstraints"]]
    selectors += [_one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]]
    selectors += [_one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]]
    for selector in selectors:
        assert selector.items() <= labels.items()
    others = [o["metadata"]["labels"] for o in objects if o["kind"] == "Pod"]
    others += [o["spec"]["template"]["metadata"]["labels"] for o in objects if o["kind"] == "Job"]
    for other in others:  # the helm test pod and the drain Job are no relays to the Service, PDB or spread
        assert not selectors[0].items() <= other.items()
    monitor = _one(objects, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= _one(objects, "Service")["metadata"]["labels"].items()
    job = _one(objects, "Service")["metadata"]["labels"][monitor["jobLabel"]]
    assert job == "mytpe-relay"  # the alerts and the dashboard select job="mytpe-relay"
    (group,) = _one(objects, "PrometheusRule")["spec"]["groups"]
    assert all('job="mytpe-relay"' in rule["expr"] for rule in group["rules"])


MTLS_AND_REDIS_TLS = (
    "config.RELAY_KAFKA_SECURITY_PROTOCOL=SSL",
    "kafka.ca.secretName=kafka-cluster-ca-cert",
    "kafka.clientCert.secretName=mytpe-relay-tls",
    "kafka.clientCert.keyPasswordKey=key-password",
    "dedupe.ca.secretName=redis-ca",
    "dedupe.clientCert.secretName=redis-client",
    "mytpeApi.secretName=mytpe-api",
)
OAUTHBEARER = (
    "config.RELAY_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
    "config.RELAY_KAFKA_SASL_MECHANISM=OAUTHBEARER",
    "kafka.oauthToken.secretName=kafka-token",
)


@pytest.mark.parametrize("sets", [MTLS_AND_REDIS_TLS, OAUTHBEARER], ids=["mtls-rediss-api", "oauthbearer"])
def test_every_secret_reference_is_a_directory_mount_the_relay_accepts(sets: tuple[str, ...]) -> None:
    """Kafka mTLS (with an encrypted key), Redis TLS with a client certificate, MyTPE's API credentials, an
    OAUTHBEARER token: each a Secret mounted as a directory, its file variable set, and the relay starts on it."""
    objects = render_chart(None, *sets)
    for obj in objects:
        if obj["kind"] not in OPERATOR_KINDS:
            kubernetes_validate.validate(obj, "1.30.0", strict=True)
    container = _container(objects)
    settings = _settings(objects, container, RELAY_DEDUPE_URL="rediss://redis:6380/0")
    volumes = {v["name"]: v for v in _pod(objects)["volumes"]}
    mounted = {
        volumes[m["name"]]["secret"]["secretName"] for m in container["volumeMounts"] if "secret" in volumes[m["name"]]
    }
    named = {item.split("=", 1)[1] for item in sets if ".secretName=" in item}
    assert mounted == named
    assert settings.kafka_security.files(), "no Kafka credential file in use"


def test_the_chart_installs_the_relays_own_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == __version__
    assert _container(render_chart(None))["image"].endswith(f":{__version__}")


TRACING_ON = ("tracing.enabled=true",)


def _egress_ports(objects: Objects) -> set[int]:
    rules = _one(objects, "NetworkPolicy")["spec"]["egress"]
    return {p["port"] for rule in rules for p in rule["ports"] if p["protocol"] == "TCP"}


def _otel(objects: Objects) -> dict[str, str]:
    return {name: value for name, value in _config(objects).items() if name.startswith("OTEL_")}


def test_tracing_is_off_by_default_and_set_from_the_tracing_values_only() -> None:
    objects = render_chart(None)
    assert _otel(objects) == {
        "OTEL_SDK_DISABLED": "true",
        "OTEL_SERVICE_NAME": "mytpe-relay",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability.svc:4318",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
    }
    assert 4318 not in _egress_ports(objects)
    assert not [e for e in _container(objects).get("env", []) if e["name"].startswith("OTEL_")]
    assert not TracingConfig.from_env(_otel(objects)).enabled


def test_mytpe_api_credentials_open_https_out() -> None:
    """Review finding: with `mytpeApi.secretName` the chart mounted the credentials but its NetworkPolicy kept
    443 closed, so every drift check failed (MytpeRelayDriftChecksFailing)."""
    assert 443 not in _egress_ports(render_chart(None))
    opened = _egress_ports(render_chart(None, "mytpeApi.secretName=mytpe-api"))
    assert 443 in opened and {9092, 9093, 6379} <= opened
    # review: `has` compared an int with the values' float, so a port listed already was opened twice
    listed = render_chart(None, "mytpeApi.secretName=mytpe-api", "networkPolicy.egressPorts={9092,443}")
    rules = _one(listed, "NetworkPolicy")["spec"]["egress"]
    assert [p["port"] for rule in rules for p in rule["ports"] if p["protocol"] == "TCP"] == [53, 9092, 443]


def test_tracing_on_sets_the_variables_and_opens_the_collectors_port() -> None:
    sets = (*TRACING_ON, "tracing.endpoint=https://otlp.example.com", "tracing.sampleRatio=0.05")
    objects = render_chart("spool", *sets, "tracing.serviceName=relay-eu", "tracing.headersSecret.secretName=otlp")
    otel = _otel(objects)
    assert (otel["OTEL_SDK_DISABLED"], otel["OTEL_SERVICE_NAME"]) == ("false", "relay-eu")
    assert otel["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://otlp.example.com"
    assert otel["OTEL_TRACES_SAMPLER_ARG"] == "0.05"
    tracing = TracingConfig.from_env(otel)
    assert (tracing.enabled, tracing.ratio, tracing.endpoint) == (True, 0.05, "https://otlp.example.com/v1/traces")
    assert 443 in _egress_ports(objects)
    assert _egress_ports(render_chart(None, *TRACING_ON, "tracing.endpoint=http://collector:4318/")) >= {4318}
    assert _egress_ports(render_chart(None, *TRACING_ON, "tracing.endpoint=http://collector")) >= {80}
    assert _egress_ports(render_chart(None, *TRACING_ON, "tracing.endpoint=https://[fd00::1]/otlp")) >= {443}
    assert _egress_ports(render_chart(None, *TRACING_ON, "tracing.endpoint=http://[fd00::1]:4318")) >= {4318}
    headers = {"name": "otlp", "key": "otlp-headers"}  # a backend's token: from a Secret, never the ConfigMap
    for container in (_container(objects), _one(objects, "Pod")["spec"]["containers"][0]):
        (env,) = [e for e in container["env"] if e["name"] == "OTEL_EXPORTER_OTLP_HEADERS"]
        assert env["valueFrom"]["secretKeyRef"] == headers
    for obj in objects:
        if obj["kind"] not in OPERATOR_KINDS:
            kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_tracing_on_renders_what_the_kustomize_tracing_component_renders(tmp_path: Path) -> None:
    relative = {name: os.path.relpath(ROOT / "deploy/k8s" / name, tmp_path) for name in ("base", "components/tracing")}
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{relative['base']}]\ncomponents: [{relative['components/tracing']}]\n",
        encoding="utf-8",
    )
    done = run(require_tool("kubectl"), "kustomize", str(tmp_path))
    assert done.returncode == 0, done.stderr
    kustomize = tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)
    chart = render_chart(None, *BASE_SETUP, *TRACING_ON)
    for shape in (_workload, _around):
        found = differences(shape(chart), shape(kustomize), KNOWN_DIFFERENCES | HPA_OWNS_REPLICAS)
        assert not found, "the chart and kustomize differ:\n" + "\n".join(found)
    assert _otel(chart)["OTEL_SDK_DISABLED"] == "false"


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        ("tracing.sampleRatio=2", "/tracing/sampleRatio"),
        ("tracing.endpoint=http://user:token@collector:4318", "/tracing/endpoint"),
        ("tracing.endpoint=collector:4318", "/tracing/endpoint"),
        ("tracing.enpoint=http://collector:4318", "additional properties 'enpoint' not allowed"),
        ("tracing.serviceName=", "/tracing/serviceName"),
    ],
)
def test_the_schema_refuses_a_wrong_tracing_value(setting: str, refusal: str) -> None:
    done = helm_template("--set", setting)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert refusal in done.stderr, done.stderr


def test_extra_env_cannot_set_a_tracing_variable() -> None:
    """The `tracing` values are the one place: an OTEL_* in extraEnv would win over the ConfigMap unseen."""
    done = helm_template("--set", "extraEnv[0].name=OTEL_TRACES_SAMPLER_ARG", "--set-string", "extraEnv[0].value=1")
    assert done.returncode != 0
    assert "extraEnv: OTEL_TRACES_SAMPLER_ARG is a tracing setting" in done.stderr, done.stderr
