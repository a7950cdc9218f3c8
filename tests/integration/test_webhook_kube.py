"""`webhook rotate --kube-secret` against the MyTPE sandbox process and the stand-in kubectl and kubelet
(tests/kube/standin.py): what it refuses before touching anything, and how it writes the Secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.faults.harness import RelayProcess
from tests.integration.test_webhook_commands import PLACEHOLDER, _settled, relay_for, sandbox, wait_for
from tests.kube.standin import Cluster
from tests.servers import SANDBOX_INSTANCE as INSTANCE
from tests.servers import SandboxProcess

pytestmark = pytest.mark.integration
__all__ = ["relay_for", "sandbox"]  # fixtures, used by name
LEGACY = f"/api/v2/mytpe-pay/{INSTANCE}/webhook"


def sources_yaml(sandbox: SandboxProcess, secret: str) -> bytes:
    block = {"api": "legacy", "base_url": sandbox.url, "instance_id": INSTANCE, "allow_http": True}
    return yaml.safe_dump({"sources": [{"name": "shop", "secrets": [secret], "mytpe": block}]}).encode()


@pytest.fixture
def cluster(sandbox: SandboxProcess, tmp_path: Path) -> Iterator[Cluster]:
    """The Secret holds the secret MyTPE signs with; one pod mount, synced 1 s after each change."""
    secret = sandbox.api("PUT", LEGACY, {"webhook_url": "https://h.example/webhooks/mytpe/shop"})["data"]
    made = Cluster(tmp_path, [tmp_path / "pod0"], delay=1.0)
    made.start({"sources.yaml": sources_yaml(sandbox, secret["webhook_secret"])})
    yield made
    made.stop()


def rotate_command(cluster: Cluster, *args: str) -> list[str]:
    command = [sys.executable, "-m", "relay", "webhook", "rotate", "--source", "shop"]
    return [*command, "--kube-secret", f"{cluster.namespace}/{cluster.name}", *args]


def rotate_env(cluster: Cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(cluster.env(), RELAY_PUBLIC_URL="https://h.example")
    env.update(RELAY_MYTPE_API_KEY="sandbox-key", RELAY_MYTPE_API_SECRET="sandbox-secret")
    return env


def rotate(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    command, env = rotate_command(cluster, *args), rotate_env(cluster)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)


def version(cluster: Cluster) -> int:
    found: int = json.loads(cluster.state.read_text())["version"]
    return found


def test_kube_secret_without_relay_url_is_refused_before_anything_changes(
    sandbox: SandboxProcess, cluster: Cluster
) -> None:
    masked = sandbox.api("GET", LEGACY)["data"]["webhook_secret"]
    done = rotate(cluster)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--relay-url" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert version(cluster) == 1, "the Secret was changed"
    assert sandbox.api("GET", LEGACY)["data"]["webhook_secret"] == masked, "MyTPE regenerated"


def test_rotate_waits_for_its_own_window_not_for_an_earlier_change(
    sandbox: SandboxProcess, relay_for: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """Someone's change to the Secret (another rotation closing its window, say) reaches the pod during
    step 1: the command must still wait for the window it wrote, or MyTPE regenerates before the
    replica serves it and deliveries get 401."""
    mount = tmp_path / "pod0"
    secret = sandbox.api("PUT", LEGACY, {"webhook_url": "https://h.example/webhooks/mytpe/shop"})["data"]
    cluster = Cluster(tmp_path, [mount], delay=6.0)
    cluster.start({"sources.yaml": sources_yaml(sandbox, secret["webhook_secret"])})
    try:
        relay = relay_for(RELAY_SOURCES_FILE=str(mount / "sources.yaml"))
        sandbox.api("PUT", LEGACY, {"webhook_url": f"{relay.url}/webhooks/mytpe/shop"})  # the secret stays
        other = yaml.safe_load(cluster.read("sources.yaml"))
        other["sources"].append({"name": "other", "secrets": [PLACEHOLDER]})
        cluster.patch("sources.yaml", yaml.safe_dump(other).encode())
        time.sleep(3)  # the change is 3 s from the pod: it lands during the command's step 1
        sandbox.control("/sandbox/emit", {"hook": INSTANCE, "count": 400, "rate": 20})
        done = rotate(cluster, "--relay-url", relay.url, "--verify-timeout", "60")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: _settled(sandbox), 60, "deliveries settled")
    finally:
        cluster.stop()
    tries = [t for d in sandbox.control("/sandbox/attempts")["deliveries"] for t in d["tries"]]
    assert 401 not in tries, "answered 401: MyTPE regenerated before the replica served the window"


def test_a_change_to_another_source_made_during_rotate_survives(
    sandbox: SandboxProcess, relay_for: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """Another command (or person) changes source `other` in the Secret while `rotate` works on `shop`:
    each of rotate's writes applies to the Secret as it is then, so that change stays."""
    mount = tmp_path / "pod0"
    secret = sandbox.api("PUT", LEGACY, {"webhook_url": "https://h.example/webhooks/mytpe/shop"})["data"]
    cluster = Cluster(tmp_path, [mount], delay=1.0)
    content = yaml.safe_load(sources_yaml(sandbox, secret["webhook_secret"]))
    content["sources"].append({"name": "other", "secrets": [PLACEHOLDER]})
    cluster.start({"sources.yaml": yaml.safe_dump(content).encode()})
    try:
        relay = relay_for(RELAY_SOURCES_FILE=str(mount / "sources.yaml"))
        sandbox.api("PUT", LEGACY, {"webhook_url": f"{relay.url}/webhooks/mytpe/shop"})
        sandbox.control("/sandbox/emit", {"hook": INSTANCE, "count": 600, "rate": 20})
        running = subprocess.Popen(
            rotate_command(cluster, "--relay-url", relay.url, "--verify-timeout", "60"),
            env={**rotate_env(cluster), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert running.stdout is not None
        for line in running.stdout:  # bounded by the command's own timeouts
            if line.startswith("1. "):
                break
        changed = yaml.safe_load(cluster.read("sources.yaml"))
        changed["sources"][1]["secrets"] = ["whsec_" + "1" * 48]  # someone's change to `other`
        cluster.patch("sources.yaml", yaml.safe_dump(changed).encode())
        stdout, stderr = running.communicate(timeout=180)
        assert running.returncode == 0, stdout + stderr
    finally:
        cluster.stop()
    final = {s["name"]: s for s in yaml.safe_load(cluster.read("sources.yaml"))["sources"]}
    assert final["other"]["secrets"] == ["whsec_" + "1" * 48], "the other change was undone"
    assert final["shop"]["secrets"][1] == secret["webhook_secret"] and "rotation_window_until" not in final["shop"]


def test_a_write_that_lands_between_rotates_read_and_its_replace_survives(
    sandbox: SandboxProcess, cluster: Cluster, relay_for: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """The replace is refused (a conflict: the resourceVersion moved) and the change made again on the
    Secret's new content."""
    relay = relay_for(RELAY_SOURCES_FILE=str(tmp_path / "pod0" / "sources.yaml"))
    sandbox.api("PUT", LEGACY, {"webhook_url": f"{relay.url}/webhooks/mytpe/shop"})
    sandbox.control("/sandbox/emit", {"hook": INSTANCE, "count": 600, "rate": 20})
    changed = yaml.safe_load(cluster.read("sources.yaml"))
    changed["sources"].append({"name": "other", "secrets": [PLACEHOLDER]})
    cluster.interpose("sources.yaml", yaml.safe_dump(changed).encode())
    done = rotate(cluster, "--relay-url", relay.url, "--verify-timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    final = [s["name"] for s in yaml.safe_load(cluster.read("sources.yaml"))["sources"]]
    assert final == ["shop", "other"], "the write that landed in between was undone"
