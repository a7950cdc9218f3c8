"""CloudEvents 1.0 structured-mode JSON, with MyTPE's `data` bytes spliced in unchanged."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson

from relay.mytpe.payload import Webhook
from relay.routing import Destination

CONTENT_TYPE = b"application/cloudevents+json; charset=utf-8"
TYPE_PREFIX = "app.mytpe.pay."
SOURCE_PREFIX = "mytpe-pay"
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_time(payload_timestamp: str | None, signed_at: int) -> str:
    """The payload's `timestamp` when it is RFC 3339, else the signed header time."""
    if payload_timestamp is not None and _RFC3339.fullmatch(payload_timestamp):
        try:
            datetime.fromisoformat(payload_timestamp.upper())
        except ValueError:
            pass
        else:
            return payload_timestamp
    return rfc3339(datetime.fromtimestamp(signed_at, UTC))


def instance_id(webhook: Webhook) -> str | None:
    """`data.instance.id` as text, when the body has one."""
    instance = webhook.data.get("instance")
    value = instance.get("id") if isinstance(instance, dict) else None
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def source(webhook: Webhook) -> str:
    instance = instance_id(webhook)
    return SOURCE_PREFIX if instance is None else f"{SOURCE_PREFIX}/{instance}"


def encode(
    webhook: Webhook,
    destination: Destination,
    *,
    signed_at: int,
    received_at: datetime,
    reverified: bool = False,
    traceparent: str | None = None,
) -> bytes:
    """The record value: every attribute, then `"data":` followed by the original bytes.

    `reverified`: the delivery was parked (its secret was not installed yet) and verified after its
    source's secrets changed; it then carries `"mytpereverified": true`, and `mytpereceivedat` is the
    time it first arrived.

    `traceparent`: the W3C context the event was created in (the CloudEvents Distributed Tracing
    extension), set once by the relay; absent when tracing is off (never an all-zero value).
    """
    attributes: dict[str, str | bool] = {
        "specversion": "1.0",
        "id": webhook.delivery_id,
        "source": source(webhook),
        "type": TYPE_PREFIX + webhook.event,
        "time": event_time(webhook.timestamp, signed_at),
        "datacontenttype": "application/json",
        "partitionkey": destination.key,
        "mytpereceivedat": rfc3339(received_at),
    }
    if destination.entity_id is not None:
        attributes["subject"] = destination.entity_id
    if reverified:
        attributes["mytpereverified"] = True
    if traceparent is not None:
        attributes["traceparent"] = traceparent
    head = orjson.dumps(attributes)
    return b"".join((head[:-1], b',"data":', webhook.data_bytes, b"}"))
