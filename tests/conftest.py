from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from relay.settings import Secret, Settings
from tests.helpers import SECRET
from tests.servers import LocalRedis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from localkafka import LocalKafka  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # Hypothesis's deadline and its too_slow health check assert wall-clock times. On a shared 2-core
    # machine they fail when the process is starved for a moment (one input in 2.6 s, where 3-13 ms is
    # typical), which says nothing about the code. Every property and example count stays as written.
    settings.register_profile("relay", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("relay")


def pytest_report_header() -> str:
    """Which Kafka the brokers of this run are (KAFKA_VERSION, else scripts/localkafka.py's default)."""
    from localkafka import kafka_version

    return f"kafka: {kafka_version()} (KAFKA_VERSION selects another)"


def make_settings(**overrides: object) -> Settings:
    """Test settings: one secret, a topic prefix of its own, and short bounds."""
    values: dict[str, object] = {
        "secrets": (Secret(SECRET),),
        "topic_prefix": f"t{uuid.uuid4().hex[:10]}",
        "publish_timeout_seconds": 3.0,
        "startup_timeout_seconds": 10.0,
        "inflight_wait_seconds": 2.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings_factory() -> Callable[..., Settings]:
    return make_settings


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """One real KRaft broker for the whole run; tests isolate themselves by topic prefix."""
    with LocalKafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """One real redis-server for the run; tests isolate themselves by topic prefix (the key namespace)."""
    require_tool("redis-server")
    with LocalRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def require_tool(name: str) -> str:
    """The path of a tool the suite needs; missing it is a failure in CI and a skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/install installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's spelling: 256k, 2m) at `mountpoint`, for a real ENOSPC. Needs root."""
    mountpoint.mkdir()
    mount, umount = require_tool("mount"), require_tool("umount")
    subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], check=True, timeout=30)
    try:
        yield mountpoint
    finally:
        subprocess.run([umount, "-l", str(mountpoint)], check=True, timeout=30)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` (a file) bound read-only over itself: opened for writing, EROFS, even for root (a volume mounted
    read-only, or a file of another user, as a non-root process meets it). Needs root."""
    mount, umount = require_tool("mount"), require_tool("umount")
    subprocess.run([mount, "--bind", str(path), str(path)], check=True, timeout=30)
    try:
        subprocess.run([mount, "-o", "remount,bind,ro", str(path), str(path)], check=True, timeout=30)
        yield path
    finally:
        subprocess.run([umount, str(path)], check=True, timeout=30)


def fill_disk(path: Path, leave: int = 0) -> None:
    """Take the room left on `path`'s file system (a small tmpfs), then give `leave` bytes of it back."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(4096):  # bounded: 4 MiB, more than the test disks
            os.write(fd, b"\0" * 1024)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(path, max(path.stat().st_size - leave, 0))


FIGURES: list[str] = []
"""Figures a test measured (never asserted as times), printed at the end of the run."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault-injection figures and the measured ones, so every CI log carries them."""
    from tests.faults.harness import HEADER, REPORTS

    if FIGURES:
        terminalreporter.section("measured by the tests")
        for line in FIGURES:
            terminalreporter.write_line(line)

    if REPORTS:
        terminalreporter.section("fault injection: every 2xx delivery read back from Kafka")
        terminalreporter.write_line(HEADER)
        for report in REPORTS:
            terminalreporter.write_line(report.row())
