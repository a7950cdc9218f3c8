"""The console script as operators run it: real processes, real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SECRET
from tests.integration.conftest import free_port
from tests.servers import wait_ready
from tests.vectors import VECTORS

pytestmark = pytest.mark.integration
RELAY = [sys.executable, "-m", "relay"]


def relay_env(bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        RELAY_MYTPE_SECRETS=SECRET,
        RELAY_TOPIC_PREFIX=prefix,
        RELAY_HOST="127.0.0.1",
        RELAY_PUBLISH_TIMEOUT_SECONDS="5",
    )
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RELAY, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def served(kafka, tmp_path: Path) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[str]]]:
    port = free_port()
    env = relay_env(kafka.bootstrap, f"cli{port}", RELAY_PORT=str(port), RELAY_SHUTDOWN_DELAY_SECONDS="120")
    process = subprocess.Popen([*RELAY, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, why_exited=lambda: process.stderr.read() if process.stderr else "")
        yield url, env, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_send_all_then_tail_shows_every_event(served) -> None:
    url, env, _ = served
    sent = run(["send", "all", "--url", f"{url}/webhooks/mytpe"], env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    lines = sent.stdout.splitlines()
    assert len(lines) == 12
    assert all(line.startswith("200 ") and '"accepted"' in line for line in lines)
    tailed = run(["tail", "--from-beginning", "--max", "12", "--timeout", "40"], env)
    assert tailed.returncode == 0, tailed.stderr
    assert tailed.stdout.count("type: app.mytpe.pay.") == 12
    assert "type: app.mytpe.pay.pay_link.deleted" in tailed.stdout


def test_send_with_one_delivery_id_twice_is_a_duplicate(served) -> None:
    url, env, _ = served
    result = run(
        [
            "send",
            "transaction.completed",
            "--url",
            f"{url}/webhooks/mytpe",
            "--count",
            "2",
            "--delivery-id",
            "cli-dup-1",
        ],
        env,
    )
    assert result.returncode == 0
    assert ['"accepted"' in result.stdout.splitlines()[0], '"duplicate"' in result.stdout.splitlines()[1]] == [
        True,
        True,
    ]


def test_send_reports_a_rejection_with_a_non_zero_exit(served) -> None:
    url, env, _ = served
    result = run(["send", "pay_link.created", "--url", f"{url}/webhooks/mytpe", "--secret", "whsec_wrong"], env)
    assert result.returncode == 1
    assert result.stdout.startswith("401 ") and "bad_signature" in result.stdout


def test_check_passes_against_the_broker(served) -> None:
    _, env, _ = served
    result = run(["check"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kafka: ok" in result.stdout
    assert result.stdout.strip().endswith("ready")


def readiness(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:  # noqa: S310 - loopback http
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_sigterm_turns_readiness_false_first_then_drains_and_exits_zero(served) -> None:
    url, env, process = served
    assert run(["send", "transaction.pending", "--url", f"{url}/webhooks/mytpe"], env).returncode == 0
    process.send_signal(signal.SIGTERM)
    # The delay (120 s) outlasts any wait here; the second SIGTERM ends it. No step races a clock.
    deadline = time.monotonic() + 30
    while (answer := readiness(url))[0] != 503:
        assert time.monotonic() < deadline and process.poll() is None, answer
        time.sleep(0.05)
    assert '"stopping":true' in answer[1]
    during = run(["send", "transaction.completed", "--url", f"{url}/webhooks/mytpe"], env)
    assert during.returncode == 0, during.stdout  # still serving while the load balancer catches up
    assert process.poll() is None  # still in the delay
    process.send_signal(signal.SIGTERM)  # a second SIGTERM skips the rest of the delay
    assert process.wait(timeout=30) == 0
    _, stderr = process.communicate(timeout=5)
    assert "relay stopped: accepted=2" in stderr
    assert SECRET not in stderr


def test_serve_without_kafka_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    env = relay_env(dead, "nokafka", RELAY_STARTUP_TIMEOUT_SECONDS="2", RELAY_PORT=str(free_port()))
    result = run(["serve"], env, timeout=60)
    assert result.returncode == 3
    reason = [line for line in result.stderr.splitlines() if line.startswith("mytpe-relay:")]
    assert reason == [
        f"mytpe-relay: cannot start: Kafka at {dead} not reachable within 2s: connection refused by {dead}"
    ]


def test_tail_and_replay_without_kafka_exit_3_with_one_line(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    env = relay_env(dead, "nokafka", RELAY_STARTUP_TIMEOUT_SECONDS="2")
    tailed = run(["tail", "--timeout", "5"], env)
    assert tailed.returncode == 3
    assert tailed.stderr.splitlines()[-1].startswith(f"mytpe-relay tail: cannot start: Kafka at {dead} not reachable")
    replayed = run(["replay", "--from-dlq"], env)
    assert replayed.returncode == 3
    assert (
        replayed.stderr.splitlines()[-1]
        == f"mytpe-relay replay: cannot start: Kafka at {dead} not reachable within 2s: connection refused by {dead}"
    )


def test_check_fails_without_kafka() -> None:
    env = relay_env(f"127.0.0.1:{free_port()}", "nokafka", RELAY_STARTUP_TIMEOUT_SECONDS="2")
    result = run(["check"], env)
    assert result.returncode == 1
    assert "kafka: FAILED" in result.stdout


def test_invalid_configuration_names_the_variable() -> None:
    env = relay_env("127.0.0.1:1", "x", RELAY_PORT="eighty")
    result = run(["serve"], env)
    assert result.returncode == 2
    assert "RELAY_PORT" in result.stderr
    env = relay_env("127.0.0.1:1", "x")
    del env["RELAY_MYTPE_SECRETS"]
    assert "RELAY_MYTPE_SECRETS" in run(["check"], env).stderr


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.event)
def test_verify_a_captured_request(vector, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(vector.body)
    args = ["verify", "--secret", vector.secret, "--timestamp", vector.timestamp, "--signature", vector.signature]
    ok = run([*args, str(body)], {})
    assert ok.returncode == 0 and ok.stdout.startswith("valid:"), ok.stdout + ok.stderr
    body.write_bytes(vector.body.replace(b".00", b".0", 1) if b".00" in vector.body else vector.body + b" ")
    tampered = run([*args, str(body)], {})
    assert (tampered.returncode, tampered.stdout.strip()) == (
        1,
        "invalid: bad_signature (matches no configured secret)",
    )
    windowed = run([*args, "--window", "300", str(body)], {})
    assert windowed.returncode == 1 and "stale_timestamp" in windowed.stdout
