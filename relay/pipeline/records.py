"""What the pipeline makes of a verified delivery: its family-topic or DLQ record, and its outcome. Pure, but
for the trace context read from the current span when a tracer is given."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from relay import envelope
from relay.errors import SignatureError
from relay.mytpe import signatures
from relay.mytpe.payload import Unusable, Webhook, parse
from relay.mytpe.signatures import SignedHeaders
from relay.routing import Router
from relay.sources.config import Source
from relay.tracing.w3c import CREATED_HEADER
from relay.types import Ack

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

RecordHeaders = list[tuple[str, bytes]]
SOURCE_HEADER = "mytpe-relay-source"
"""The Kafka record header naming the source a record came through (family topics and DLQ)."""
KAFKA_REFUSED = "kafka_refused"
"""The DLQ `reason` of a verified delivery Kafka refused for good (RecordTooLarge, a policy, ...)."""
KAFKA_ERROR_HEADER = "kafka-error"
"""The DLQ record header naming the Kafka error of a `kafka_refused` delivery."""
REVERIFIED_HEADER = "mytpe-relay-reverified"
"""Present ("true") on a record relayed from parking, after its source's secrets changed."""
_NO_INSTANCE: tuple[object, ...] = (None, [], {})
"""A `data.instance` that names no instance: absent, null, or an empty array or object (`in` compares by equality:
an empty text is not among them, and is refused as unreadable)."""


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    headers: RecordHeaders


@dataclass(frozen=True, slots=True)
class Outcome:
    """A 200 answer: `accepted`, `duplicate` or `quarantined` (with the DLQ `reason`)."""

    status: str
    delivery_id: str
    reason: str | None = None
    ack: Ack | None = None
    spooled: bool = False
    """Durable in the local spool (RELAY_SPOOL_DIR), not yet acknowledged by Kafka: the drainer publishes it."""


def family_record(
    router: Router,
    signed: SignedHeaders,
    body: bytes,
    source: Source,
    *,
    received_at: datetime,
    reverified: bool = False,
    tracer: Tracer | None = None,
    created_in: str | None = None,
) -> Built:
    """The delivery id, the family-topic record and the dedupe key of a verified body.

    The CloudEvent's `traceparent` is `created_in` when given (a DLQ replay keeps the one its record was
    created in, even with tracing off), else the current context's (none with tracing off); the record's
    `traceparent` header is the current context's (this hop's: a span's, or an unsampled request's context
    drawn by the relay; none with tracing off).

    Raises Unusable, or SignatureError(`wrong_instance`) when the source names an instance and the
    body's `data.instance.id` is another, or unreadable. A body with no `data.instance` (absent, null, or an
    empty array or object, as PHP writes nothing) is the instance's: its secret is (until 2026-12-06 it was
    refused, kept nowhere, though MyTPE's docs do not show `data.instance` on every event).
    """
    webhook = parse(body, signed.delivery_id)
    dedupe = webhook.delivery_id if webhook.id_in_body else unsigned_key(body)
    named = source.instance_id is not None and webhook.data.get("instance") not in _NO_INSTANCE
    if named and envelope.instance_id(webhook) != source.instance_id:
        raise SignatureError("wrong_instance", f"data.instance.id is not the one source {source.name} expects")
    try:
        destination = router.resolve(webhook)
    except Unusable as unroutable:  # read: its quarantine claims the delivery's own key
        unroutable.key = dedupe
        raise
    written: tuple[tuple[str, bytes], ...] = ()
    if tracer is not None:
        current, written = tracer.on_record()
        created_in = created_in or current
    try:
        value = envelope.encode(
            webhook,
            destination,
            signed_at=signed.timestamp,
            received_at=received_at,
            reverified=reverified,
            traceparent=created_in,
        )
        key = destination.key.encode()
    except (TypeError, UnicodeEncodeError):  # a lone surrogate escape in an id: no UTF-8 holds it (orjson: TypeError)
        unusable = Unusable("malformed_json")
        unusable.key = dedupe
        raise unusable from None
    if tracer is not None and tracer.sampled():  # once the CloudEvent is made (an unsampled span records nothing)
        tracer.annotate(event_attributes(webhook, source))
    record_headers: RecordHeaders = [("content-type", envelope.CONTENT_TYPE), *origin(source, reverified)]
    if written:
        record_headers.extend(written)
    record = Record(destination.topic, key, value, record_headers)
    return Built(webhook.delivery_id, record, dedupe)


class Built(NamedTuple):
    delivery_id: str
    record: Record
    key: str
    """The dedupe key: the body's delivery id, covered by the signature; without one, the body's digest
    (`unsigned_key`), not the header's id, which the signature does not cover."""


UNSIGNED = "body:"


def unsigned_key(body: bytes) -> str:
    """The dedupe key of a body without its own delivery id: its SHA-256 (32 hex digits). MyTPE's retry sends the
    same body; a signed body replayed within the window under any header id is a duplicate, never a new event,
    and never makes another delivery one."""
    return UNSIGNED + body_digest(body)


def body_digest(body: bytes) -> str:
    """The first 32 hex digits of the body's SHA-256: the part of a dedupe key the signature covers."""
    return hashlib.sha256(body).hexdigest()[:32]


def dlq_record(
    dlq: str,
    signed: SignedHeaders,
    event: list[str],
    body: bytes,
    source: Source,
    *,
    reason: str,
    reverified: bool = False,
    error: str = "",
    tracer: Tracer | None = None,
) -> Record:
    """A verified but unusable body as a DLQ record, with what is needed to re-verify it later.
    `event`: the request's event header values; `error`: the Kafka error that refused it for good."""
    record_headers: RecordHeaders = [
        ("reason", reason.encode()),
        (signatures.DELIVERY_ID, signed.delivery_id.encode()),
        (signatures.TIMESTAMP, signed.timestamp_text.encode()),
        (signatures.SIGNATURE, b"sha256=" + signed.digest.hex().encode()),
        (signatures.EVENT, event[0].encode("utf-8", "replace")[:200] if event else b""),
        *origin(source, reverified),
    ]
    created = None if tracer is None else tracer.traceparent()
    if tracer is not None and created is not None:
        record_headers.extend(tracer.headers())
        record_headers.append((CREATED_HEADER, created.encode()))
    if error:
        record_headers.append((KAFKA_ERROR_HEADER, error.encode()))
    return Record(dlq, signed.delivery_id.encode(), body, record_headers)


def event_attributes(webhook: Webhook, source: Source) -> dict[str, str]:
    """The CloudEvent the current span creates, as OpenTelemetry's CloudEvents conventions name it."""
    return {
        "cloudevents.event_id": webhook.delivery_id,
        "cloudevents.event_type": envelope.TYPE_PREFIX + webhook.event,
        "cloudevents.event_source": envelope.source(webhook),
        "cloudevents.event_spec_version": "1.0",
        "mytpe.delivery_id": webhook.delivery_id,
        "mytpe.source": source.name,
    }


def origin(source: Source, reverified: bool) -> RecordHeaders:
    headers: RecordHeaders = [(SOURCE_HEADER, source.name.encode())]
    if reverified:
        headers.append((REVERIFIED_HEADER, b"true"))
    return headers
