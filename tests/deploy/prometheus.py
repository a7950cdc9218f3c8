"""A real Prometheus server (Debian's package) on loopback, scraping one target, for the duration of a test."""

from __future__ import annotations

import asyncio
import math
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx2 as httpx
import yaml

from tests.conftest import require_tool
from tests.servers import free_port


class LocalPrometheus:
    def __init__(self, workdir: Path, *, target: str, rule_files: list[Path]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": "mytpe-relay", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self.client = httpx.AsyncClient(base_url=self.url, timeout=10)

    async def __aenter__(self) -> LocalPrometheus:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _start(self) -> None:
        log = self._log = (self.workdir / "prometheus.log").open("wb")
        self._process = subprocess.Popen(  # noqa: ASYNC220 - a server process, waited on below by polling
            [
                require_tool("prometheus"),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(150):
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            try:
                if (await self.client.get("/-/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("prometheus not ready within 15s")

    async def __aexit__(self, *exc: object | TracebackType) -> None:
        await self.client.aclose()
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log is not None:
            self._log.close()

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector. Raises AssertionError with Prometheus's error."""
        response = await self.client.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('errorType')}: {body.get('error')}"
        assert body["data"]["resultType"] == "vector", expr
        return list(body["data"]["result"])

    async def value(self, expr: str) -> float:
        """The single value of `expr`, or NaN when the result is empty."""
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else math.nan

    async def wait_for(self, expr: str, *, timeout: float = 30) -> None:
        """Poll until `expr` (a condition) returns a non-empty result; bounded by `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self.query(expr):
            assert loop.time() < deadline, f"still empty after {timeout}s: {expr}"
            await asyncio.sleep(0.5)

    async def api(self, path: str) -> dict[str, Any]:
        body = (await self.client.get(path)).json()
        assert body["status"] == "success", body
        return dict(body["data"])
