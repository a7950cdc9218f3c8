"""The load generator (bench/loadgen, Go) as the benchmarks call it, and the bodies it sends."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from relay.mytpe import samples

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + "5be7c0de" * 6  # a bench-only secret, 48 hex characters as MyTPE issues them
BINARY = ROOT / ".cache" / "bin" / "loadgen"


def write_templates(directory: Path) -> list[Path]:
    """One body per family from relay.mytpe.samples, with {{DELIVERY}} and {{ENTITY}} for the generator to fill."""
    paths = []
    for event in ("transaction.completed", "pay_link.updated"):
        family = event.split(".", 1)[0]
        body = samples.build(event, delivery_id="{{DELIVERY}}", seed=1)
        entity = orjson.loads(body)["data"][family]["id"]
        path = directory / f"{event}.json"
        path.write_bytes(body.replace(entity.encode(), b"{{ENTITY}}"))
        paths.append(path)
    return paths


@dataclass
class LoadGen:
    binary: Path
    templates: list[Path] = field(default_factory=list)

    @classmethod
    def build(cls) -> LoadGen:
        """Compile bench/loadgen with Go into .cache/bin (a second build is a no-op)."""
        go = shutil.which("go")
        if go is None:
            raise RuntimeError("Go is needed to build bench/loadgen (the standard library only)")
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([go, "build", "-o", str(BINARY), "."], cwd=ROOT / "bench" / "loadgen", check=True)  # noqa: S603
        return cls(BINARY)

    def run(
        self,
        urls: list[str],
        *,
        mode: str,
        conns: int,
        duration: float,
        warmup: float,
        rate: float = 0,
        limit: int = 0,
        secret: str = SECRET,
        timeline: Path | None = None,
    ) -> dict[str, Any]:
        """One bounded run; returns the generator's JSON report (req/s, latency percentiles, statuses). With
        `timeline`, each measured answer's send time and latency are also written there (bench/tail.py)."""
        command = [str(self.binary), "-secret", secret, "-run-id", uuid.uuid4().hex[:12], "-mode", mode]
        command += ["-conns", str(conns), "-duration", f"{duration}s", "-warmup", f"{warmup}s", "-max", str(limit)]
        if rate:
            command += ["-rate", str(rate)]
        for url in urls:
            command += ["-url", url]
        for template in self.templates:
            command += ["-template", str(template)]
        if timeline is not None:
            command += ["-timeline", str(timeline)]
        bound = duration + warmup + 120  # the generator stops itself; this only catches a hang
        done = subprocess.run(command, capture_output=True, check=True, timeout=bound)  # noqa: S603
        result: dict[str, Any] = json.loads(done.stdout)
        return result
