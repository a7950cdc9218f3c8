#!/usr/bin/env python3
"""The cost of Kafka security: the relay over SASL_SSL with SCRAM-SHA-512 against PLAINTEXT, in one run.

    scripts/bench --security [--duration 10] [--out bench/results]

One broker serves both: its PLAINTEXT listener, and its SASL_SSL listener with SCRAM-SHA-512 and an ACL
on the topics (scripts/localkafka.py, secured mode; certificates made by tests/tls.py). Each relay
(memory dedupe) is driven by the same load generator: requests/s at saturation (closed loop), then p99
at one open-loop rate, half of the PLAINTEXT saturation, so both are compared at the same load.
Reports, never asserts: the machine is shared, so read the ratio of one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from localkafka import LocalKafka, Secured, free_port  # noqa: E402

from bench.load import SECRET, LoadGen, write_templates  # noqa: E402
from bench.run import PYTHON, Target, measure  # noqa: E402
from tests.tls import make_certificates  # noqa: E402

PASSWORD = "bench-scram-secret"  # noqa: S105 - a throwaway loopback broker's test user


def relays(plaintext: str, secured: Secured, ca: Path) -> list[Target]:
    serve = [str(Path(PYTHON).parent / "mytpe-relay"), "serve"]
    base = {
        "RELAY_MYTPE_SECRETS": SECRET,
        "RELAY_HOST": "127.0.0.1",
        "RELAY_DEDUPE_URL": "memory://",
        "RELAY_LOG_LEVEL": "WARNING",
        "RELAY_TOPIC_PREFIX": "bench",
    }
    sasl = {
        "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "RELAY_KAFKA_SASL_USERNAME": "relay",
        "RELAY_KAFKA_SASL_PASSWORD": PASSWORD,
        "RELAY_KAFKA_SSL_CA_FILE": str(ca),
    }
    plain_port, sasl_port = free_port(), free_port()
    return [
        Target(
            "plaintext",
            [serve],
            {**base, "RELAY_KAFKA_BOOTSTRAP_SERVERS": plaintext, "RELAY_PORT": str(plain_port)},
            [plain_port],
            "/readyz",
        ),
        Target(
            "sasl_ssl-scram512",
            [serve],
            {**base, **sasl, "RELAY_KAFKA_BOOTSTRAP_SERVERS": secured.sasl_ssl, "RELAY_PORT": str(sasl_port)},
            [sasl_port],
            "/readyz",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--conns", type=int, default=64, help="connections of the closed loop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load = LoadGen.build()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mytpe-bench-security-") as tmp:
        work = Path(tmp)
        load.templates = write_templates(work)
        certificates = make_certificates(work / "certs")
        secured = Secured(keystore=certificates.broker, truststore=certificates.ca, scram_users={"relay": PASSWORD})
        with LocalKafka(work / "kafka", fast_start=False, secured=secured) as kafka:
            kafka.acl("--add", "User:relay", ["Write", "Describe", "DescribeConfigs", "Create"], topic_prefix="bench.")
            kafka_pid = int(kafka.pid_file.read_text())
            rate = 0
            for target in relays(kafka.bootstrap, secured, certificates.ca):
                print(f"bench: {target.name}", flush=True)
                target.start(work)
                try:
                    run = measure(target, load, kafka_pid, args.duration, args.conns)
                    rate = rate or round(run["rps"] / 2)  # PLAINTEXT comes first: half its saturation, for both
                    run["open"] = load.run(
                        target.urls, mode="open", conns=args.conns, duration=args.duration, warmup=3, rate=rate
                    )
                    run["open_rate"] = rate
                finally:
                    target.stop()
                runs[target.name] = run
                print(f"bench: {target.name}: {run['rps']:.0f} req/s", flush=True)
    summary = summarise(runs, duration=args.duration, conns=args.conns)
    (args.out / "security.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "security.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


def summarise(runs: dict[str, dict[str, Any]], **context: Any) -> dict[str, Any]:
    plain, sasl = runs["plaintext"], runs["sasl_ssl-scram512"]
    return {
        **context,
        "runs": runs,
        "throughput_ratio": sasl["rps"] / plain["rps"],
        "p99_ms": {name: run["open"]["p99_ms"] for name, run in runs.items()},
    }


def markdown(summary: dict[str, Any]) -> str:
    rows = [
        f"| {name} | {run['rps']:,.0f} | {run['cpu_per_10k']:.2f} | {run['kafka_cpu_per_10k']:.2f} |"
        f" {run['open_rate']:,} | {run['open']['p50_ms']:.2f} | {run['open']['p99_ms']:.2f} |"
        for name, run in summary["runs"].items()
    ]
    return "\n".join(
        [
            "| Kafka connection | req/s (closed loop) | relay CPU s/10k | broker CPU s/10k | open-loop rate"
            " | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"SASL_SSL+SCRAM-SHA-512 / PLAINTEXT throughput: **{summary['throughput_ratio']:.2f}x**"
            f" ({summary['duration']:g} s per run, {summary['conns']} connections).",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
