"""Example consumer: keep each transaction's latest status from `mytpe.transaction`.

It shows the three rules of consuming relay topics, with `relay.consumer`:
1. parse each record into a typed event, and skip what is not one (never crash on a record);
2. handle each CloudEvents id once (`Idempotent`): Kafka and replays deliver at least once;
3. apply a status only if it is later than the one held (`compare`): MyTPE does not order events.
What no rule decides goes to a person, once per event id: a conflict (refused after completed), a status this
version does not know (`transaction.paid` of the newer API), members of `data` the typed view could not read, a
transaction event with no transaction it can read, an event this parser cannot read at all (JSON nested past
about 990 levels: once per record, not per id, since its id is not read). Each is an ATTENTION line on stderr
and an entry in `attention`, which ends with the process: a real service writes it to a table and alerts.
Each record is handled inside `process_span`, which continues the relay's trace when there is one: with the
`mytpe-relay[otel]` extra installed and OTEL_EXPORTER_OTLP_ENDPOINT set, spans go to that OTLP/HTTP endpoint.

Offsets are committed after the batch is handled, so a crash re-reads what was not committed: at least once.
This example keeps its ledger and the handled ids in memory, which a crash empties. A real service keeps both in
its database, the id written in the same transaction as the ledger's change, and rule 2 then absorbs the re-read
(docs/consumers.md, rule 2).

    python examples/transaction_ledger.py --bootstrap 127.0.0.1:9092 --topic mytpe.transaction

The connection is secured by the relay's own variables (RELAY_KAFKA_SECURITY_PROTOCOL, RELAY_KAFKA_SASL_*,
RELAY_KAFKA_SSL_*, RELAY_KAFKA_OAUTH_TOKEN_FILE; docs/configuration.md, "Kafka security"), through the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

from relay.consumer import (
    Event,
    Idempotent,
    NotAnEvent,
    UnreadableEvent,
    Verdict,
    compare,
    parse_record,
    process_span,
)
from relay.kafka.security import client_options
from relay.settings import KafkaTarget

NEEDS_A_PERSON = (Verdict.CONFLICT, Verdict.UNKNOWN)


class Ledger:
    def __init__(self, group: str | None = None) -> None:
        self.status: dict[str, str] = {}
        self.attention: list[dict[str, str]] = []
        """What no rule decides: a real service writes it to a table and alerts."""
        self.idempotent = Idempotent()
        self.group = group

    def flag(self, event: Event, why: str) -> dict[str, str]:
        return self.alert({"id": event.id, "event": event.event, "why": why})

    def alert(self, entry: dict[str, str]) -> dict[str, str]:
        self.attention.append(entry)
        print(f"ATTENTION: {json.dumps(entry)}", file=sys.stderr, flush=True)
        return entry

    async def consume(self, record: Any) -> dict[str, Any]:
        """One record in, one line describing what was done with it, inside the span that continues its trace."""
        where = {"partition": record.partition, "offset": record.offset}
        try:
            event: Event | None = parse_record(record)
        except UnreadableEvent as exc:  # an event, maybe a payment, this parser cannot read: never skipped unseen
            event, skipped = None, str(exc)
            self.alert({"record": f"{record.partition}/{record.offset}", "why": skipped})
        except NotAnEvent as exc:
            event, skipped = None, str(exc)
        with process_span(record, event=event, group=self.group):
            if event is None:
                return {**where, "skipped": skipped}
            return await self.handle(record, event)

    async def handle(self, record: Any, event: Event) -> dict[str, Any]:
        where = {"partition": record.partition, "offset": record.offset, "id": event.id}
        handled, outcome = await self.idempotent.run(event.id, lambda: self.decide(event))
        return {**where, **(outcome or {})} if handled else {**where, "verdict": "duplicate"}

    async def decide(self, event: Event) -> dict[str, str]:
        """Once per id (in `Idempotent`): a copy is neither applied nor flagged again."""
        unread = ("unreadable members: " + ", ".join(event.malformed),) if event.malformed else ()
        transaction = event.transaction
        if transaction is None:
            if event.family == "transaction":  # a payment this view cannot read: said, never skipped unseen
                self.flag(event, "; ".join(("no transaction this view can read", *unread)))
            return {"skipped": f"{event.event} carries no transaction"}
        if unread:
            self.flag(event, unread[0])
        held = self.status.get(transaction.id)
        verdict = compare(held, transaction.status)
        if verdict is Verdict.APPLY:
            self.status[transaction.id] = transaction.status
        elif verdict in NEEDS_A_PERSON:
            self.flag(event, f"{verdict.value}: {held} then {transaction.status}")
        return {"verdict": verdict.value}


async def run(bootstrap: str, topic: str, group: str, idle_timeout: float, security: dict[str, Any]) -> Ledger:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **security,
    )
    ledger = Ledger(group)
    await consumer.start()
    try:
        idle = 0.0
        while idle < idle_timeout:
            batches = await consumer.getmany(timeout_ms=500)
            idle = idle + 0.5 if not batches else 0.0
            for records in batches.values():
                for record in records:
                    print(json.dumps(await ledger.consume(record)), flush=True)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
    return ledger


def start_tracing() -> Callable[[], None]:
    """Export spans by OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set and the SDK is installed; else nothing.

    OTEL_SERVICE_NAME names the service; a real service configures this once, as it does its logging.
    """
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_SDK_DISABLED") == "true":
        return lambda: None
    try:
        from opentelemetry import trace  # noqa: PLC0415 (optional: the mytpe-relay[otel] extra)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError:
        print("OTEL_EXPORTER_OTLP_ENDPOINT is set but mytpe-relay[otel] is not installed: no spans", file=sys.stderr)
        return lambda: None
    provider = TracerProvider()  # the resource and the sampler come from OTEL_SERVICE_NAME and OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="mytpe.transaction")
    parser.add_argument("--group", default="example-transaction-ledger")
    parser.add_argument("--idle-timeout", type=float, default=10.0, help="stop after this long without records")
    args = parser.parse_args(argv)
    security = client_options(KafkaTarget.from_env(os.environ).security)
    stop_tracing = start_tracing()
    try:
        ledger = asyncio.run(run(args.bootstrap, args.topic, args.group, args.idle_timeout, security))
    finally:
        stop_tracing()  # flushes the spans still batched
    print(json.dumps({"attention": ledger.attention, "ledger": ledger.status}, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
