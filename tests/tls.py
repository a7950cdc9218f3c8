"""Test certificates, made in Python with trustme, in the forms Kafka accepts: unencrypted PKCS#8 keys, and a
SubjectAlternativeName on every certificate (Java refuses a client certificate whose SAN is empty)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key


def _pkcs8(key_pem: bytes) -> bytes:
    key = load_pem_private_key(key_pem, password=None)
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _write(path: Path, cert: trustme.LeafCert) -> Path:
    path.write_bytes(_pkcs8(cert.private_key_pem.bytes()) + b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    return path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    """The CA the broker trusts and the clients are told to trust."""
    broker: Path
    """The broker's key and chain; its SAN is `localhost` only, so `127.0.0.1` is a hostname mismatch."""
    client: Path
    """A client's key and chain, CN=relay: the principal User:relay on the mTLS listener."""
    stranger_ca: Path
    """A CA nobody trusts."""
    stranger_client: Path
    """A client certificate signed by the stranger CA."""


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca, stranger = trustme.CA(organization_unit_name="mytpe-relay tests"), trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    stranger.cert_pem.write_to_path(str(directory / "stranger-ca.pem"))
    client = ca.issue_cert("relay.clients.invalid", common_name="relay", organization_unit_name="clients")
    outsider = stranger.issue_cert("relay.clients.invalid", common_name="relay", organization_unit_name="clients")
    return Certificates(
        ca=directory / "ca.pem",
        broker=_write(directory / "broker.pem", ca.issue_cert("localhost", organization_unit_name="brokers")),
        client=_write(directory / "client.pem", client),
        stranger_ca=directory / "stranger-ca.pem",
        stranger_client=_write(directory / "stranger-client.pem", outsider),
    )
