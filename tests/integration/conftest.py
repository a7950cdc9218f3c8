"""Integration fixtures: the real broker is started once per run by tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from localkafka import LocalKafka, Secured  # scripts/, on sys.path from tests/conftest.py

from relay.settings import Settings
from tests.servers import Record, free_port, read_topic, running_relay
from tests.tls import Certificates, make_certificates

__all__ = ["Record", "free_port", "read_topic", "running_relay"]


@pytest.fixture
def kafka_settings(kafka: Any, settings_factory: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return settings_factory(kafka_bootstrap_servers=(kafka.bootstrap,), **overrides)

    return make


@dataclass(frozen=True)
class SecureKafka:
    """The secured broker of the security tests, with its certificates and users.

    User:relay (SCRAM, OAUTHBEARER `sub`, or the client certificate's CN) and User:plainrelay (PLAIN) may
    Write, Describe, DescribeConfigs and Read the topics named `sec-*`. User:noacl may do nothing, and
    User:acluser only what a test grants it.
    """

    broker: LocalKafka
    certificates: Certificates

    @property
    def plaintext(self) -> str:
        """The fixtures' listener (a super user): to create topics and read them back."""
        return self.broker.bootstrap

    @property
    def secured(self) -> Secured:
        assert self.broker.secured is not None
        return self.broker.secured

    @property
    def sasl_ssl(self) -> str:
        return self.secured.sasl_ssl

    @property
    def mtls(self) -> str:
        return self.secured.mtls


SCRAM_USERS = {"relay": "relay-secret-7Hq", "noacl": "noacl-secret-2Vd", "acluser": "acl-secret-6Pn"}
REAUTH_MS = 5000  # the SASL listener ends every session after 5 s (KIP-368); aiokafka cannot re-authenticate
PLAIN_USERS = {"admin": "admin-secret-9Kz", "plainrelay": "plain-secret-4Jm"}
SECURE_PREFIX = "sec-"
RELAY_OPERATIONS = ["Write", "Describe", "DescribeConfigs", "Read"]


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    directory = tmp_path_factory.mktemp("secure-kafka")
    certificates = make_certificates(directory / "certs")
    secured = Secured(
        keystore=certificates.broker,
        truststore=certificates.ca,
        scram_users=SCRAM_USERS,
        plain_users=PLAIN_USERS,
        reauth_ms=REAUTH_MS,
    )
    with LocalKafka(directory / "broker", secured=secured) as broker:
        for principal in ("User:relay", "User:plainrelay"):
            broker.acl("--add", principal, RELAY_OPERATIONS, topic_prefix=SECURE_PREFIX)
        yield SecureKafka(broker, certificates)


async def create_topics(bootstrap: str, topics: list[str]) -> None:
    """As an administrator would, before the relay runs: a relay principal has no Create."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1) for topic in topics])
    finally:
        await admin.close()
