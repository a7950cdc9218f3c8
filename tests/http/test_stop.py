"""The stop sequence: a step that fails is said in one line, and every later step still runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from relay.dedupe.memory import MemoryDedupeStore
from relay.http.app import create_app
from relay.metrics import Metrics
from relay.settings import Settings
from relay.spool.spool import Spool
from tests.fakes import FakePublisher


class FailingStop(FakePublisher):
    async def stop(self, *, timeout: float = 10.0) -> None:
        raise RuntimeError("the producer could not close\nsecond line")


class WatchedStore(MemoryDedupeStore):
    def __init__(self, *, fail: bool) -> None:
        super().__init__(ttl=60, max_entries=100)
        self.fail = fail
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True
        await super().stop()
        if self.fail:
            raise ConnectionError("the store could not close")


@pytest.mark.parametrize("failing", ["kafka producer", "dedupe store"])
def test_a_step_that_fails_leaves_the_later_ones_to_run(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture, tmp_path: Path, failing: str
) -> None:
    """Read in a review: the stop awaited its steps one after the other with no guard, so a producer whose close
    raised left the answers in flight unsettled, the spool open and the dedupe store (its Redis clients)
    unclosed, and handed uvicorn a traceback."""
    store = WatchedStore(fail=failing == "dedupe store")
    publisher = FailingStop() if failing == "kafka producer" else FakePublisher()
    app = create_app(settings_factory(spool_dir=tmp_path), publisher=publisher, dedupe=store)
    with caplog.at_level(logging.INFO), TestClient(app):
        pass
    assert store.stopped
    failed = [r for r in caplog.records if r.getMessage().startswith("stop:")]
    assert [r.levelno for r in failed] == [logging.ERROR] and failed[0].exc_info is None
    assert failed[0].getMessage().startswith(f"stop: {failing} failed") and "\n" not in failed[0].getMessage()
    assert any(r.getMessage().startswith("relay stopped") for r in caplog.records)
    asyncio.run(_opens(tmp_path))  # the spool was closed: another can take it


async def _opens(directory: Path) -> None:
    spool = Spool(directory, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()  # refused while another holds it
    await spool.close()
