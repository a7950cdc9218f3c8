"""The image's build and run steps, executed here (no Docker engine runs on these machines): the build
context that .dockerignore lets through installs with the Dockerfile's pip command, the installed
entrypoint serves, logs JSON lines, and the HEALTHCHECK command tells a live relay from a dead one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import dockerfile
import orjson
import pytest

from tests.deploy.tools import DEPLOY, ROOT
from tests.helpers import SECRET
from tests.servers import free_port, wait_ready

pytestmark = pytest.mark.integration


def _runtime_and_build() -> tuple[list[dockerfile.Command], list[dockerfile.Command]]:
    commands = list(dockerfile.parse_file(str(DEPLOY / "Dockerfile")))
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    return commands[starts[1] :], commands[starts[0] : starts[1]]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv built like the image's /opt/relay, from only what the build stage COPYs."""
    context = tmp_path_factory.mktemp("context")
    _, build = _runtime_and_build()
    for copy in (c for c in build if c.cmd == "COPY"):
        *sources, destination = copy.value
        for source in sources:
            target = context / (source if destination.endswith("/") or destination == "./" else destination)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    (run,) = [c for c in build if c.cmd == "RUN"]
    assert "pip install -c requirements/constraints.txt '.[otel]'" in run.value[0]
    venv = context / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "-c", "requirements/constraints.txt"]
    done = subprocess.run([*pip, ".[otel]"], cwd=context, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def test_the_installed_entrypoint_serves_logs_json_and_passes_its_healthcheck(installed: Path, kafka: Any) -> None:
    runtime, _ = _runtime_and_build()
    env_line = next(c for c in runtime if c.cmd == "ENV")
    image_env = dict(zip(env_line.value[::2], env_line.value[1::2], strict=True))
    assert image_env["RELAY_LOG_FORMAT"] == "json"
    healthcheck = next(c for c in runtime if c.cmd == "HEALTHCHECK")
    probe = [str(installed / "bin/python"), *list(healthcheck.value[1:])[1:]]  # CMD ["python", ...]
    assert healthcheck.value[1] == "python"
    port = free_port()
    env = {
        "PATH": f"{installed / 'bin'}:{os.environ['PATH']}",
        "RELAY_LOG_FORMAT": image_env["RELAY_LOG_FORMAT"],
        "RELAY_PORT": str(port),
        "RELAY_HOST": "127.0.0.1",
        "RELAY_MYTPE_SECRETS": SECRET,
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "RELAY_SHUTDOWN_DELAY_SECONDS": "0",
    }
    entrypoint = next(c for c in runtime if c.cmd == "ENTRYPOINT").value
    command = next(c for c in runtime if c.cmd == "CMD").value
    relay = subprocess.Popen([*entrypoint, *command], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", relay, why_exited=lambda: relay.stderr.read() if relay.stderr else "")
        alive = subprocess.run(probe, env=env, capture_output=True, timeout=10, check=False)
        assert alive.returncode == 0, alive.stderr
    finally:
        relay.send_signal(signal.SIGTERM)
        _, stderr = relay.communicate(timeout=60)
    assert relay.returncode == 0, stderr[-2000:]
    lines = [orjson.loads(line) for line in stderr.splitlines()]
    messages = [line["msg"] for line in lines]
    assert any(m.startswith("relay ready: topics") for m in messages)
    assert any(m.startswith("relay stopped") for m in messages)
    assert {line["level"] for line in lines} <= {"info", "warning", "error"}
    assert all(SECRET not in line for line in stderr.splitlines())
    dead = subprocess.run(probe, env=env, capture_output=True, timeout=10, check=False)
    assert dead.returncode != 0


def test_the_installed_package_carries_the_json_schemas(installed: Path) -> None:
    code = "from relay import schemas; print(schemas.__file__, *schemas.names()); schemas.load(schemas.ENVELOPE)"
    done = subprocess.run(
        [str(installed / "bin/python"), "-I", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    location, *names = done.stdout.split()
    assert location.startswith(str(installed)), "-I: the installed copy, not the checkout"
    assert names == sorted(p.name for p in (ROOT / "relay/schemas").glob("*.json"))
