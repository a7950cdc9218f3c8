"""How a parked request is written in Redis (`relay.sources.redis_parking`): its entry's id, its payload (a JSON
head, a line break, the raw body) and its other attempts' signatures; read back strictly, since a payload another
version wrote, or a hand, is read on every pass."""

from __future__ import annotations

from dataclasses import replace

import orjson

from relay.sources.parking import Key, Parked


def entry_id(entry: Parked) -> str:
    return key_id(entry.key)


def key_id(key: Key) -> str:
    """An entry's id in its source's hashes, from its key (source, delivery id, body hash)."""
    _, delivery_id, body_hash = key
    return f"{delivery_id}|{body_hash.hex()}"


def encode(entry: Parked) -> bytes:
    head = {
        "source": entry.source,
        "delivery_id": entry.delivery_id,
        "timestamp": entry.timestamp_text,
        "digest": entry.digest.hex(),
        "event": entry.event,
        "received_at": entry.received_at,
    }
    return orjson.dumps(head) + b"\n" + entry.body


def attempt_text(entry: Parked) -> str:
    return f"{entry.timestamp_text},{entry.digest.hex()},{entry.received_at!r}"


def _stamp(text: str) -> str:
    """A parked attempt's signed timestamp: the digits MyTPE sent (the verification reads it as a number)."""
    if not text.isascii() or not text.isdigit():
        raise ValueError("a parked entry's timestamp is not a number")
    return text


def decode(payload: bytes, tries: bytes) -> list[Parked]:
    """The attempts of one entry: the one in its payload (the first), then the others (`tries`; an entry
    parked before tries were kept has none)."""
    head, _, body = payload.partition(b"\n")
    fields = orjson.loads(head)
    texts = [fields[name] for name in ("source", "delivery_id", "timestamp", "digest", "event")]
    received = fields["received_at"]
    if not all(isinstance(text, str) for text in texts) or isinstance(received, bool):
        raise TypeError("a parked entry's field is not of its type")  # read on every pass: refused once here
    first = Parked(
        fields["source"],
        fields["delivery_id"],
        _stamp(fields["timestamp"]),
        bytes.fromhex(fields["digest"]),
        fields["event"],
        body,
        float(received),
    )
    attempts = [first]
    for token in tries.decode().split(";") if tries else []:
        timestamp, digest, received_at = token.split(",")
        attempt = replace(
            first, timestamp_text=_stamp(timestamp), digest=bytes.fromhex(digest), received_at=float(received_at)
        )
        if (timestamp, attempt.digest) != (first.timestamp_text, first.digest):
            attempts.append(attempt)
    return attempts
