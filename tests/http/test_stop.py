"""The stop sequence: a step that fails is said in one line, and every later step still runs."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from starlette.testclient import TestClient

from relay.dedupe.memory import MemoryDedupeStore
from relay.http.app import create_app
from relay.settings import Settings
from tests.fakes import FakePublisher


class FailingStop(FakePublisher):
    async def stop(self, *, timeout: float = 10.0) -> None:
        raise RuntimeError("the producer could not close\nsecond line")


class WatchedStore(MemoryDedupeStore):
    stopped = False

    async def stop(self) -> None:
        self.stopped = True
        await super().stop()


def test_a_step_that_fails_leaves_the_later_ones_to_run(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Read in a review: the stop awaited its steps one after the other with no guard, so a producer whose close
    raised left the answers in flight unsettled, the spool open and the dedupe store (its Redis clients)
    unclosed, and handed uvicorn a traceback."""
    store = WatchedStore(ttl=60, max_entries=100)
    app = create_app(settings_factory(), publisher=FailingStop(), dedupe=store)
    with caplog.at_level(logging.INFO), TestClient(app):
        pass
    assert store.stopped
    failed = [r for r in caplog.records if "stop:" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.ERROR] and failed[0].exc_info is None
    assert "kafka producer" in failed[0].getMessage() and "\n" not in failed[0].getMessage()
    assert any(r.getMessage().startswith("relay stopped") for r in caplog.records)
