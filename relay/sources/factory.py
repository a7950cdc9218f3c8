"""The parking lot the settings ask for: on Redis beside a Redis dedupe store, else in memory."""

from __future__ import annotations

from relay.dedupe.factory import namespace, redis_tls
from relay.settings import Settings
from relay.sources.parking import Limits, MemoryParkingLot, ParkingLot
from relay.sources.redis_parking import RedisParkingLot


def parking_from_settings(settings: Settings) -> ParkingLot:
    """Shared on Redis when the dedupe store is Redis (same server, same namespace), else in memory."""
    limits = limits_from(settings)
    if settings.dedupe_in_memory:
        return MemoryParkingLot(limits)
    return RedisParkingLot(settings.dedupe_url, namespace=namespace(settings), limits=limits, tls=redis_tls(settings))


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_entries=settings.parking_max_entries,
        max_bytes=settings.parking_max_bytes,
        max_per_source=settings.parking_max_per_source,
        max_age_seconds=settings.parking_max_age_seconds,
        rate_per_source=settings.parking_rate_per_source,  # accepted, no longer used
        burst=settings.parking_burst,  # accepted, no longer used
    )
