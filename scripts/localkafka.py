#!/usr/bin/env python3
"""A real single-node Apache Kafka broker (KRaft) on loopback, from Kafka's own jars.

The jars are resolved from Maven Central by Maven (`scripts/kafka/pom.xml`) and cached in the
user's Maven repository; the resolved classpath is cached under `.cache/`. The broker is formatted
(`kafka.tools.StorageTool format`) and then started with `kafka.Kafka`, exactly as Kafka's own
`kafka-storage.sh` and `kafka-server-start.sh` do.

Used by the test suite (imported) and by `scripts/run` (command line):

    python scripts/localkafka.py classpath [--version 3.9.1]
    python scripts/localkafka.py start --dir DIR [--port 9092] [--version 3.9.1]   # returns once ready
    python scripts/localkafka.py stop --dir DIR

The Kafka release is `--version`, else `KAFKA_VERSION`, else DEFAULT_VERSION (a current 4.x).

Standard library only, so it runs before the project's own dependencies are installed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "scripts" / "kafka" / "pom.xml"
LOG4J = ROOT / "scripts" / "kafka" / "log4j.properties"
CACHE = ROOT / ".cache"
READY_LINE = "Kafka Server started"
DEFAULT_VERSION = "4.1.1"
"""The Kafka the suite and the quickstart run by default (`KAFKA_VERSION` picks another, e.g. 3.9.1)."""
TESTED_VERSIONS = ("4.1.1", "3.9.1")
"""What CI runs: the default, and the last 3.x line for the Kafka-facing tests (docs/development.md)."""
VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")


_PICK = random.SystemRandom()  # not the `random` module's state, which hypothesis seeds in tests


def free_port() -> int:
    """A loopback port nothing is bound to, picked below the kernel's ephemeral range.

    `bind(0)` picks from the ephemeral range, the one the kernel also draws from for the local port of
    every outgoing connection (a Kafka or Redis client, an HTTP request). Such a port could be taken by
    one before the server meant for it binds it, or before that server binds it again on a restart.
    A port below the range is never given away by the kernel: only another explicit bind can take it.
    """
    ephemeral_low = _ephemeral_low()
    for _ in range(500):
        port = _PICK.randrange(10000, ephemeral_low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in 10000-{ephemeral_low - 1}")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default is 32768-60999)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return low if low > 11000 else 32768


def kafka_version() -> str:
    """The Kafka version to run: `KAFKA_VERSION` if set, else DEFAULT_VERSION."""
    version = os.environ.get("KAFKA_VERSION", "").strip() or DEFAULT_VERSION
    if not VERSION.fullmatch(version):
        raise ValueError(f"KAFKA_VERSION={version!r}: expected a release such as {DEFAULT_VERSION}")
    return version


def classpath(version: str | None = None) -> str:
    """Resolve (and cache) the classpath of Kafka `version` (default: kafka_version()); downloads on first use."""
    version = version or kafka_version()
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    cached = CACHE / f"kafka-classpath-{version}-{digest}.txt"
    if cached.exists():
        text = cached.read_text().strip()
        if all(Path(jar).exists() for jar in text.split(os.pathsep)):
            return text
    CACHE.mkdir(exist_ok=True)
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:build-classpath", f"-Dkafka.version={version}"]
    cmd.append(f"-Dmdep.outputFile={cached}")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"maven could not resolve Kafka's jars:\n{result.stdout}\n{result.stderr}")
    return cached.read_text().strip()


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


@dataclass
class Secured:
    """Listeners for security tests, beside the PLAINTEXT one that fixtures use (its ANONYMOUS principal is a
    super user): SASL_SSL with SCRAM-SHA-256, SCRAM-SHA-512, PLAIN and OAUTHBEARER (Kafka's unsecured, test-only
    token validator), and SSL with required client certificates (the principal is the certificate's CN).
    StandardAuthorizer applies ACLs. Certificates are PEM files made by the caller: the key unencrypted PKCS#8,
    and a SubjectAlternativeName on every certificate, as Kafka requires."""

    keystore: Path
    """The broker's key and certificate chain, one PEM file."""
    truststore: Path
    """The CA that signs the broker's and the clients' certificates."""
    scram_users: dict[str, str] = field(default_factory=dict)
    """name -> password, for SCRAM-SHA-256 and SCRAM-SHA-512, written at format time (KIP-900)."""
    plain_users: dict[str, str] = field(default_factory=dict)
    sasl_ssl_port: int = field(default_factory=free_port)
    mtls_port: int = field(default_factory=free_port)
    reauth_ms: int | None = None
    """The broker's connections.max.reauth.ms on the SASL_SSL listener (KIP-368), or none."""

    @property
    def sasl_ssl(self) -> str:
        return f"localhost:{self.sasl_ssl_port}"

    @property
    def mtls(self) -> str:
        return f"localhost:{self.mtls_port}"

    def properties(self, port: int, controller_port: int) -> list[str]:
        plain = " ".join(f'user_{name}="{password}"' for name, password in self.plain_users.items())
        modules = "org.apache.kafka.common.security"
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},"
            f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port},MTLS://127.0.0.1:{self.mtls_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://{self.sasl_ssl},MTLS://{self.mtls}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.truststore}",
            "listener.name.mtls.ssl.client.auth=required",
            "ssl.principal.mapping.rules=RULE:^CN=([^,]+),.*$/$1/,DEFAULT",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN,OAUTHBEARER",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={modules}.scram.ScramLoginModule required;",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={modules}.scram.ScramLoginModule required;",
            f"listener.name.sasl_ssl.plain.sasl.jaas.config={modules}.plain.PlainLoginModule required {plain};",
            f"listener.name.sasl_ssl.oauthbearer.sasl.jaas.config={modules}.oauthbearer.OAuthBearerLoginModule"
            ' required unsecuredLoginStringClaim_sub="admin";',
            *([f"listener.name.sasl_ssl.connections.max.reauth.ms={self.reauth_ms}"] if self.reauth_ms else []),
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users=User:ANONYMOUS;User:admin",
        ]

    def scram_arguments(self) -> list[str]:
        return [
            argument
            for name, password in self.scram_users.items()
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
            for argument in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]


@dataclass
class LocalKafka:
    """One KRaft broker+controller process; `data_dir` holds config, data, log and pid."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    heap: str = "512m"
    # Tests want a broker up fast (C1 only, serial GC); a benchmark wants it efficient (the JVM's defaults).
    fast_start: bool = True
    secured: Secured | None = None
    version: str = field(default_factory=kafka_version)
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    def _properties(self) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                *self._listeners(),
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={self.data_dir / 'data'}",
                "num.partitions=3",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=3",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "min.insync.replicas=1",
                "group.initial.rebalance.delay.ms=0",
                "",
            ]
        )

    def _listeners(self) -> list[str]:
        if self.secured is not None:
            return self.secured.properties(self.port, self.controller_port)
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]

    def acl(self, change: str, principal: str, operations: list[str], *, topic_prefix: str) -> None:
        """`--add` or `--remove` an ACL allowing `principal` the operations on the topics named `topic_prefix`*.

        Kafka's own AclCommand, through the PLAINTEXT listener (whose principal is a super user).
        """
        tool = "org.apache.kafka.tools.AclCommand"  # kafka-tools from 4.0; in core before
        if self.version.startswith(("2.", "3.")):
            tool = "kafka.admin.AclCommand"
        cmd = self._java(
            tool,
            f"--bootstrap-server={self.bootstrap}",
            change,
            *(("--force",) if change == "--remove" else ()),
            f"--allow-principal={principal}",
            *(f"--operation={operation}" for operation in operations),
            "--resource-pattern-type=prefixed",
            f"--topic={topic_prefix}",
        )
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise RuntimeError(f"AclCommand {change} failed:\n{result.stdout}\n{result.stderr}")

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            "-Xms128m",
            *(("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1") if self.fast_start else ()),
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{LOG4J}",
            "-cp",
            classpath(self.version),
            main,
            *args,
        ]

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def format(self) -> None:
        """Write the config and format storage (only once per data dir)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(self._properties())
        if (self.data_dir / "data" / "meta.properties").exists():
            return
        # `--cluster-id=` form: a base64url id may start with "-", which argparse would take for an option.
        scram = self.secured.scram_arguments() if self.secured is not None else []
        cmd = self._java(
            "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}", "-c", str(config), *scram
        )
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise RuntimeError(f"kafka storage format failed:\n{result.stdout}\n{result.stderr}")

    def start(self, timeout: float = 90.0) -> None:
        """Format if needed, start the broker and return once it serves on its port."""
        self.format()
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603
                self._java("kafka.Kafka", str(self.data_dir / "server.properties")),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(str(self.process.pid))
        self._wait_ready(offset, timeout)

    def _wait_ready(self, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"kafka exited with {self.process.returncode}; see {self.log_file}")
            with self.log_file.open("rb") as log:
                log.seek(offset)
                started = READY_LINE.encode() in log.read()
            if started and _accepts(self.port):
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"kafka not ready within {timeout:.0f}s; see {self.log_file}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL past `timeout`). Idempotent."""
        proc = self.process
        if proc is None:
            _stop_pid(self.pid_file, timeout)
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.process = None
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        """Freeze the broker process (SIGSTOP): connections stay open, nothing answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_pid(pid_file: Path, timeout: float) -> None:
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    versions = f"Kafka release (default: $KAFKA_VERSION, else {DEFAULT_VERSION}; CI tests {', '.join(TESTED_VERSIONS)})"
    paths = sub.add_parser("classpath", help="resolve Kafka's jars with Maven and print the classpath")
    paths.add_argument("--version", default=None, help=versions)
    start = sub.add_parser("start", help="start a broker in the background and wait until it is ready")
    start.add_argument("--version", default=None, help=versions)
    start.add_argument("--dir", type=Path, required=True)
    start.add_argument("--port", type=int, default=9092)
    start.add_argument("--controller-port", type=int, default=0)
    stop = sub.add_parser("stop", help="stop the broker started in --dir")
    stop.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "classpath":
        print(classpath(args.version))
        return 0
    if args.command == "start":
        version = args.version or kafka_version()
        broker = LocalKafka(
            args.dir.resolve(), port=args.port, controller_port=args.controller_port or free_port(), version=version
        )
        if _accepts(args.port):
            print(f"port {args.port} is already in use", file=sys.stderr)
            return 1
        broker.start()
        print(f"kafka {version} ready on {broker.bootstrap} (pid {broker.pid_file.read_text()}, log {broker.log_file})")
        return 0
    LocalKafka(args.dir.resolve(), port=0, controller_port=0, version=DEFAULT_VERSION).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
