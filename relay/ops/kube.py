"""A sources file kept in a Kubernetes Secret, read and written with `kubectl` (`webhook rotate --kube-secret`).

Each change is applied to the Secret as it is at that moment: `kubectl get -o json`, the change made
to that content, then `kubectl replace` at the resourceVersion read, so a write made by someone else
in between is never undone: the replace is refused (a conflict), and the change is applied again to
the new content. The content never appears on a command line: it goes through a private temporary
file (mode 0600), deleted at once. Only the one key is changed; the Secret's other keys stay. Each
write's answer is compared with what was written.

A secret manager that owns the Secret (External Secrets, a sealed-secrets controller, Helm, Argo CD
self-heal) writes it back to its own source of truth: this command's changes are then reverted at its
next sync. Rotate in that source of truth instead, or pause its sync for the rotation.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.settings import ConfigError

TIMEOUT = 60.0
ATTEMPTS = 5


@dataclass(frozen=True)
class KubeSecret:
    namespace: str
    name: str
    key: str = "sources.yaml"
    kubectl: str = "kubectl"

    @classmethod
    def parse(cls, text: str, key: str) -> KubeSecret:
        """`NAMESPACE/NAME`, as `--kube-secret` takes it."""
        namespace, _, name = text.partition("/")
        if not namespace or not name or "/" in name:
            raise ConfigError(f"--kube-secret: {text!r} is not NAMESPACE/NAME")
        return cls(namespace, name, key)

    def __str__(self) -> str:
        return f"Secret {self.namespace}/{self.name} (key {self.key})"

    def read(self) -> bytes:
        return self._get()[1]

    def update(self, path: Path, change: Callable[[], object]) -> None:
        """Apply `change` (an edit of the working copy at `path`) to the Secret's key as it is now: read,
        copy into `path`, change, replace at that resourceVersion; re-read and apply again on a
        conflict (someone else's write in between), at most ATTEMPTS times."""
        for _ in range(ATTEMPTS):
            secret, content = self._get()
            path.write_bytes(content)
            change()
            secret["data"][self.key] = base64.b64encode(path.read_bytes()).decode()
            answer = self._replace(secret)
            if answer is None:
                continue  # a conflict: someone wrote in between
            if answer.get("data", {}).get(self.key) != secret["data"][self.key]:
                raise ConfigError(f"{self}: the answer to the write holds different content")
            return
        raise ConfigError(f"{self}: changed by someone else {ATTEMPTS} times in a row while writing; try again")

    def _get(self) -> tuple[dict[str, Any], bytes]:
        try:
            secret = json.loads(self._run("get", "secret", self.name, "-o", "json"))
            encoded = secret["data"][self.key]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{self}: no such key in the Secret") from None
        return secret, base64.b64decode(encoded)

    def _replace(self, secret: dict[str, Any]) -> dict[str, Any] | None:
        """The Secret as written, or None on a conflict (its resourceVersion is no longer the Secret's)."""
        handle, name = tempfile.mkstemp(prefix=".mytpe-relay-secret.", suffix=".json")
        try:
            os.fchmod(handle, 0o600)
            with os.fdopen(handle, "wb") as file:
                file.write(json.dumps(secret).encode())
            answer = json.loads(self._run("replace", "-f", name, "-o", "json", conflict=True) or b"null")
        except ValueError:
            raise ConfigError(f"{self}: kubectl replace: the answer is not JSON") from None
        finally:
            Path(name).unlink(missing_ok=True)
        return answer if isinstance(answer, dict) else None

    def _run(self, *args: str, conflict: bool = False) -> bytes:
        """kubectl's output; b"" for a conflict when `conflict` (the caller re-reads), else ConfigError."""
        command = [self.kubectl, "-n", self.namespace, *args]
        try:
            done = subprocess.run(command, capture_output=True, timeout=TIMEOUT, check=False)  # noqa: S603
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"{self}: kubectl {args[0]}: {type(exc).__name__}") from None
        if done.returncode != 0 and conflict and b"the object has been modified" in done.stderr:
            return b""
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
            raise ConfigError(f"{self}: kubectl {args[0]} failed: {lines[-1][:200]}")
        return done.stdout
