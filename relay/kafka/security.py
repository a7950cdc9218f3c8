"""Kafka client security: the aiokafka options every Kafka client of the project is built with, and why a
connection failed, in one line.

aiokafka reports every failed connect as "Unable to bootstrap" and logs the cause. `diagnose` connects
once more, alone, to read the cause from the exception itself. It never shows a password, a key or a token.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
from aiokafka.helpers import create_ssl_context

from relay.settings import ConfigError, KafkaSecurity

logger = logging.getLogger(__name__)
DIAGNOSE_TIMEOUT = 10.0


class TokenFile(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka is untyped
    """An OAUTHBEARER token read from a file on every new connection, so a token that a workload-identity
    sidecar renews on disk is used as soon as it is there."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def token(self) -> str:
        return await asyncio.to_thread(self._read)

    def _read(self) -> str:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise KafkaConnectionError(f"cannot read the token file {self.path}: {exc.strerror}") from None
        if not token:
            raise KafkaConnectionError(f"the token file {self.path} is empty")
        return token

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"


class MskIamToken(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka is untyped
    """Amazon MSK IAM: a SigV4-presigned `kafka-cluster:Connect` token from aws-msk-iam-sasl-signer-python (the
    `msk` extra), with credentials from the AWS default chain (IRSA, EKS Pod Identity, instance roles).

    The signer is blocking boto3 code, and the chain may call STS: it runs in a thread, off the event loop. A
    token is valid for 15 minutes, so one is reused until a minute before it expires.
    """

    REFRESH_BEFORE_MS = 60_000

    def __init__(self, region: str, *, sign: Callable[[str], tuple[str, int]] | None = None) -> None:
        self.region = region
        self._sign = sign or _msk_signer()
        self._token: tuple[str, int] | None = None

    async def token(self) -> str:
        cached = self._token
        if cached is None or cached[1] - self.REFRESH_BEFORE_MS <= time.time() * 1000:
            cached = self._token = await asyncio.to_thread(self._sign, self.region)
        return cached[0]

    def __repr__(self) -> str:
        return f"MskIamToken({self.region!r})"


def _msk_signer() -> Callable[[str], tuple[str, int]]:
    try:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider  # noqa: PLC0415 - an optional extra, loaded if used
    except ImportError:
        raise ConfigError(
            "RELAY_KAFKA_OAUTH_TOKEN_PROVIDER=aws-msk-iam needs the msk extra: pip install 'mytpe-relay[msk]'"
        ) from None
    sign: Callable[[str], tuple[str, int]] = MSKAuthTokenProvider.generate_auth_token
    return sign


def fingerprint(security: KafkaSecurity) -> bytes:
    """A digest of every file the client options are read from (the token file aside: it is read on every
    connection anyway). Held in memory to tell when the material on disk changed; never shown."""
    digest = hashlib.sha256()
    for variable, path in security.files():
        if variable == "RELAY_KAFKA_OAUTH_TOKEN_FILE":
            continue
        try:
            content = path.read_bytes()
        except OSError:
            content = b"\0unreadable"
        digest.update(variable.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.digest()


def client_options(security: KafkaSecurity) -> dict[str, Any]:
    """The keyword arguments of AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaClient for `security`.

    Files are read now: a client built later (a replaced producer, the next command) reads them again.
    Raises ConfigError, naming the variable, for a certificate, key or password file that cannot be used.
    """
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.tls:
        options["ssl_context"] = tls_context(security)
    if security.sasl:
        options["sasl_mechanism"] = security.sasl_mechanism
        if security.oauth_token_file is not None:
            options["sasl_oauth_token_provider"] = TokenFile(security.oauth_token_file)
        elif security.oauth_token_provider is not None and security.aws_region is not None:  # aws-msk-iam
            options["sasl_oauth_token_provider"] = MskIamToken(security.aws_region)
        else:
            options["sasl_plain_username"] = security.sasl_username
            options["sasl_plain_password"] = _password(security)
    return options


def _password(security: KafkaSecurity) -> str:
    if security.sasl_password is not None:
        return security.sasl_password.reveal()
    if security.sasl_password_file is None:  # KafkaSecurity requires one of the two; this keeps the types honest
        raise ConfigError("RELAY_KAFKA_SASL_PASSWORD or RELAY_KAFKA_SASL_PASSWORD_FILE: required")
    return _read_secret("RELAY_KAFKA_SASL_PASSWORD_FILE", security.sasl_password_file)


def _read_secret(variable: str, path: Path) -> str:
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{variable}: {path} is empty")
    return value


def tls_context(security: KafkaSecurity) -> ssl.SSLContext:
    """The system trust store, or the CA file; the client certificate and key when given. Hostname checks stay on."""
    key_password = None
    if security.ssl_key_password_file is not None:
        key_password = _read_secret("RELAY_KAFKA_SSL_KEY_PASSWORD_FILE", security.ssl_key_password_file)
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=_str(security.ssl_ca_file))
    except ssl.SSLError as exc:
        problem = f"{security.ssl_ca_file} holds no usable CA certificate ({exc.reason})"
        raise ConfigError(f"RELAY_KAFKA_SSL_CA_FILE: {problem}") from None
    if security.ssl_cert_file is not None:
        try:
            context.load_cert_chain(
                str(security.ssl_cert_file), keyfile=_str(security.ssl_key_file), password=key_password
            )
        except ssl.SSLError as exc:
            raise ConfigError(
                "RELAY_KAFKA_SSL_CERT_FILE/RELAY_KAFKA_SSL_KEY_FILE: the certificate and key cannot be used"
                f" ({exc.reason}; an encrypted key needs RELAY_KAFKA_SSL_KEY_PASSWORD_FILE)"
            ) from None
    return context


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


async def diagnose(bootstrap_servers: Sequence[str], security: KafkaSecurity) -> str | None:
    """Why no connection to the cluster can be made, in a few words (the first server's cause); None when one can
    be made now. Every server is asked at once: DIAGNOSE_TIMEOUT at most, however many (a start's failure must
    be said within the startup probe's time)."""
    options = client_options(security)
    causes = await asyncio.gather(*(_connects(server, security, options) for server in bootstrap_servers))
    return None if None in causes else next(iter(causes), None)


async def _connects(server: str, security: KafkaSecurity, options: dict[str, Any]) -> str | None:
    """None once a connection to `server` is made (and closed); else why not."""
    host, _, port = server.rpartition(":")
    try:
        conn = await asyncio.wait_for(
            create_conn(host.strip("[]"), int(port), request_timeout_ms=int(DIAGNOSE_TIMEOUT * 1000), **options),
            DIAGNOSE_TIMEOUT,
        )
    except Exception as exc:  # any failure is this server's cause: one line, never a traceback
        return explain(exc, server, security)
    conn.close()
    return None


def explain(exc: BaseException, server: str, security: KafkaSecurity) -> str:
    """One line for a failed connection to `server`. Names the mechanism and the files; never a secret, nor the
    SASL user (on Confluent Cloud, its API key)."""
    if isinstance(exc, SaslAuthenticationFailed):
        return f"authentication failed ({_who(security)}): {_broker_says(exc)}"
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"the listener at {server} does not offer {security.sasl_mechanism}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _verification(exc, server, security)
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {server} failed: {exc.reason or exc}"
    if isinstance(exc, KafkaConnectionError) and "closed" in str(exc):
        return _closed(server, security)
    return _unreachable(exc, server)


def _closed(server: str, security: KafkaSecurity) -> str:
    """The broker hung up during the handshake: on a TLS listener, most often over the client certificate."""
    if not security.tls:
        return f"{server} closed the connection: does it expect TLS or SASL? (RELAY_KAFKA_SECURITY_PROTOCOL)"
    if security.ssl_cert_file is None:
        return f"{server} closed the TLS connection: it may require a client certificate (RELAY_KAFKA_SSL_CERT_FILE)"
    return f"{server} closed the TLS connection: it refused the client certificate {security.ssl_cert_file}"


def _unreachable(exc: BaseException, server: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer from {server} within {DIAGNOSE_TIMEOUT:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {server}"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):  # the network's, for now
        return f"no route to {server} ({exc.strerror})"
    return f"{server}: {type(exc).__name__}: {exc}"


def _verification(exc: ssl.SSLCertVerificationError, server: str, security: KafkaSecurity) -> str:
    message = str(exc.verify_message or exc.reason)
    trust = security.ssl_ca_file or "the system trust store (RELAY_KAFKA_SSL_CA_FILE is unset)"
    if "mismatch" in message:
        return f"TLS: the broker's certificate does not match the host of {server} ({message})"
    if "expired" in message:
        return f"TLS: the broker's certificate has expired ({server})"
    return f"TLS: the broker's certificate at {server} is not trusted by {trust} ({message})"


def _who(security: KafkaSecurity) -> str:
    if security.sasl_mechanism == "OAUTHBEARER" and security.oauth_token_provider is not None:
        return f"OAUTHBEARER, {security.oauth_token_provider} token for {security.aws_region}"
    if security.sasl_mechanism == "OAUTHBEARER":
        return f"OAUTHBEARER, token from {security.oauth_token_file}"
    return f"{security.sasl_mechanism} as the user RELAY_KAFKA_SASL_USERNAME names"  # never shown: an API key, maybe


def _broker_says(exc: BaseException) -> str:
    """The broker's own words, without aiokafka's error-class prefix."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("[Error") and ": " in text else text


def refused(what: str, security: KafkaSecurity) -> str:
    """An authorization refusal at startup: who asked, what was refused, and what to grant."""
    who = _who(security) if security.sasl else f"{security.protocol}, the principal of the client certificate"
    return f"not authorized ({who}): {what}; grant the relay's principal Write on its topics"


PRODUCER_REFUSED = "the broker refused the idempotent producer (InitProducerId: ClusterAuthorizationFailed)"
