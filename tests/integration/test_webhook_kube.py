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


def rotate(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "relay", "webhook", "rotate", "--source", "shop"]
    command += ["--kube-secret", f"{cluster.namespace}/{cluster.name}", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(cluster.env(), RELAY_PUBLIC_URL="https://h.example")
    env.update(RELAY_MYTPE_API_KEY="sandbox-key", RELAY_MYTPE_API_SECRET="sandbox-secret")
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
