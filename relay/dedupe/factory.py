"""The dedupe store the settings ask for."""

from __future__ import annotations

from relay.dedupe.connect import RedisTls
from relay.dedupe.memory import MemoryDedupeStore
from relay.dedupe.redis_store import RedisDedupeStore
from relay.settings import Settings
from relay.types import DedupeStore


def dedupe_from_settings(settings: Settings) -> DedupeStore:
    if settings.dedupe_in_memory:
        return MemoryDedupeStore(ttl=settings.dedupe_ttl_seconds, max_entries=settings.dedupe_max_entries)
    return RedisDedupeStore(
        settings.dedupe_url,
        namespace=namespace(settings),
        ttl=settings.dedupe_ttl_seconds,
        lease=settings.dedupe_lease_seconds,
        tls=redis_tls(settings),
        remember_lost=not settings.dedupe_fail_open,  # failing open, the attempt publishes without its claim
        # an attempt's longest hold: its request's publish bound (a resend alone included), then its late ack's renewals
        # (the delivery timeout and a publish bound: relay/pipeline/late_acks.py); a batch refused late, its records
        # resent alone then, can outlast it
        hold=settings.kafka_delivery_timeout_seconds + 2 * settings.publish_timeout_seconds,
    )


def namespace(settings: Settings) -> str:
    """The prefix of every Redis key of this relay's topics (dedupe marks, parking)."""
    return f"mytpe-relay:{settings.topic_prefix}"


def redis_tls(settings: Settings) -> RedisTls:
    return RedisTls(
        ca_file=settings.dedupe_tls_ca_file,
        cert_file=settings.dedupe_tls_cert_file,
        key_file=settings.dedupe_tls_key_file,
    )
