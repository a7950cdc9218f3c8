"""Integration fixtures: the real broker is started once per run by tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from relay.settings import Settings
from tests.servers import Record, free_port, read_topic, running_relay

__all__ = ["Record", "free_port", "read_topic", "running_relay"]


@pytest.fixture
def kafka_settings(kafka: Any, settings_factory: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return settings_factory(kafka_bootstrap_servers=(kafka.bootstrap,), **overrides)

    return make
