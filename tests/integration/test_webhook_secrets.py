"""The webhook commands when MyTPE's answer holding a one-time secret is lost or its request applied late,
and when the sources file cannot take the new secret: against the sandbox process and a real relay.

What must hold at the end: MyTPE signs with the secret the sources file holds (its masked secret ends
like it, and deliveries verify), one endpoint per source, nothing lost or doubled in Kafka, and a
secret the file could not take printed once on stderr."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from localkafka import LocalKafka

from relay.mytpe.masks import masked_matches
from tests.faults.harness import RelayProcess
from tests.integration.test_webhook_commands import (
    PLACEHOLDER,
    _settled,
    cli,
    kafka_ids,
    metric,
    relay_for,
    sandbox,
    wait_for,
    write_sources,
)
from tests.servers import SANDBOX_INSTANCE as INSTANCE
from tests.servers import SandboxProcess, start_sandbox

pytestmark = pytest.mark.integration
__all__ = ["relay_for", "sandbox"]  # fixtures, used by name
LEGACY = f"/api/v2/mytpe-pay/{INSTANCE}/webhook"
SHORT = {"RELAY_MYTPE_API_TIMEOUT_SECONDS": "0.5"}  # the client gives up long before the sandbox answers


@pytest.fixture
def paced_sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """Retries 2 s then 4 s apart (MyTPE: 4 s, 8 s): a delivery outlives a second of unknown secret."""
    started = start_sandbox(tmp_path, "--backoff", "2")
    yield started
    started.process.kill()
    started.process.wait(10)


def installed(file: Path) -> list[str]:
    secrets: list[str] = yaml.safe_load(file.read_text())["sources"][0]["secrets"]
    return secrets


def masked(sandbox: SandboxProcess) -> str:
    value: str = sandbox.api("GET", LEGACY)["data"]["webhook_secret"]
    return value


def all_delivered(sandbox: SandboxProcess, hook: str, count: int) -> None:
    """`count` new deliveries from MyTPE to the relay all succeed: MyTPE signs with a secret the relay has."""
    made = set(sandbox.control("/sandbox/emit", {"hook": hook, "count": count, "rate": 50, "seed": 99})["deliveries"])
    wait_for(lambda: _settled(sandbox), 30, "deliveries settled")
    states = {d["id"]: d["status"] for d in sandbox.control("/sandbox/attempts")["deliveries"] if d["id"] in made}
    assert set(states.values()) == {"succeeded"}, states


def test_register_after_its_answer_is_lost_installs_the_secret_mytpe_signs_with(
    sandbox: SandboxProcess, relay_for: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    file = tmp_path / "sources.yaml"
    write_sources(file, sandbox, secrets=[PLACEHOLDER])
    relay = relay_for()
    sandbox.control("/sandbox/faults", {"lose_next": 1, "match": f"PUT {LEGACY}", "stall_seconds": 3})
    done = cli({**relay.env, **SHORT}, "register")
    assert done.returncode == 0, done.stdout + done.stderr
    assert masked_matches(masked(sandbox), installed(file)[0]), done.stdout
    assert "whsec_" not in done.stdout + done.stderr
    wait_for(lambda: metric(relay, "mytpe_relay_config_generation") >= 2, 10, "the secret loaded")
    all_delivered(sandbox, INSTANCE, 5)


def test_register_ext_after_its_answer_is_lost_makes_one_endpoint(
    sandbox: SandboxProcess, relay_for: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    file = tmp_path / "sources.yaml"
    write_sources(file, sandbox, secrets=[PLACEHOLDER], api="ext")
    relay = relay_for()
    sandbox.control("/sandbox/faults", {"lose_next": 1, "match": "POST /api/ext/webhooks", "stall_seconds": 3})
    done = cli({**relay.env, **SHORT}, "register")
    assert done.returncode == 0, done.stdout + done.stderr
    listed = sandbox.api("GET", "/api/ext/webhooks")["data"]
    ours = [e for e in listed if e["url"] == f"{relay.url}/webhooks/mytpe/shop"]
    assert len(ours) == 1, ours
    assert yaml.safe_load(file.read_text())["sources"][0]["mytpe"]["webhook_id"] == ours[0]["id"]
    wait_for(lambda: metric(relay, "mytpe_relay_config_generation") >= 2, 10, "the secret loaded")
    all_delivered(sandbox, ours[0]["id"], 5)


@pytest.mark.parametrize(
    "fault",
    [
        {"stall_next": 1, "stall_seconds": 4},  # applied late, after the client gave up
        {"lose_next": 1, "stall_seconds": 4},  # applied, its answer lost
        {"lose_next": 1, "lose_status": 504},  # applied, a gateway answers 504
    ],
    ids=["applied-late", "answer-lost", "gateway-504"],
)
async def test_rotate_under_load_when_the_regenerate_answer_is_lost(
    kafka: LocalKafka,
    paced_sandbox: SandboxProcess,
    relay_for: Callable[..., RelayProcess],
    tmp_path: Path,
    fault: dict[str, Any],
) -> None:
    sandbox = paced_sandbox
    file = tmp_path / "sources.yaml"
    write_sources(file, sandbox, secrets=[PLACEHOLDER])
    relay = relay_for()
    assert cli(relay.env, "register").returncode == 0
    wait_for(lambda: metric(relay, "mytpe_relay_config_generation") >= 2, 10, "the registered secret loaded")
    first = installed(file)[0]
    made = sandbox.control("/sandbox/emit", {"hook": INSTANCE, "count": 300, "rate": 20})["deliveries"]
    await asyncio.sleep(2)
    sandbox.control("/sandbox/faults", {**fault, "match": "regenerate-secret"})
    rotated = cli({**relay.env, **SHORT}, "rotate", "--relay-url", relay.url, "--verify-timeout", "60")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    await asyncio.sleep(5)  # past the fault: a late request has landed by now
    secrets = installed(file)
    assert secrets[0] != first and secrets[1] == first
    assert masked_matches(masked(sandbox), secrets[0]), "MyTPE signs with a secret the relay does not hold"
    wait_for(lambda: sandbox.control("/sandbox/attempts")["attempts"] >= len(made) and _settled(sandbox), 60, "sent")
    for _ in range(30):  # bounded: parked deliveries are relayed within a second of the reload
        seen = await kafka_ids(kafka, relay)
        if all(seen[i] for i in made):
            break
        await asyncio.sleep(1)
    assert [i for i in made if seen[i] == 0] == [], "lost"
    assert [i for i in made if seen[i] > 1] == [], "duplicated"
    assert secrets[0] not in rotated.stdout + rotated.stderr


def test_a_sources_file_that_cannot_take_the_new_secret_gets_it_printed_once(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    file = tmp_path / "sources.yaml"
    write_sources(file, sandbox, secrets=[PLACEHOLDER])
    env = {"PATH": "/usr/bin:/bin", "RELAY_SOURCES_FILE": str(file), "RELAY_PUBLIC_URL": "https://h.example"}
    env.update(RELAY_MYTPE_API_KEY="sandbox-key", RELAY_MYTPE_API_SECRET="sandbox-secret")
    assert cli(env, "register").returncode == 0
    sandbox.control("/sandbox/faults", {"stall_next": 1, "stall_seconds": 2, "match": "regenerate-secret"})
    command = [sys.executable, "-m", "relay", "webhook", "rotate", "--source", "shop", "--allow-http"]
    running = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: "rotation_window_until" in file.read_text(), 20, "the window opened")
    file.write_text("sources: [ {name: shop, secrets: [unclosed\n")  # someone's broken edit, meanwhile
    stdout, stderr = running.communicate(timeout=60)
    assert running.returncode == 3, stdout + stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    (secret,) = [word for word in stderr.split() if word.startswith("whsec_")]
    assert masked_matches(masked(sandbox), secret) and stderr.count(secret) == 1
    assert secret not in stdout


def relay_with_credential_files(
    sandbox: SandboxProcess,
    relay_for: Callable[..., RelayProcess],
    *,
    key: Path,
    key_text: str,
    secret: Path,
    secret_text: str,
) -> RelayProcess:
    """A relay whose shared MyTPE API credentials are files (as a mounted Secret), drift-checked every second."""
    write_sources(key.parent / "sources.yaml", sandbox, secrets=[PLACEHOLDER])
    key.write_text(key_text + "\n")
    secret.write_text(secret_text + "\n")
    return relay_for(
        RELAY_MYTPE_API_KEY="",
        RELAY_MYTPE_API_SECRET="",
        RELAY_MYTPE_API_KEY_FILE=str(key),
        RELAY_MYTPE_API_SECRET_FILE=str(secret),
        RELAY_MYTPE_DRIFT_CHECK_SECONDS="1",
    )


def test_shared_api_credential_files_are_read_when_needed(
    sandbox: SandboxProcess, relay_for: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """RELAY_MYTPE_API_KEY_FILE and …_SECRET_FILE rotated under a running relay: its next drift check uses them."""
    key, secret = tmp_path / "api-key", tmp_path / "api-secret"
    relay = relay_with_credential_files(
        sandbox, relay_for, key=key, key_text="old-key", secret=secret, secret_text="old-secret"
    )
    failed = 'mytpe_relay_drift_checks_total{result="error",source="shop"}'
    wait_for(lambda: metric(relay, failed) >= 1, 15, "a check refused with the old credentials")
    key.write_text("sandbox-key\n")  # the credentials rotated, as a mounted Secret would be
    secret.write_text("sandbox-secret\n")
    answered = 'mytpe_relay_drift_checks_total{result="drift",source="shop"}'  # unregistered: drift, not error
    wait_for(lambda: metric(relay, answered) >= 1, 20, "a check answered with the new credentials")
    assert "sandbox-secret" not in relay.log.read_text() and "old-secret" not in relay.log.read_text()


def test_register_ext_keeps_the_sources_endpoint_when_another_has_its_url(
    sandbox: SandboxProcess, relay_for: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """Two endpoints for the source's URL (one left by a POST applied late): register keeps the one the
    source names, and the secret it signs with."""
    file = tmp_path / "sources.yaml"
    write_sources(file, sandbox, secrets=[PLACEHOLDER], api="ext")
    relay = relay_for()
    url = f"{relay.url}/webhooks/mytpe/shop"
    stray = sandbox.api("POST", "/api/ext/webhooks", {"url": url, "events": []})["data"]
    ours = sandbox.api("POST", "/api/ext/webhooks", {"url": url, "events": []})["data"]
    write_sources(file, sandbox, secrets=[ours["secret"]], api="ext", webhook_id=ours["id"])
    wait_for(lambda: metric(relay, "mytpe_relay_config_generation") >= 2, 10, "the source's secret loaded")
    done = cli(relay.env, "register")
    assert done.returncode == 0, done.stdout + done.stderr
    entry = yaml.safe_load(file.read_text())["sources"][0]
    assert entry["mytpe"]["webhook_id"] == ours["id"], done.stdout
    assert entry["secrets"][0] == ours["secret"], done.stdout
    assert stray["id"] in done.stdout  # the operator is told about the other endpoint
    all_delivered(sandbox, ours["id"], 5)


def test_register_ext_refuses_when_several_endpoints_have_its_url_and_none_is_the_sources(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    file = tmp_path / "sources.yaml"
    url = "https://h.example/webhooks/mytpe/shop"
    made = [sandbox.api("POST", "/api/ext/webhooks", {"url": url, "events": []})["data"] for _ in range(2)]
    write_sources(file, sandbox, secrets=[made[1]["secret"]], api="ext")
    before = file.read_text()
    env = {"PATH": "/usr/bin:/bin", "RELAY_SOURCES_FILE": str(file), "RELAY_PUBLIC_URL": "https://h.example"}
    env.update(RELAY_MYTPE_API_KEY="sandbox-key", RELAY_MYTPE_API_SECRET="sandbox-secret")
    done = cli(env, "register")
    assert done.returncode == 3, done.stdout + done.stderr
    assert made[0]["id"] in done.stderr and made[1]["id"] in done.stderr and "Traceback" not in done.stderr
    assert file.read_text() == before


@pytest.mark.parametrize(
    "content",
    [b"sandbox-key\nTOPSECRET-API-KEY-PART\n", b"TOPSECRET-API-KEY-PART\xff\n"],
    ids=["inner-newline", "not-utf8"],
)
def test_a_malformed_credential_file_is_one_line_without_the_credential(
    sandbox: SandboxProcess, tmp_path: Path, content: bytes
) -> None:
    file = tmp_path / "sources.yaml"
    write_sources(file, sandbox, secrets=[PLACEHOLDER])
    key = tmp_path / "api-key"
    key.write_bytes(content)
    env = {"PATH": "/usr/bin:/bin", "RELAY_SOURCES_FILE": str(file), "RELAY_PUBLIC_URL": "https://h.example"}
    env.update(RELAY_MYTPE_API_KEY_FILE=str(key), RELAY_MYTPE_API_SECRET="sandbox-secret")
    done = cli(env, "status")
    assert done.returncode in (2, 3), done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "TOPSECRET" not in done.stdout + done.stderr and "api key" in done.stderr.lower().replace("_", " ")


def test_the_drift_check_survives_a_malformed_credential_file(
    sandbox: SandboxProcess, relay_for: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    key, secret = tmp_path / "api-key", tmp_path / "api-secret"
    relay = relay_with_credential_files(
        sandbox,
        relay_for,
        key=key,
        key_text="sandbox-key\nTOPSECRET-API-KEY-PART",
        secret=secret,
        secret_text="sandbox-secret",
    )
    failed = 'mytpe_relay_drift_checks_total{result="error",source="shop"}'
    wait_for(lambda: metric(relay, failed) >= 1, 15, "a check failed on the malformed key")
    key.write_text("sandbox-key\n")  # fixed, as a mounted Secret would be
    answered = 'mytpe_relay_drift_checks_total{result="drift",source="shop"}'
    wait_for(lambda: metric(relay, answered) >= 1, 30, "the drift check still runs, with the fixed key")
    assert "TOPSECRET" not in relay.log.read_text()


def _previous_becomes_a_directory(file: Path) -> None:
    previous = file.with_name(file.name + ".previous")
    previous.unlink(missing_ok=True)
    previous.mkdir()


def test_rotate_that_cannot_open_the_window_is_one_line_and_regenerates_nothing(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    file = tmp_path / "sources.yaml"
    write_sources(file, sandbox, secrets=[PLACEHOLDER])
    env = {"PATH": "/usr/bin:/bin", "RELAY_SOURCES_FILE": str(file), "RELAY_PUBLIC_URL": "https://h.example"}
    env.update(RELAY_MYTPE_API_KEY="sandbox-key", RELAY_MYTPE_API_SECRET="sandbox-secret")
    assert cli(env, "register").returncode == 0
    before = masked(sandbox)
    _previous_becomes_a_directory(file)
    done = cli(env, "rotate")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert "nothing regenerated" in done.stderr
    assert masked(sandbox) == before


def test_rotate_that_cannot_close_the_window_says_so_in_one_line(
    sandbox: SandboxProcess, relay_for: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    file = tmp_path / "sources.yaml"
    write_sources(file, sandbox, secrets=[PLACEHOLDER])
    relay = relay_for()
    assert cli(relay.env, "register").returncode == 0
    sandbox.control("/sandbox/emit", {"hook": INSTANCE, "count": 600, "rate": 20})
    command = [sys.executable, "-m", "relay", "webhook", "rotate", "--source", "shop", "--allow-http"]
    command += ["--relay-url", relay.url, "--verify-timeout", "60"]
    env = {**relay.env, "PYTHONUNBUFFERED": "1"}
    running = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert running.stdout is not None
    lines = []
    for line in running.stdout:  # bounded by the command's own timeouts
        lines.append(line)
        if line.startswith("3. "):
            _previous_becomes_a_directory(file)
            break
    stdout, stderr = running.communicate(timeout=120)
    assert running.returncode == 1, "".join(lines) + stdout + stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert "closes by itself" in stderr
    assert masked_matches(masked(sandbox), installed(file)[0])


def test_rotate_writes_the_window_end_again_when_it_installs_the_secret(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """The window counts from the install, not from step 1: a slow regeneration does not eat into it."""
    file = tmp_path / "sources.yaml"
    write_sources(file, sandbox, secrets=[PLACEHOLDER])
    env = {"PATH": "/usr/bin:/bin", "RELAY_SOURCES_FILE": str(file), "RELAY_PUBLIC_URL": "https://h.example"}
    env.update(RELAY_MYTPE_API_KEY="sandbox-key", RELAY_MYTPE_API_SECRET="sandbox-secret", **SHORT)
    assert cli(env, "register").returncode == 0
    sandbox.control("/sandbox/faults", {"stall_next": 1, "stall_seconds": 4, "match": "regenerate-secret"})
    started = datetime.now(UTC)
    done = cli(env, "rotate", "--window-minutes", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    until = yaml.safe_load(file.read_text())["sources"][0]["rotation_window_until"]
    assert datetime.fromisoformat(str(until).replace("Z", "+00:00")) >= started + timedelta(minutes=10, seconds=3)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])  # SIGHUP: tests/ops
def test_a_stop_while_the_regenerate_call_is_in_flight_loses_no_secret(
    sandbox: SandboxProcess, tmp_path: Path, signum: signal.Signals
) -> None:
    """A stop while MyTPE takes 3 s to answer regenerate-secret: the command lets that call finish, so the secret
    MyTPE made ends in the file (or printed once on stderr), then stops. Review finding: only Ctrl-C was handled;
    SIGTERM (a CI job cancelled) or SIGHUP (its terminal closed) killed the command at once, so a regeneration
    MyTPE was applying left a secret nobody held. They now stop it as Ctrl-C does (exit 128 + the signal)."""
    file = tmp_path / "sources.yaml"
    write_sources(file, sandbox, secrets=[PLACEHOLDER])
    env = {"PATH": "/usr/bin:/bin", "RELAY_SOURCES_FILE": str(file), "RELAY_PUBLIC_URL": "https://h.example"}
    env.update(RELAY_MYTPE_API_KEY="sandbox-key", RELAY_MYTPE_API_SECRET="sandbox-secret")
    assert cli(env, "register").returncode == 0
    sandbox.control("/sandbox/faults", {"stall_next": 1, "stall_seconds": 3, "match": "regenerate-secret"})
    command = [sys.executable, "-m", "relay", "webhook", "rotate", "--source", "shop", "--allow-http"]
    running = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: "rotation_window_until" in file.read_text(), 20, "the window opened")
    time.sleep(1)  # the regenerate request is with MyTPE, its answer 2 s away
    running.send_signal(signum)
    stdout, stderr = running.communicate(timeout=60)
    assert running.returncode == 128 + signum, stdout + stderr  # Ctrl-C: 130, as the CLI answers it
    assert "Traceback" not in stderr
    if signum != signal.SIGINT:
        assert f"stopped by {signum.name}" in stderr
    time.sleep(3)  # past the stall: the regeneration is applied whatever the command did
    held = [*installed(file), *(w for w in stderr.split() if w.startswith("whsec_"))]
    assert any(masked_matches(masked(sandbox), s) for s in held), "MyTPE signs with a secret nobody holds"


def test_a_drift_check_mytpe_does_not_answer_does_not_hold_the_exit(
    sandbox: SandboxProcess, relay_for: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """Carried in the closing notes as "a MyTPE API call in flight holds the exit": the drift check's call ran
    in asyncio's default executor, whose threads the process waits for before it exits, for up to the API
    timeout per read (300 s here; a server trickling its answer would hold it longer). Now each call has a
    daemon thread of its own: the exit is the stop sequence's, and the call's answer, if any, is dropped."""
    write_sources(tmp_path / "sources.yaml", sandbox, secrets=[PLACEHOLDER])
    sandbox.control("/sandbox/faults", {"stall_next": 1, "stall_seconds": 900, "match": "GET"})
    relay = relay_for(RELAY_MYTPE_DRIFT_CHECK_SECONDS="1", RELAY_MYTPE_API_TIMEOUT_SECONDS="300")
    wait_for(lambda: sandbox.control("/sandbox/faults", {})["stall_next"] == 0, 30, "a drift check's call is held")
    assert relay.process is not None and relay.process.poll() is None  # alive at SIGTERM, its call held
    assert relay.stop(timeout=60) == 0  # it waited out the 300 s before: `wait` raised TimeoutExpired
