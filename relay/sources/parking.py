"""Parking: well-formed, fresh requests whose signature matched none of their source's secrets.

MyTPE invalidates a secret the moment it makes a new one, and retries only three times. A delivery
signed with a secret the relay does not have yet is therefore kept here, still answered 401, and
verified again when its source's secrets change (`Relay.reverify`). A forgery never verifies: it
ages out or is pushed out, and never reaches a family topic.

Bounded by room, not by rate: entries and bytes overall, entries per source, and an age after which
an entry expires. A request is always parked (unless it alone exceeds the bytes); when a bound is
reached, older entries make room for it: the source's own oldest when the source is at its entry
cap, else the oldest of the source holding the most entries, or, past the bytes bound, the oldest of
the largest size class (sizes within a factor of two: `size_class`) of the source holding the most
bytes. A flood therefore pushes out older forgeries, never a later rotation's deliveries; forgeries
of a larger class than a delivery push out each other before it (oldest first, each forgery of 256
KiB would push out hundreds of 1 KB deliveries), while deliveries of about the forgeries' size push
out the older forgeries, not each other; and a flood aimed at one source takes no room from the
others while they hold fewer entries (bytes). What this leaves: deliveries of a larger class than
every forgery's push out each other once the forgeries fill the bytes bound, one for one (with the
default bounds that takes deliveries over about 6.7 KB: below that the entries bound comes first).
A flood spread over k other sources
does take from a source holding more than max_entries / (k + 1): the room ends shared equally.
`received_at` is this replica's wall clock.

The attempts of one delivery (same id, same body, each signed afresh) take one entry, counted and
sized once, which keeps up to `ATTEMPTS` distinct signatures: the first, and the latest others. A
later attempt never replaces an earlier one, since the earlier may be the one that verifies (a
regeneration applied late signs the next attempt with a secret nobody holds). A new attempt makes
the entry the source's newest. `entries` lists each attempt as its own Parked; `remove` of any of
them removes the entry.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Protocol

logger = logging.getLogger(__name__)
ENTRY_OVERHEAD = 256
"""Bytes counted per entry beside its body: headers and bookkeeping."""
ATTEMPTS = 4
"""Distinct signatures kept per entry: MyTPE sends 3 attempts; a forger's resends push out only the latest."""


@dataclass(frozen=True, slots=True)
class Parked:
    """One parked request: what is needed to verify it again and relay it as received."""

    source: str
    delivery_id: str
    timestamp_text: str
    digest: bytes
    event: str
    body: bytes
    received_at: float

    @property
    def key(self) -> tuple[str, str, bytes]:
        # The body, not the signature, is part of the key: MyTPE's attempts of one delivery (re-signed
        # at each send) take one entry, while a forger who knows a real delivery id but not its body
        # parks under another key and cannot push the real one out.
        return (self.source, self.delivery_id, self.body_hash)

    @property
    def body_hash(self) -> bytes:
        return hashlib.sha256(self.body).digest()[:16]

    @property
    def size(self) -> int:
        """The bytes counted against RELAY_PARKING_MAX_BYTES: body, delivery id and event (each up to 200
        characters), plus ENTRY_OVERHEAD; the same for every attempt of the entry."""
        return len(self.body) + len(self.delivery_id) + len(self.event) + ENTRY_OVERHEAD


@dataclass(frozen=True, slots=True)
class Limits:
    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_per_source: int = 5_000
    max_age_seconds: float = 86_400.0
    rate_per_source: float = 20.0
    """No longer used: parking is bounded by room, not rate (RELAY_PARKING_RATE_PER_SOURCE is accepted)."""
    burst: int = 200
    """No longer used (RELAY_PARKING_BURST is accepted)."""


@dataclass(frozen=True, slots=True)
class Usage:
    entries: int
    bytes: int
    oldest_received_at: float | None


class ParkingLot(Protocol):
    """Where parked requests wait. `park` answers None once parked (older entries may have made room),
    else why not: `full` (the request alone is larger than the bytes bound) or `error` (the store did
    not answer). `evicted()` hands over, and resets, the count of entries pushed out per source."""

    limits: Limits

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def park(self, entry: Parked) -> str | None: ...
    async def entries(self, source: str, only: Collection[Key] | None = None) -> list[Parked]: ...
    async def remove(self, entry: Parked) -> None: ...
    async def expire(self, now: float) -> dict[str, int]: ...
    async def usage(self) -> Usage: ...
    def evicted(self) -> dict[str, int]: ...


Key = tuple[str, str, bytes]


class MemoryParkingLot:
    """Parking in this process: it lasts as long as the process, and each replica parks what it received."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._sources: dict[str, OrderedDict[Key, list[Parked]]] = {}  # attempts, least recently parked first
        self._bytes_of: dict[str, int] = {}
        self._classes: dict[str, dict[int, OrderedDict[Key, None]]] = {}
        """Per source, per size class, its entries least recently parked first (as `_sources`)."""
        self._count = 0
        self._bytes = 0
        self._evicted: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        """Said when entries go with the process: one that verified after a secret change but waited for Kafka
        (no spool) is then lost, unless MyTPE delivers it again; parking on Redis keeps them."""
        if self._count:
            logger.warning(
                "parking: %d parked request(s) end with this process (parking in memory); any that verified and"
                " waited for Kafka is lost unless MyTPE delivers it again",
                self._count,
            )

    async def park(self, entry: Parked) -> str | None:
        limits = self.limits
        if entry.size > limits.max_bytes:
            return "full"
        own = self._sources.get(entry.source)
        if own is not None and entry.key in own:  # another attempt of a parked delivery: counted once
            own[entry.key] = _attempts(own[entry.key], entry)
            own.move_to_end(entry.key)
            held = own[entry.key][0].size  # the entry's, counted once: an attempt's event may be another length
            self._classes[entry.source][size_class(held)].move_to_end(entry.key)
            return None
        while own and len(own) >= limits.max_per_source:
            self._evict(entry.source)
        while self._count >= limits.max_entries or self._bytes + entry.size > limits.max_bytes:
            by_bytes = self._count < limits.max_entries
            self._evict(self._largest(by_bytes=by_bytes), largest=by_bytes)
        self._sources.setdefault(entry.source, OrderedDict())[entry.key] = [entry]
        self._count += 1
        self._bytes += entry.size
        self._bytes_of[entry.source] = self._bytes_of.get(entry.source, 0) + entry.size
        self._classes.setdefault(entry.source, {}).setdefault(size_class(entry.size), OrderedDict())[entry.key] = None
        return None

    def _largest(self, *, by_bytes: bool) -> str:
        if by_bytes:
            return max(self._bytes_of, key=self._bytes_of.__getitem__)
        return max(self._sources, key=lambda name: len(self._sources[name]))

    def _evict(self, source: str, *, largest: bool = False) -> None:
        held = self._sources[source]
        if largest:  # the oldest of its largest size class
            classes = self._classes[source]
            chosen = held[next(iter(classes[max(classes)]))]
        else:
            chosen = next(iter(held.values()))  # the oldest
        self._drop(chosen[0])
        self._evicted[source] = self._evicted.get(source, 0) + 1

    def _drop(self, entry: Parked) -> bool:
        entries = self._sources.get(entry.source)
        held = None if entries is None else entries.pop(entry.key, None)
        if entries is None or held is None:
            return False
        counted = held[0].size  # the entry's as counted: `entry` may be an attempt with another event's length
        self._count -= 1
        self._bytes -= counted
        self._bytes_of[entry.source] -= counted
        classes, size = self._classes[entry.source], size_class(counted)
        del classes[size][entry.key]
        if not classes[size]:
            del classes[size]
        if not entries:
            del self._sources[entry.source], self._bytes_of[entry.source], self._classes[entry.source]
        return True

    def evicted(self) -> dict[str, int]:
        evicted, self._evicted = self._evicted, {}
        return evicted

    async def entries(self, source: str, only: Collection[Key] | None = None) -> list[Parked]:
        """Each attempt of each entry (`only`: of those entries), least recently parked first. Redis reads `only`
        in the order given; the attendant gives the order of a listing, rotated where a pass stopped (`_after`),
        which it applies to either lot's answer alike."""
        held = self._sources.get(source)
        if held is None:
            return []
        chosen = held.values() if only is None else [held[key] for key in held if key in only]
        return [attempt for attempts in chosen for attempt in attempts]

    async def remove(self, entry: Parked) -> None:
        self._drop(entry)

    async def expire(self, now: float) -> dict[str, int]:
        """Drop entries received more than `max_age_seconds` before `now`; the count per source."""
        expired: dict[str, int] = {}
        horizon = now - self.limits.max_age_seconds
        for source in list(self._sources):
            entries = self._sources[source]
            while entries:
                oldest = next(iter(entries.values()))
                if oldest[-1].received_at > horizon:  # its latest attempt
                    break
                self._drop(oldest[0])
                expired[source] = expired.get(source, 0) + 1
        return expired

    async def usage(self) -> Usage:
        firsts = [next(iter(entries.values()))[-1].received_at for entries in self._sources.values()]
        return Usage(self._count, self._bytes, min(firsts, default=None))


def size_class(size: int) -> int:
    """The class of an entry's size past the bytes bound: sizes within a factor of two share one (its bit length)."""
    return size.bit_length()


def _attempts(attempts: list[Parked], attempt: Parked) -> list[Parked]:
    """`attempts` with `attempt` added last, unless its signature is there already; the first and the
    latest others, `ATTEMPTS` at most."""
    if any((a.timestamp_text, a.digest) == (attempt.timestamp_text, attempt.digest) for a in attempts):
        return attempts
    first = attempts[0]  # the body, id and event held once: an attempt adds its signature only
    attempt = replace(
        first, timestamp_text=attempt.timestamp_text, digest=attempt.digest, received_at=attempt.received_at
    )
    added = [*attempts, attempt]
    return added if len(added) <= ATTEMPTS else [added[0], *added[len(added) - ATTEMPTS + 1 :]]
