"""Kafka security against a real broker with SASL_SSL, mTLS and ACL listeners (tests/integration/conftest.py).

End to end, once per mechanism: a signed webhook in, the record read back. Then every failure the issue
names gives `serve` a one-line exit 3 naming its cause. No password, key or token shows anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest

from relay.logs import build_log_config
from relay.mytpe import samples
from relay.settings import KafkaSecurity, Secret, Settings
from tests.faults.harness import Sender, make_deliveries, reconcile
from tests.helpers import SECRET, signed_headers
from tests.integration.conftest import (
    PLAIN_USERS,
    REAUTH_MS,
    RELAY_OPERATIONS,
    SCRAM_USERS,
    SECURE_PREFIX,
    SecureKafka,
    create_topics,
    read_topic,
    running_relay,
)
from tests.integration.test_cli import relay_env, run
from tests.servers import free_port

pytestmark = pytest.mark.integration


def unsigned_jws(subject: str, *, lifetime: float = 3600) -> str:
    """A token for Kafka's unsecured (test-only) OAUTHBEARER validator: alg none, claims sub and exp."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = time.time()
    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + lifetime})}."


def mechanisms(secure: SecureKafka, tmp_path: Path) -> dict[str, tuple[str, KafkaSecurity]]:
    """Bootstrap address and settings for each way in."""
    ca = secure.certificates.ca
    token = tmp_path / "token"
    token.write_text(unsigned_jws("relay"))
    password = tmp_path / "password"
    password.write_text(SCRAM_USERS["relay"] + "\n")

    def sasl(mechanism: str, user: str, secret: str | None = None) -> KafkaSecurity:
        return KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism=mechanism,
            sasl_username=user,
            sasl_password=Secret(secret) if secret else None,
            sasl_password_file=None if secret else password,
            ssl_ca_file=ca,
        )

    return {
        "SCRAM-SHA-256": (secure.sasl_ssl, sasl("SCRAM-SHA-256", "relay", SCRAM_USERS["relay"])),
        "SCRAM-SHA-512": (secure.sasl_ssl, sasl("SCRAM-SHA-512", "relay")),  # the password from a file
        "PLAIN": (secure.sasl_ssl, sasl("PLAIN", "plainrelay", PLAIN_USERS["plainrelay"])),
        "OAUTHBEARER": (
            secure.sasl_ssl,
            KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", oauth_token_file=token, ssl_ca_file=ca),
        ),
        "mTLS": (
            secure.mtls,
            KafkaSecurity(protocol="SSL", ssl_ca_file=ca, ssl_cert_file=secure.certificates.client),
        ),
    }


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN", "OAUTHBEARER", "mTLS"])
async def test_a_webhook_is_published_through_each_mechanism(
    mechanism: str,
    secure_kafka: SecureKafka,
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for logger, config in build_log_config("DEBUG")["loggers"].items():  # the product's most verbose setting
        caplog.set_level(config["level"], logger=logger)
    caplog.handler.setLevel(logging.DEBUG)  # set_level also sets the handler's level: the loggers decide here
    bootstrap, security = mechanisms(secure_kafka, tmp_path)[mechanism]
    prefix = f"{SECURE_PREFIX}{uuid.uuid4().hex[:8]}"
    await create_topics(secure_kafka.plaintext, [f"{prefix}.transaction", f"{prefix}.pay_link", f"{prefix}.dlq"])
    settings = settings_factory(kafka_bootstrap_servers=(bootstrap,), kafka_security=security, topic_prefix=prefix)
    body = samples.build("transaction.completed", delivery_id=f"sec-{mechanism}")
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        headers = signed_headers(body, timestamp=int(time.time()), delivery_id=f"sec-{mechanism}")
        response = await client.post(relay.webhook_url, content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "accepted"
        ready = await client.get(relay.url + "/readyz")
        assert ready.status_code == 200, ready.text
        metrics = (await client.get(relay.url + "/metrics")).text
    (record,) = await read_topic(secure_kafka.plaintext, f"{prefix}.transaction")
    assert json.loads(record.value)["id"] == f"sec-{mechanism}"
    token = (tmp_path / "token").read_text()
    key = next(line for line in secure_kafka.certificates.client.read_text().splitlines() if "-----" not in line)
    secrets = [*SCRAM_USERS.values(), *PLAIN_USERS.values(), token, token.split(".")[1], key, SECRET]
    shown = "\n".join([metrics, caplog.text, repr(settings), str(settings)])
    assert "mytpe_relay_requests_total" in metrics and caplog.records, "there was something to look in"
    assert [secret for secret in secrets if secret in shown] == []


def serve_env(secure: SecureKafka, bootstrap: str, prefix: str, **security: str) -> dict[str, str]:
    return relay_env(bootstrap, prefix, RELAY_PORT=str(free_port()), RELAY_STARTUP_TIMEOUT_SECONDS="10", **security)


def refusal(result: object) -> list[str]:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    return [line for line in stderr.splitlines() if line.startswith("mytpe-relay:")]


def failures(secure: SecureKafka) -> dict[str, tuple[str, dict[str, str], str]]:
    """name -> (bootstrap, variables, the one line `serve` must print)."""
    certs = secure.certificates
    scram = {"RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RELAY_KAFKA_SSL_CA_FILE": str(certs.ca)}
    sasl, mtls = secure.sasl_ssl, secure.mtls
    ip = sasl.replace("localhost", "127.0.0.1")
    broker_says = "Authentication failed during authentication due to invalid credentials with SASL mechanism"
    return {
        "wrong password": (
            sasl,
            {
                **scram,
                "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "RELAY_KAFKA_SASL_USERNAME": "relay",
                "RELAY_KAFKA_SASL_PASSWORD": "not-the-password-5Xw",
            },
            f"Kafka at {sasl}: authentication failed (SCRAM-SHA-512 as the user RELAY_KAFKA_SASL_USERNAME names):"
            f" {broker_says} SCRAM-SHA-512",
        ),
        "unknown user": (
            sasl,
            {
                **scram,
                "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
                "RELAY_KAFKA_SASL_USERNAME": "ghost",
                "RELAY_KAFKA_SASL_PASSWORD": "ghost-password-8Rt",
            },
            f"Kafka at {sasl}: authentication failed (SCRAM-SHA-256 as the user RELAY_KAFKA_SASL_USERNAME names):"
            f" {broker_says} SCRAM-SHA-256",
        ),
        "untrusted CA": (
            sasl,
            {
                **scram,
                "RELAY_KAFKA_SSL_CA_FILE": str(certs.stranger_ca),
                "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "RELAY_KAFKA_SASL_USERNAME": "relay",
                "RELAY_KAFKA_SASL_PASSWORD": SCRAM_USERS["relay"],
            },
            f"Kafka at {sasl}: TLS: the broker's certificate at {sasl} is not trusted by {certs.stranger_ca}"
            " (unable to get local issuer certificate)",
        ),
        "hostname mismatch": (
            ip,
            {
                **scram,
                "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "RELAY_KAFKA_SASL_USERNAME": "relay",
                "RELAY_KAFKA_SASL_PASSWORD": SCRAM_USERS["relay"],
            },
            f"Kafka at {ip}: TLS: the broker's certificate does not match the host of {ip}"
            " (IP address mismatch, certificate is not valid for '127.0.0.1'.)",
        ),
        "missing client certificate": (
            mtls,
            {"RELAY_KAFKA_SECURITY_PROTOCOL": "SSL", "RELAY_KAFKA_SSL_CA_FILE": str(certs.ca)},
            f"Kafka at {mtls}: {mtls} closed the TLS connection: it may require a client certificate"
            " (RELAY_KAFKA_SSL_CERT_FILE)",
        ),
        "refused client certificate": (
            mtls,
            {
                "RELAY_KAFKA_SECURITY_PROTOCOL": "SSL",
                "RELAY_KAFKA_SSL_CA_FILE": str(certs.ca),
                "RELAY_KAFKA_SSL_CERT_FILE": str(certs.stranger_client),
            },
            f"Kafka at {mtls}: {mtls} closed the TLS connection: it refused the client certificate"
            f" {certs.stranger_client}",
        ),
        "no ACL at all": (
            sasl,
            {
                **scram,
                "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "RELAY_KAFKA_SASL_USERNAME": "noacl",
                "RELAY_KAFKA_SASL_PASSWORD": SCRAM_USERS["noacl"],
            },
            f"Kafka at {sasl}: not authorized (SCRAM-SHA-512 as the user RELAY_KAFKA_SASL_USERNAME names): the broker"
            " refused the idempotent"
            " producer (InitProducerId: ClusterAuthorizationFailed); grant the relay's principal Write on its topics",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong password",
        "unknown user",
        "untrusted CA",
        "hostname mismatch",
        "missing client certificate",
        "refused client certificate",
        "no ACL at all",
    ],
)
def test_each_failure_is_one_line_that_names_its_cause(case: str, secure_kafka: SecureKafka) -> None:
    bootstrap, variables, expected = failures(secure_kafka)[case]
    result = run(["serve"], serve_env(secure_kafka, bootstrap, f"{SECURE_PREFIX}{uuid.uuid4().hex[:8]}", **variables))
    assert result.returncode == 3, result.stderr
    assert refusal(result) == [f"mytpe-relay: cannot start: {expected}"]
    assert "Traceback" not in result.stderr


def test_no_acl_on_the_relays_topics_names_them(secure_kafka: SecureKafka) -> None:
    """User:relay may write `sec-*` only: a relay whose topics are elsewhere is refused at startup, by name."""
    prefix = f"other-{uuid.uuid4().hex[:8]}"
    variables = {
        "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RELAY_KAFKA_SSL_CA_FILE": str(secure_kafka.certificates.ca),
        "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "RELAY_KAFKA_SASL_USERNAME": "relay",
        "RELAY_KAFKA_SASL_PASSWORD": SCRAM_USERS["relay"],
    }
    result = run(["serve"], serve_env(secure_kafka, secure_kafka.sasl_ssl, prefix, **variables))
    assert result.returncode == 3, result.stderr
    topics = ", ".join(Settings(secrets=(Secret(SECRET),), topic_prefix=prefix).router().topics())
    assert refusal(result) == [
        f"mytpe-relay: cannot start: Kafka at {secure_kafka.sasl_ssl}: not authorized (SCRAM-SHA-512 as the user"
        f" RELAY_KAFKA_SASL_USERNAME names): Describe refused on {topics}; grant the relay's principal Write on its"
        " topics"
    ]


def test_no_secret_shows_in_output_logs_or_check(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    """The passwords, the token and the client key of every case, looked for in everything the relay prints."""
    key_line = next(
        line for line in secure_kafka.certificates.client.read_text().splitlines() if line and "-----" not in line
    )
    token = tmp_path / "token"
    token.write_text(unsigned_jws("relay"))
    secrets = [*SCRAM_USERS.values(), *PLAIN_USERS.values(), "not-the-password-5Xw", "ghost-password-8Rt"]
    secrets += [token.read_text().split(".")[1], key_line, SECRET]
    outputs = []
    for bootstrap, variables, _ in failures(secure_kafka).values():
        env = serve_env(secure_kafka, bootstrap, f"{SECURE_PREFIX}{uuid.uuid4().hex[:8]}", **variables)
        outputs += [run(["serve"], env), run(["check"], env)]
    oauth = {
        "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RELAY_KAFKA_SSL_CA_FILE": str(secure_kafka.certificates.ca),
        "RELAY_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "RELAY_KAFKA_OAUTH_TOKEN_FILE": str(token),
        "RELAY_LOG_LEVEL": "DEBUG",
    }
    outputs.append(run(["check"], serve_env(secure_kafka, secure_kafka.sasl_ssl, f"{SECURE_PREFIX}x", **oauth)))
    text = "\n".join(result.stdout + result.stderr for result in outputs)
    assert "not authorized" in text and "authentication failed" in text, "the cases ran"
    assert [secret for secret in secrets if secret in text] == []


def scram(user: str, ca: Path) -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=user,
        sasl_password=Secret(SCRAM_USERS[user]),
        ssl_ca_file=ca,
    )


async def post(client: httpx.AsyncClient, url: str, delivery_id: str) -> httpx.Response:
    body = samples.build("transaction.completed", delivery_id=delivery_id)
    headers = signed_headers(body, timestamp=int(time.time()), delivery_id=delivery_id)
    return await client.post(url, content=body, headers=headers, timeout=30)


async def wait_for_readiness(client: httpx.AsyncClient, url: str, status: int, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (await client.get(url + "/readyz")).status_code != status:
        assert time.monotonic() < deadline, f"/readyz never answered {status}"
        await asyncio.sleep(0.5)


async def test_an_acl_removed_at_runtime_gives_503_never_2xx_and_the_relay_recovers(
    secure_kafka: SecureKafka, settings_factory: Callable[..., Settings]
) -> None:
    prefix = f"acl-{uuid.uuid4().hex[:8]}"
    topics = [f"{prefix}.transaction", f"{prefix}.pay_link", f"{prefix}.dlq"]
    await create_topics(secure_kafka.plaintext, topics)
    secure_kafka.broker.acl("--add", "User:acluser", RELAY_OPERATIONS, topic_prefix=prefix)
    security = scram("acluser", secure_kafka.certificates.ca)
    settings = settings_factory(
        kafka_bootstrap_servers=(secure_kafka.sasl_ssl,), kafka_security=security, topic_prefix=prefix
    )
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        assert (await post(client, relay.webhook_url, "acl-before")).status_code == 200

        secure_kafka.broker.acl("--remove", "User:acluser", RELAY_OPERATIONS, topic_prefix=prefix)
        await wait_for_readiness(client, relay.url, 503)
        refused = [await post(client, relay.webhook_url, f"acl-during-{n}") for n in range(5)]
        assert [r.status_code for r in refused] == [503] * 5, [r.text for r in refused]
        assert {r.json()["cause"] for r in refused} == {"kafka_error"}

        secure_kafka.broker.acl("--add", "User:acluser", RELAY_OPERATIONS, topic_prefix=prefix)
        await wait_for_readiness(client, relay.url, 200)
        deadline, answer = time.monotonic() + 60, None
        while time.monotonic() < deadline:  # bounded: the producer may be replaced first
            answer = await post(client, relay.webhook_url, "acl-after")
            if answer.status_code == 200:
                break
            await asyncio.sleep(0.5)
        assert answer is not None and answer.status_code == 200, answer and answer.text
    ids = [json.loads(r.value)["id"] for r in await read_topic(secure_kafka.plaintext, f"{prefix}.transaction")]
    assert sorted(ids) == ["acl-after", "acl-before"], "nothing refused was written"


async def test_sasl_sessions_ending_every_5s_lose_and_double_nothing_under_load(
    secure_kafka: SecureKafka, settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """KIP-368: the broker ends each SASL session after REAUTH_MS; aiokafka reconnects instead of re-authenticating."""
    prefix = f"{SECURE_PREFIX}reauth-{uuid.uuid4().hex[:6]}"
    await create_topics(secure_kafka.plaintext, [f"{prefix}.transaction", f"{prefix}.pay_link", f"{prefix}.dlq"])
    security = scram("relay", secure_kafka.certificates.ca)
    settings = settings_factory(
        kafka_bootstrap_servers=(secure_kafka.sasl_ssl,), kafka_security=security, topic_prefix=prefix
    )
    deliveries = make_deliveries(300, seed=368)
    caplog.set_level(logging.WARNING, logger="aiokafka")
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        sender = Sender(relay.webhook_url)
        tasks = []
        for delivery in deliveries:  # 20/s for 15 s: three session lifetimes
            tasks.append(asyncio.create_task(sender.deliver(client, delivery)))
            await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    report = await reconcile(
        f"SASL session ended every {REAUTH_MS // 1000} s (KIP-368)", secure_kafka.plaintext, prefix, deliveries, sender
    )
    closed = [r for r in caplog.records if r.name.startswith("aiokafka") and "closed" in r.getMessage()]
    assert closed, "the broker never ended a session: the scenario did not happen"
    assert report.acknowledged == 300
    assert (report.acknowledged_missing, report.duplicates_of_acknowledged) == (0, 0)


async def test_check_says_unknown_when_describe_configs_is_refused(secure_kafka: SecureKafka) -> None:
    """A principal may Write and Describe without DescribeConfigs: durability is then unknown, not a failure."""
    prefix = f"dc-{uuid.uuid4().hex[:8]}"
    await create_topics(secure_kafka.plaintext, [f"{prefix}.transaction", f"{prefix}.pay_link", f"{prefix}.dlq"])
    secure_kafka.broker.acl("--add", "User:acluser", ["Write", "Describe"], topic_prefix=prefix)
    variables = {
        "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RELAY_KAFKA_SSL_CA_FILE": str(secure_kafka.certificates.ca),
        "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "RELAY_KAFKA_SASL_USERNAME": "acluser",
        "RELAY_KAFKA_SASL_PASSWORD": SCRAM_USERS["acluser"],
    }
    result = run(["check"], serve_env(secure_kafka, secure_kafka.sasl_ssl, prefix, **variables))
    assert result.returncode == 0, result.stdout + result.stderr
    unknown = f"topic {prefix}.transaction: WARNING: min.insync.replicas unknown (DescribeConfigs refused)"
    assert unknown in result.stdout.splitlines()
    assert SCRAM_USERS["acluser"] not in result.stdout + result.stderr


async def test_renewed_credentials_on_disk_are_reported_until_a_restart(
    secure_kafka: SecureKafka, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """The relay keeps what it loaded; the gauge and `check` (run beside it, as in the pod) say the files changed."""
    prefix = f"{SECURE_PREFIX}renew-{uuid.uuid4().hex[:6]}"
    await create_topics(secure_kafka.plaintext, [f"{prefix}.transaction", f"{prefix}.pay_link", f"{prefix}.dlq"])
    password = tmp_path / "password"
    password.write_text(SCRAM_USERS["relay"])
    security = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="relay",
        sasl_password_file=password,
        ssl_ca_file=secure_kafka.certificates.ca,
    )
    settings = settings_factory(
        kafka_bootstrap_servers=(secure_kafka.sasl_ssl,), kafka_security=security, topic_prefix=prefix
    )
    variables = {
        "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "RELAY_KAFKA_SASL_USERNAME": "relay",
        "RELAY_KAFKA_SASL_PASSWORD_FILE": str(password),
        "RELAY_KAFKA_SSL_CA_FILE": str(secure_kafka.certificates.ca),
    }
    async with running_relay(settings) as relay, httpx.AsyncClient() as client:
        env = {
            **serve_env(secure_kafka, secure_kafka.sasl_ssl, prefix, **variables),
            "RELAY_PORT": relay.url.rsplit(":", 1)[1],
        }
        gauge = "mytpe_relay_kafka_credentials_changed"
        assert f"{gauge} 0.0" in (await client.get(relay.url + "/metrics")).text
        before = await asyncio.to_thread(run, ["check"], env)
        assert f"kafka credentials: the relay on 127.0.0.1:{env['RELAY_PORT']} uses the files on disk" in before.stdout

        password.write_text(SCRAM_USERS["relay"] + "\n")  # renewed (same value, new file content)
        assert f"{gauge} 1.0" in (await client.get(relay.url + "/metrics")).text
        after = await asyncio.to_thread(run, ["check"], env)
        warning = (
            f"kafka credentials: WARNING: the files on disk changed after the relay on 127.0.0.1:{env['RELAY_PORT']}"
        )
        assert any(line.startswith(warning) for line in after.stdout.splitlines()), after.stdout
        assert (await post(client, relay.webhook_url, "renew-1")).status_code == 200, "it keeps working meanwhile"
