"""Kafka client options, unit by unit: the Amazon MSK IAM token, with the real signer and static credentials."""

from __future__ import annotations

import asyncio
import base64
import sys
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

from relay.kafka import security as security_module
from relay.kafka.security import MskIamToken, client_options
from relay.settings import ConfigError, KafkaSecurity, Secret

ACCESS_KEY = "AKIDEXAMPLEKEY000001"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Static credentials from the environment, and nothing else of the AWS default chain (no files, no IMDS)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def decoded(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


@pytest.mark.usefixtures("aws_credentials")
async def test_the_msk_token_is_a_presigned_connect_url_made_off_the_event_loop_and_reused() -> None:
    threads = []

    def sign(region: str) -> tuple[str, int]:
        threads.append(threading.current_thread())
        token: tuple[str, int] = MSKAuthTokenProvider.generate_auth_token(region)  # the real signer
        return token

    provider = MskIamToken("eu-west-1", sign=sign)
    first = await provider.token()
    url = urlsplit(decoded(first))
    query = parse_qs(url.query)
    assert (url.scheme, url.hostname) == ("https", "kafka.eu-west-1.amazonaws.com")
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith(f"{ACCESS_KEY}/") and query["X-Amz-Signature"][0]
    assert SECRET_KEY not in decoded(first)
    assert threads and threads[0] is not threading.main_thread(), "signed on the event loop's thread"
    assert list(await asyncio.gather(provider.token(), provider.token())) == [first, first]
    assert len(threads) == 1, "a valid token is reused"


async def test_an_expiring_msk_token_is_made_again() -> None:
    calls = []

    def sign(region: str) -> tuple[str, int]:
        calls.append(region)
        return f"token-{len(calls)}", 0  # already expired

    provider = MskIamToken("eu-west-1", sign=sign)
    assert [await provider.token(), await provider.token()] == ["token-1", "token-2"]


def test_client_options_carry_the_msk_provider_and_say_when_the_extra_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    security = KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", oauth_token_provider="aws-msk-iam", aws_region="eu-west-1"
    )
    options = client_options(security)
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", "OAUTHBEARER")
    assert repr(options["sasl_oauth_token_provider"]) == "MskIamToken('eu-west-1')"
    monkeypatch.setitem(sys.modules, "aws_msk_iam_sasl_signer", None)  # as without `pip install 'mytpe-relay[msk]'`
    with pytest.raises(ConfigError, match=r"needs the msk extra: pip install 'mytpe-relay\[msk\]'$"):
        client_options(security)


async def test_the_start_diagnosis_asks_every_bootstrap_server_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: a failed start asked each bootstrap server in turn, up to 10 s each: with three servers
    behind a firewall that drops packets, 30 s after the start's own 30 s, past the startup probe's 60 s, so the
    kubelet killed the pod before it said why. They are asked at once; the first server's cause is said."""
    started: list[str] = []
    answered: list[str] = []  # those still waiting when the last was asked: all of them, if asked at once
    all_started = asyncio.Event()

    async def dropped(host: str, port: int, **_: object) -> None:
        started.append(f"{host}:{port}")
        if len(started) == 3:
            all_started.set()
        await all_started.wait()  # asked one after another, the first is given up (its timeout) before the last
        answered.append(f"{host}:{port}")
        raise OSError(113, "No route to host")

    monkeypatch.setattr(security_module, "create_conn", dropped)
    monkeypatch.setattr(security_module, "DIAGNOSE_TIMEOUT", 0.5)
    servers = ["k1:9092", "k2:9092", "k3:9092"]
    said = await security_module.diagnose(servers, KafkaSecurity())
    assert sorted(answered) == servers and said is not None and "k1:9092" in said


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (OSError(113, "No route to host"), "no route to k1:9092"),
        (OSError(101, "Network is unreachable"), "no route to k1:9092"),
        (ValueError("a SCRAM nonce that is not the client's"), "k1:9092: ValueError"),
    ],
    ids=["no-route", "network-unreachable", "unexpected"],
)
async def test_a_server_the_network_cannot_reach_is_unreachable_not_refusing(
    monkeypatch: pytest.MonkeyPatch, failure: Exception, said: str
) -> None:
    """Review findings: 'No route to host' read as a refusal (`k1:9092: OSError: …`), so a relay with a spool, meant
    to start while Kafka is unreachable, refused to start; and, asked at once, an error of another kind from one
    server escaped the diagnosis (a traceback) even when another server connected."""

    async def failing(host: str, port: int, **_: object) -> object:
        if host == "k2":
            return Connected()
        raise failure

    monkeypatch.setattr(security_module, "create_conn", failing)
    assert (await security_module.diagnose(["k1:9092"], KafkaSecurity()) or "").startswith(said)
    assert await security_module.diagnose(["k1:9092", "k2:9092"], KafkaSecurity()) is None


class Connected:
    def close(self) -> None:
        pass


def test_an_authentication_failure_never_shows_the_sasl_user() -> None:
    """Review finding: the SASL user is declared secret (Confluent Cloud's is its API key) and the docs say it never
    appears in `check`, but an authentication failure's line quoted it, and `check` printed that line."""
    from aiokafka.errors import SaslAuthenticationFailed

    security = KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="CONFLUENTKEY123", sasl_password=Secret("pw-9Lq")
    )
    said = security_module.explain(SaslAuthenticationFailed("bad credentials"), "k1:9092", security)
    refused = security_module.refused("Write on mytpe.transaction", security)
    for line in (said, refused):
        assert "CONFLUENTKEY123" not in line and "pw-9Lq" not in line and "RELAY_KAFKA_SASL_USERNAME" in line
