"""A sources file kept in a Kubernetes Secret, read and written with `kubectl` (`webhook rotate --kube-secret`).

The Secret's content never appears on a command line: a change goes to `kubectl patch --patch-file`
through a private temporary file (mode 0600), deleted at once. Only the one key is changed; the
Secret's other keys stay. Every write is read back and compared.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from relay.settings import ConfigError

TIMEOUT = 60.0


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
        jsonpath = "{.data." + self.key.replace(".", "\\.") + "}"
        encoded = self._run("get", "secret", self.name, "-o", f"jsonpath={jsonpath}")
        if not encoded.strip():
            raise ConfigError(f"{self}: no such key in the Secret")
        return base64.b64decode(encoded)

    def write(self, content: bytes) -> None:
        patch = json.dumps({"data": {self.key: base64.b64encode(content).decode()}}).encode()
        handle, name = tempfile.mkstemp(prefix=".mytpe-relay-patch.", suffix=".json")
        try:
            os.fchmod(handle, 0o600)
            with os.fdopen(handle, "wb") as file:
                file.write(patch)
            self._run("patch", "secret", self.name, "--type", "merge", "--patch-file", name)
        finally:
            Path(name).unlink(missing_ok=True)
        if self.read() != content:
            raise ConfigError(f"{self}: reads back different from what was written")

    def _run(self, *args: str) -> bytes:
        command = [self.kubectl, "-n", self.namespace, *args]
        try:
            done = subprocess.run(command, capture_output=True, timeout=TIMEOUT, check=False)  # noqa: S603
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"{self}: kubectl {args[0]}: {type(exc).__name__}") from None
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
            raise ConfigError(f"{self}: kubectl {args[0]} failed: {lines[-1][:200]}")
        return done.stdout
