"""The Dockerfile (parsed by Docker's own parser), .dockerignore, and the compose file (docker compose)."""

from __future__ import annotations

import json
import re
from typing import Any

import dockerfile
from localkafka import DEFAULT_VERSION

from tests.conftest import require_tool
from tests.deploy.tools import DEPLOY, ROOT, compose_command, run


def _stages() -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(DEPLOY / "Dockerfile")):
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def _one(stage: list[dockerfile.Command], cmd: str) -> dockerfile.Command:
    (found,) = [c for c in stage if c.cmd == cmd]
    return found


def test_the_image_runs_as_a_numeric_non_root_user_with_an_exec_form_entrypoint() -> None:
    runtime = _stages()[-1]
    user = _one(runtime, "USER").value[0]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, user
    entrypoint = _one(runtime, "ENTRYPOINT")
    assert entrypoint.json and entrypoint.value == ("mytpe-relay",)
    assert _one(runtime, "CMD").value == ("serve",)
    healthcheck = _one(runtime, "HEALTHCHECK")
    assert healthcheck.value[0] == "CMD" and "/healthz" in healthcheck.original
    assert _one(runtime, "STOPSIGNAL").value == ("SIGTERM",)


def test_the_base_image_is_pinned_to_an_exact_release() -> None:
    args = [c for c in dockerfile.parse_file(str(DEPLOY / "Dockerfile")) if c.cmd == "ARG"]
    (base,) = [a.value[0].split("=", 1)[1] for a in args if a.value[0].startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
    assert [stage[0].value[0] for stage in _stages()] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    """.dockerignore excludes everything, then lets back exactly what the Dockerfile copies."""
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    copies = [c for stage in _stages() for c in stage if c.cmd == "COPY" and not any("--from" in f for f in c.flags)]
    sources = [src for c in copies for src in c.value[:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is excluded by .dockerignore"
    assert ".venv" not in allowed and ".cache" not in allowed


def _compose() -> dict[str, Any]:
    done = run(*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_docker_compose_config_accepts_the_compose_file() -> None:
    services = _compose()["services"]
    assert set(services) == {"kafka", "topics", "redis", "relay", "prometheus", "grafana"}
    relay = services["relay"]
    assert relay["build"]["dockerfile"] == "deploy/Dockerfile"
    assert relay["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert relay["environment"]["RELAY_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert relay["read_only"] is True
    # review: nothing called /readyz in this stack, so mytpe_relay_ready stayed 0 and MytpeRelayNotReady fired
    assert "/readyz" in " ".join(relay["healthcheck"]["test"])
    topics_script = " ".join(services["topics"]["command"])
    for topic in ("mytpe.transaction", "mytpe.pay_link", "mytpe.dlq"):
        assert topic in topics_script
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            assert (ROOT / volume["source"]).exists(), volume["source"]
    assert services["kafka"]["image"] == f"apache/kafka:{DEFAULT_VERSION}", "the Kafka the suite runs by default"


def test_docker_compose_config_rejects_a_broken_file(tmp_path: Any) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  relay:\n    image: x\n    restart_policy: always\n", encoding="utf-8")
    done = run(*compose_command(), "-f", str(broken), "config")
    assert done.returncode != 0
    assert "restart_policy" in done.stderr


def test_the_compose_prometheus_config_passes_promtool(tmp_path: Any) -> None:
    """promtool resolves rule_files from the container path; point it at the repository's file."""
    config = (DEPLOY / "prometheus/prometheus.yml").read_text(encoding="utf-8")
    local = config.replace("/etc/prometheus/alerts.yml", str(DEPLOY / "prometheus/alerts.yml"))
    assert local != config
    (tmp_path / "prometheus.yml").write_text(local, encoding="utf-8")
    done = run(require_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
