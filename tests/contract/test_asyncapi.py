"""docs/asyncapi.yaml: generated from the code, valid for the official AsyncAPI parser, examples valid."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from relay.errors import KafkaRefused
from relay.metrics import Metrics
from relay.mytpe import samples
from relay.settings import Settings
from relay.spool.drainer import Drainer
from relay.spool.spool import Spool
from relay.spool.store import FILE, Pending
from relay.types import Ack
from tests.conftest import require_tool
from tests.fakes import FakePublisher
from tests.helpers import SECRET
from tests.schemas import record_errors

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import asyncapi  # noqa: E402

VALIDATOR = ROOT / "tests/contract/validate_asyncapi.mjs"
DOC = ROOT / "docs/asyncapi.yaml"


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    node = require_tool("node")
    if not (ROOT / "tests/contract/node_modules").is_dir():
        message = "tests/contract/node_modules is missing (scripts/install runs npm ci there)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    env = {**os.environ, "NODE_PATH": str(ROOT / "tests/contract/node_modules")}
    return subprocess.run(
        [node, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def loaded() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    return document


def test_the_committed_document_is_the_generated_one() -> None:
    assert DOC.read_text(encoding="utf-8") == asyncapi.render(), "run .venv/bin/python scripts/asyncapi.py"


def test_the_official_parser_accepts_it() -> None:
    done = validate(DOC)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [line for line in done.stdout.splitlines() if line.startswith(("error", "warning"))], done.stdout
    assert done.stdout.splitlines()[-1] == (
        "VALID asyncapi 3.0.0: transaction={prefix}.transaction pay_link={prefix}.pay_link"
        " routed={prefix}.{topic} dlq={prefix}.dlq; 17 messages"
    )


def test_the_parser_refuses_a_dangling_schema_reference(tmp_path: Path) -> None:
    document = loaded()
    payload = document["components"]["messages"]["transaction.completed"]["payload"]
    payload["schema"]["allOf"][0]["$ref"] = "../relay/schemas/missing.json"
    (tmp_path / "docs").mkdir()
    shutil.copytree(ROOT / "relay/schemas", tmp_path / "relay/schemas")
    (tmp_path / "docs/asyncapi.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    done = validate(tmp_path / "docs/asyncapi.yaml")
    assert done.returncode == 1
    assert "error invalid-ref components/messages/transaction.completed/payload/schema/allOf/0/$ref" in done.stdout


def test_every_example_is_a_record_the_schemas_accept() -> None:
    messages = loaded()["components"]["messages"]
    examples = {m["name"]: e["payload"] for m in messages.values() for e in m.get("examples", [])}
    assert sorted(examples) == sorted(samples.EVENTS)
    for event, payload in examples.items():
        assert payload["type"] == f"app.mytpe.pay.{event}"
        assert record_errors(json.dumps(payload).encode()) == [], event
    broken = {**examples["transaction.completed"], "specversion": "0.3"}
    assert record_errors(json.dumps(broken).encode()) == ["specversion: '1.0' was expected"]


def test_channels_are_the_topics_the_relay_writes() -> None:
    document = loaded()
    addresses = {c["address"].replace("{prefix}", "mytpe") for c in document["channels"].values()}
    default_topics = Settings.from_env({"RELAY_MYTPE_SECRETS": SECRET}).router().topics()
    assert addresses == {*default_topics, "mytpe.{topic}"}
    names = {m["name"] for m in document["components"]["messages"].values()}
    assert names >= set(samples.EVENTS) | {"transaction.paid", "routed-event", "quarantined"}


def test_every_record_may_carry_the_w3c_trace_headers_of_its_hop() -> None:
    components = loaded()["components"]
    headers = [components["messageTraits"]["cloudEventRecord"]["headers"]]
    headers += [components["messages"][name]["headers"] for name in ("quarantined", "spool-refused")]
    good = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "mytpe=1"}
    for schema in headers:
        assert not {"traceparent", "tracestate"} & set(schema["required"]), "optional: absent when tracing is off"
        validator = Draft7Validator(schema)
        assert _errors(validator, good) == []
        zeros = ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01")
        for zero in zeros:
            assert _errors(validator, {**good, "traceparent": zero}) == ["traceparent"]
        assert _errors(validator, {**good, "traceparent": "garbage"}) == ["traceparent"]


def _errors(validator: Draft7Validator, headers: dict[str, str]) -> list[str]:
    """The header names refused, ignoring the other required headers and their values."""
    return sorted({str(e.path[0]) for e in validator.iter_errors(headers) if e.path and e.path[0] in headers})


QUARANTINED_HEADERS = [
    ("reason", b"unroutable_event"),
    ("x-mytpepay-delivery-id", b"d-1"),
    ("x-mytpepay-timestamp", b"1700000000"),
    ("x-mytpepay-signature", b"sha256=" + b"ab" * 32),
]


@pytest.mark.parametrize("fault", ["damaged", "refused", "a-dlq-record-damaged"])
async def test_a_spooled_row_the_drainer_moves_to_the_dlq_is_one_of_its_messages(tmp_path: Path, fault: str) -> None:
    """Review finding: a spooled row that cannot be read back goes to the DLQ with reason `spool_damaged` and its
    columns as the spool held them; no message of the DLQ channel described it (`spool_damaged` was in no enum,
    and the quarantined message requires MyTPE's signature headers, which a spooled row does not carry). Review
    of that: a spooled DLQ record (a webhook quarantined while Kafka was down) whose topic was damaged went with its
    own `reason` header and the drainer's: two."""
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    dlq_record = fault == "a-dlq-record-damaged"
    topic, spooled = (
        ("mytpe.dlq", QUARANTINED_HEADERS) if dlq_record else ("mytpe.transaction", [("content-type", b"json")])
    )
    await spool.put(Pending(topic, b"k", b"v", spooled))
    await spool.close()
    if fault != "refused":
        with sqlite3.connect(tmp_path / FILE) as db:
            db.execute("UPDATE spool SET topic = x'ff'" if dlq_record else "UPDATE spool SET headers = x'00ff'")
        db.close()
    publisher = RefusesTopic("mytpe.transaction" if fault == "refused" else "")
    spool = Spool(tmp_path, max_bytes=10_000_000, metrics=Metrics())
    await spool.open()
    try:
        assert await Drainer(spool, publisher, Metrics(), dlq="mytpe.dlq").drain(timeout=5) == 0
    finally:
        await spool.close()
    (moved,) = publisher.sent
    assert [name for name, _ in moved.headers].count("reason") == 1, moved.headers
    headers = {name: value.decode("latin-1") for name, value in moved.headers}
    messages = loaded()["components"]["messages"]
    dlq = [ref["$ref"].rsplit("/", 1)[1] for ref in loaded()["channels"]["dlq"]["messages"].values()]
    fits = [name for name in dlq if not list(Draft7Validator(messages[name]["headers"]).iter_errors(headers))]
    assert fits == [f"spool-{fault.rsplit('-', 1)[-1]}"], headers


class RefusesTopic(FakePublisher):
    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused = refused

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Ack:
        if topic == self.refused:
            raise KafkaRefused("RecordTooLargeError")
        return await super().publish(topic, key, value, headers)
