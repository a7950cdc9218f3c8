"""How every Kafka client of the project authenticates and encrypts: the `RELAY_KAFKA_*` security settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from relay.settings.declare import setting
from relay.settings.parsers import secret_as_given
from relay.settings.values import ConfigError, Secret, readable

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
TOKEN_PROVIDERS = ("aws-msk-iam",)


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(f"`{value}`" for value in values)


@dataclass(frozen=True, kw_only=True)
class KafkaSecurity:
    """How every Kafka client of the project authenticates and encrypts. Checked whole at startup: aiokafka
    itself connects without authentication when SASL options come without a SASL protocol."""

    protocol: str = setting(
        "RELAY_KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        str.upper,
        "how the clients reach the brokers ([Kafka security](#kafka-security))",
        kind=_one_of(PROTOCOLS),
    )
    sasl_mechanism: str | None = setting(
        "RELAY_KAFKA_SASL_MECHANISM", None, str.upper, "required with a SASL protocol", kind=_one_of(MECHANISMS)
    )
    sasl_username: str | None = setting(
        "RELAY_KAFKA_SASL_USERNAME",
        None,
        str,
        "the SASL user (PLAIN, SCRAM)",
        secret=True,  # Confluent Cloud's user is its API key: shown as `(set)`, like the password
    )
    sasl_password: Secret | None = setting(
        "RELAY_KAFKA_SASL_PASSWORD",
        None,
        None,
        "its password (or the next variable)",
        read=secret_as_given,
        secret=True,
    )
    sasl_password_file: Path | None = setting(
        "RELAY_KAFKA_SASL_PASSWORD_FILE", None, Path, "a file holding the SASL password (one of the two)"
    )
    ssl_ca_file: Path | None = setting(
        "RELAY_KAFKA_SSL_CA_FILE",
        None,
        Path,
        "PEM CA bundle the brokers are verified against; unset: the system trust store",
    )
    ssl_cert_file: Path | None = setting("RELAY_KAFKA_SSL_CERT_FILE", None, Path, "client certificate (mTLS)")
    ssl_key_file: Path | None = setting(
        "RELAY_KAFKA_SSL_KEY_FILE", None, Path, "the client certificate's key; the key may be in the certificate file"
    )
    ssl_key_password_file: Path | None = setting(
        "RELAY_KAFKA_SSL_KEY_PASSWORD_FILE", None, Path, "a file holding the key's password, for an encrypted key"
    )
    oauth_token_file: Path | None = setting(
        "RELAY_KAFKA_OAUTH_TOKEN_FILE",
        None,
        Path,
        "OAUTHBEARER: a file holding the token, read again on every new connection",
    )
    oauth_token_provider: str | None = setting(
        "RELAY_KAFKA_OAUTH_TOKEN_PROVIDER",
        None,
        str.lower,
        "OAUTHBEARER without a file: `aws-msk-iam` makes Amazon MSK IAM tokens (`pip install 'mytpe-relay[msk]'`)",
        kind=_one_of(TOKEN_PROVIDERS),
    )
    aws_region: str | None = setting("RELAY_KAFKA_AWS_REGION", None, str, "the AWS region of `aws-msk-iam` tokens")

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"RELAY_KAFKA_SECURITY_PROTOCOL: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.sasl_mechanism is not None and self.sasl_mechanism not in MECHANISMS:
            raise ConfigError(
                f"RELAY_KAFKA_SASL_MECHANISM: {self.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}"
            )
        self._check_unused()
        if self.sasl:
            self._check_sasl()
        if self.ssl_key_file is not None and self.ssl_cert_file is None:
            raise ConfigError(
                "RELAY_KAFKA_SSL_KEY_FILE: needs RELAY_KAFKA_SSL_CERT_FILE, the certificate it belongs to"
            )
        if self.ssl_key_password_file is not None and self.ssl_cert_file is None:
            raise ConfigError("RELAY_KAFKA_SSL_KEY_PASSWORD_FILE: needs RELAY_KAFKA_SSL_CERT_FILE")
        for variable, path in self.files():
            readable(variable, path)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def _check_unused(self) -> None:
        """A setting the protocol would ignore is a mistake, never silently dropped."""
        sasl = {
            "RELAY_KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "RELAY_KAFKA_SASL_USERNAME": self.sasl_username,
            "RELAY_KAFKA_SASL_PASSWORD": self.sasl_password,
            "RELAY_KAFKA_SASL_PASSWORD_FILE": self.sasl_password_file,
            "RELAY_KAFKA_OAUTH_TOKEN_FILE": self.oauth_token_file,
            "RELAY_KAFKA_OAUTH_TOKEN_PROVIDER": self.oauth_token_provider,
            "RELAY_KAFKA_AWS_REGION": self.aws_region,
        }
        tls = {
            "RELAY_KAFKA_SSL_CA_FILE": self.ssl_ca_file,
            "RELAY_KAFKA_SSL_CERT_FILE": self.ssl_cert_file,
            "RELAY_KAFKA_SSL_KEY_FILE": self.ssl_key_file,
            "RELAY_KAFKA_SSL_KEY_PASSWORD_FILE": self.ssl_key_password_file,
        }
        for group, used, wanted in (
            (sasl, self.sasl, "SASL_SSL or SASL_PLAINTEXT"),
            (tls, self.tls, "SSL or SASL_SSL"),
        ):
            unused = next((name for name, value in group.items() if value is not None), None)
            if unused is not None and not used:
                raise ConfigError(
                    f"{unused}: set, but RELAY_KAFKA_SECURITY_PROTOCOL is {self.protocol}, which would not use it"
                    f" (use {wanted})"
                )

    def _check_sasl(self) -> None:
        mechanism = self.sasl_mechanism
        if mechanism is None:
            raise ConfigError(f"RELAY_KAFKA_SASL_MECHANISM: required with {self.protocol} ({', '.join(MECHANISMS)})")
        if mechanism == "OAUTHBEARER":
            self._check_token_source()
            extra = self.sasl_username is not None or self.sasl_password is not None or self.sasl_password_file
            if extra:
                raise ConfigError(
                    "RELAY_KAFKA_SASL_USERNAME/PASSWORD: not used by OAUTHBEARER (the token names the user)"
                )
            return
        if self.oauth_token_file is not None or self.oauth_token_provider is not None:
            raise ConfigError(f"RELAY_KAFKA_OAUTH_TOKEN_FILE/_PROVIDER: only for OAUTHBEARER, not {mechanism}")
        if not self.sasl_username:
            raise ConfigError(f"RELAY_KAFKA_SASL_USERNAME: required with {mechanism}")
        if (self.sasl_password is None) == (self.sasl_password_file is None):
            raise ConfigError(
                f"RELAY_KAFKA_SASL_PASSWORD or RELAY_KAFKA_SASL_PASSWORD_FILE: exactly one is required with {mechanism}"
            )

    def _check_token_source(self) -> None:
        if (self.oauth_token_file is None) == (self.oauth_token_provider is None):
            raise ConfigError(
                "RELAY_KAFKA_OAUTH_TOKEN_FILE or RELAY_KAFKA_OAUTH_TOKEN_PROVIDER: exactly one is required with"
                " RELAY_KAFKA_SASL_MECHANISM=OAUTHBEARER"
            )
        if self.oauth_token_provider is None:
            if self.aws_region is not None:
                raise ConfigError("RELAY_KAFKA_AWS_REGION: only for RELAY_KAFKA_OAUTH_TOKEN_PROVIDER=aws-msk-iam")
            return
        if self.oauth_token_provider not in TOKEN_PROVIDERS:
            known = ", ".join(TOKEN_PROVIDERS)
            raise ConfigError(f"RELAY_KAFKA_OAUTH_TOKEN_PROVIDER: {self.oauth_token_provider!r} is not one of {known}")
        if not self.aws_region:
            raise ConfigError("RELAY_KAFKA_AWS_REGION: required with RELAY_KAFKA_OAUTH_TOKEN_PROVIDER=aws-msk-iam")
        if self.protocol != "SASL_SSL":
            raise ConfigError("RELAY_KAFKA_SECURITY_PROTOCOL: aws-msk-iam needs SASL_SSL (MSK's IAM listener is TLS)")

    def files(self) -> list[tuple[str, Path]]:
        """(variable, path) of every file these settings read: passwords, keys, certificates, the token."""
        files = {
            "RELAY_KAFKA_SASL_PASSWORD_FILE": self.sasl_password_file,
            "RELAY_KAFKA_SSL_CA_FILE": self.ssl_ca_file,
            "RELAY_KAFKA_SSL_CERT_FILE": self.ssl_cert_file,
            "RELAY_KAFKA_SSL_KEY_FILE": self.ssl_key_file,
            "RELAY_KAFKA_SSL_KEY_PASSWORD_FILE": self.ssl_key_password_file,
            "RELAY_KAFKA_OAUTH_TOKEN_FILE": self.oauth_token_file,
        }
        return [(variable, path) for variable, path in files.items() if path is not None]
