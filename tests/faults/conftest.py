from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from localkafka import LocalKafka

from tests.faults.harness import RelayProcess
from tests.helpers import SECRET


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker the fault scenarios may stop, pause and restart without disturbing other tests."""
    with LocalKafka(tmp_path_factory.mktemp("fault-kafka")) as kafka:
        yield kafka


@pytest.fixture
def relay_factory(broker: LocalKafka, tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def make(**extra: str) -> RelayProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(
            RELAY_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
            RELAY_MYTPE_SECRETS=SECRET,
            RELAY_TOPIC_PREFIX=f"f{uuid.uuid4().hex[:10]}",
            RELAY_PUBLISH_TIMEOUT_SECONDS="3",
            RELAY_INFLIGHT_WAIT_SECONDS="2",
            RELAY_SHUTDOWN_DELAY_SECONDS="0.5",
            RELAY_SHUTDOWN_TIMEOUT_SECONDS="10",
            RELAY_LOG_LEVEL="WARNING",
        )
        env.update(extra)
        relay = RelayProcess(env, tmp_path / f"relay{len(started)}.log")
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.stop(sig=9)
