"""Stand-ins for Kubernetes in the rotation tests: `kubectl` (get and patch one Secret, kept in a JSON
file) and a kubelet that copies the Secret's data into each replica's mounted directory `delay` seconds
after each change (each change in turn), in the kubelet's layout (`..data` -> `..TIMESTAMP/`, each key a link through
`..data`, swapped atomically by renaming a new `..data` link over the old one)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

KUBECTL = '''#!{python}
"""Stand-in kubectl: `-n NS get secret NAME -o jsonpath=…|-o json`, `-n NS replace -f F -o json`
(refused unless F's resourceVersion is the Secret's) and `-n NS patch secret NAME --patch-file F`"""
import json, os, sys, time
state_path = os.environ["STANDIN_KUBE_STATE"]
args = sys.argv[1:]
namespace, verb = args[1], args[2]
if verb == "replace":  # `-n NS replace -f F -o json`: the object names itself
    rest = args[3:]
    with open(rest[rest.index("-f") + 1]) as f:
        wanted = json.load(f)
    kind, name = wanted["kind"].lower(), wanted["metadata"]["name"]
else:
    kind, name, rest = args[3], args[4], args[5:]
with open(state_path) as f:
    state = json.load(f)
if (namespace, kind, name) != (state["namespace"], "secret", state["name"]):
    sys.exit(f'Error from server (NotFound): secrets "{{name}}" not found')
def whole():
    meta = {{"namespace": namespace, "name": name, "resourceVersion": str(state["version"])}}
    return {{"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": state["data"]}}
if verb == "get" and rest[:2] == ["-o", "json"]:
    json.dump(whole(), sys.stdout)
elif verb == "get":
    key = rest[1].split("{{.data.", 1)[1].rstrip("}}").replace("\\\\.", ".")
    sys.stdout.write(state["data"].get(key, ""))
elif verb == "replace":  # only at the resourceVersion it names
    if os.path.exists(state_path + ".interpose"):  # someone else's write lands between our get and replace
        with open(state_path + ".interpose", "rb") as f:
            state["data"]["sources.yaml"] = f.read().decode()
        os.unlink(state_path + ".interpose")
        state["version"] += 1
        state["changed_at"] = time.time()
        with open(state_path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(state_path + ".tmp", state_path)
    if wanted["metadata"].get("resourceVersion") != str(state["version"]):
        sys.exit(f'Error from server (Conflict): Operation cannot be fulfilled on secrets "{{name}}": '
                 "the object has been modified; please apply your changes to the latest version and try again")
    state["data"] = wanted["data"]
    state["version"] += 1
    state["changed_at"] = time.time()
    with open(state_path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(state_path + ".tmp", state_path)
    json.dump(whole(), sys.stdout)
elif verb == "patch":
    with open(rest[rest.index("--patch-file") + 1]) as f:
        state["data"].update(json.load(f)["data"])
    state["version"] += 1
    state["changed_at"] = time.time()
    with open(state_path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(state_path + ".tmp", state_path)
    print(f"secret/{{name}} patched")
else:
    sys.exit(f"stand-in kubectl: {{verb}} is not supported")
'''


class Cluster:
    """One Secret, its stand-in `kubectl` on PATH, and a kubelet syncing it into `mounts` after `delay` s."""

    def __init__(self, root: Path, mounts: list[Path], *, delay: float, namespace: str = "mytpe-relay") -> None:
        self.state = root / "secret.json"
        self.bin = root / "bin"
        self.mounts = mounts
        self.delay = delay
        self.namespace, self.name = namespace, "mytpe-relay-sources"
        self.synced: list[tuple[float, float]] = []  # (changed_at, copied_at) of each sync
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="standin-kubelet", daemon=True)

    def start(self, files: dict[str, bytes]) -> None:
        data = {key: base64.b64encode(value).decode() for key, value in files.items()}
        self.state.write_text(
            json.dumps(
                {"namespace": self.namespace, "name": self.name, "data": data, "version": 1, "changed_at": time.time()}
            )
        )
        self.bin.mkdir(exist_ok=True)
        kubectl = self.bin / "kubectl"
        kubectl.write_text(KUBECTL.format(python=sys.executable))
        kubectl.chmod(0o755)
        for mount in self.mounts:
            _swap(mount, files)  # the pod starts with the Secret as it is
        self._thread.start()

    def env(self) -> dict[str, str]:
        return {"STANDIN_KUBE_STATE": str(self.state), "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}

    def read(self, key: str) -> bytes:
        """The Secret's `key` as the API server holds it now."""
        return base64.b64decode(json.loads(self.state.read_text())["data"][key])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def patch(self, key: str, value: bytes) -> None:
        """Change the Secret's `key` as `kubectl patch` would (someone else's change)."""
        state = json.loads(self.state.read_text())
        state["data"][key] = base64.b64encode(value).decode()
        state["version"] += 1
        state["changed_at"] = time.time()
        self.state.with_suffix(".tmp").write_text(json.dumps(state))
        os.replace(self.state.with_suffix(".tmp"), self.state)

    def interpose(self, key: str, value: bytes) -> None:
        """Someone else's write of `key`, landing between the next `kubectl replace` and the get before it."""
        assert key == "sources.yaml"
        Path(f"{self.state}.interpose").write_text(base64.b64encode(value).decode())

    def _run(self) -> None:
        """Each change is copied `delay` s after it was made, in order: a change made while an earlier
        one waits does not hold that one back (a kubelet syncs what the API server has at its sync)."""
        seen = 1
        due: list[tuple[float, float, dict[str, bytes]]] = []  # (changed_at, copy_at, files)
        while not self._stop.wait(0.2):
            state = json.loads(self.state.read_text())
            if state["version"] != seen:
                files = {key: base64.b64decode(value) for key, value in state["data"].items()}
                due.append((state["changed_at"], state["changed_at"] + self.delay, files))
                seen = state["version"]
            while due and time.time() >= due[0][1]:
                changed_at, _, files = due.pop(0)
                for mount in self.mounts:
                    _swap(mount, files)
                self.synced.append((changed_at, time.time()))


def _swap(mount: Path, files: dict[str, bytes]) -> None:
    mount.mkdir(parents=True, exist_ok=True)
    stamp = mount / time.strftime(f"..%Y_%m_%d_%H_%M_%S.{time.monotonic_ns()}")
    stamp.mkdir(mode=0o755)
    for key, value in files.items():
        (stamp / key).write_bytes(value)
    data = mount / "..data"
    old = data.resolve() if data.is_symlink() else None
    (mount / "..data_tmp").symlink_to(stamp.name)
    os.replace(mount / "..data_tmp", data)
    for key in files:
        link = mount / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")
    if old is not None and old != stamp:
        shutil.rmtree(old, ignore_errors=True)
