"""The parking attendant: re-verifies a source's parked requests when its secrets change, retries those
that verified while Kafka could not take them, expires the old, and keeps the parking gauges.

It verifies and relays through the pipeline's own steps, handed to it (`verify`, `relay`): a parked
request goes through the same checks, dedupe claim and records as a live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Protocol

from relay.errors import RelayError, Unavailable
from relay.mytpe import signatures
from relay.mytpe.signatures import HeaderSource, SignedHeaders
from relay.sources.config import Source, SourceSet
from relay.sources.metrics import ParkingMetrics
from relay.sources.parking import Key, Parked, ParkingLot
from relay.sources.registry import SourceRegistry

logger = logging.getLogger(__name__)


class Verify(Protocol):
    def __call__(
        self, headers: HeaderSource, body: bytes, source: Source, *, now: float, window: int
    ) -> SignedHeaders: ...


class Relayed(Protocol):
    @property
    def status(self) -> str: ...


class RelaySigned(Protocol):
    def __call__(
        self,
        signed: SignedHeaders,
        headers: HeaderSource,
        body: bytes,
        source: Source,
        *,
        received_at: datetime,
        reverified: bool = ...,
    ) -> Awaitable[Relayed]: ...


class Attendant:
    def __init__(
        self,
        parking: ParkingLot,
        sources: SourceRegistry,
        metrics: ParkingMetrics,
        *,
        verify: Verify,
        relay: RelaySigned,
        clock: Callable[[], float] = time.time,
        interval: float = 5.0,
    ) -> None:
        self._parking = parking
        self._sources = sources
        self._metrics = metrics
        self._verify = verify
        self._relay = relay
        self._clock = clock
        self._interval = interval
        self._pending: set[str] = set()
        self._changed: dict[str, int] = {}  # per source, the last change said: a pass settles those it saw
        self._said = itertools.count(1)
        self._waiting: dict[str, dict[Key, None]] = {}  # per source, entries verified, Kafka awaited, in listed order
        self._verified: dict[str, tuple[int, int]] = {}  # per source, the change its last whole pass saw, and the
        # passes of its waiting entries alone since (`_only`)
        self._resume: dict[str, Key] = {}  # per source, the entry its last pass stopped at: the next starts after
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def secrets_changed(self, current: SourceSet, changed: list[Source]) -> None:
        """After each reload: verify `changed` again; forget the sources `current` no longer has."""
        for name in {*self._changed, *self._verified, *self._waiting, *self._resume} - set(current.names()):
            self._forget(name)
        for source in changed:
            self._pending.add(source.name)
            self._changed[source.name] = next(self._said)  # a serial of its own: a source removed, then back
        self._wake.set()

    def _forget(self, name: str) -> None:
        for state in (self._changed, self._verified, self._waiting, self._resume):
            state.pop(name, None)
        self._pending.discard(name)

    def parked(self, source: Source) -> None:
        """A request checked against `source` was parked (or may have been). A request looks its source up
        before it reads its body, and a park on Redis waits for its answer: if the source's secrets changed
        meanwhile, the pass for that change may have listed the parked entries before this one was among them.
        Then the source is verified again, as after a change (one said during a pass: the next pass verifies it
        again). A park checked against the current secrets costs one lookup by path (any sender can cause one)."""
        current = self._sources.current.by_path.get(source.path)
        if current is not None and current.name == source.name and current.keys != source.keys:
            self.secrets_changed(self._sources.current, [current])

    def start(self) -> None:
        """Start looking after parking. Every source is verified again once at start: a shared (Redis)
        parking may hold requests that a secret installed while no replica ran now verifies."""
        current = self._sources.current
        self._pending.update(source.name for source in current.by_path.values())
        self._verified.clear()  # a whole pass for each, as promised
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="parking-attendant")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.pass_once()
            except Exception as exc:  # the store did not answer (Redis down, an ACL): the next pass tries again
                logger.warning("parking pass failed, parked requests stay parked: %s: %s", type(exc).__name__, exc)

    async def pass_once(self) -> None:
        metrics = self._metrics
        for name, count in (await self._parking.expire(self._clock())).items():
            metrics.parked_expired.labels(name).inc(count)
        for name, count in self._parking.evicted().items():
            metrics.parked_evicted.labels(name).inc(count)
        _said_failed(await self._reverify_pending())
        usage = await self._parking.usage()
        metrics.parked_entries.set(usage.entries)
        metrics.parked_bytes.set(usage.bytes)
        oldest = usage.oldest_received_at
        metrics.parked_oldest_age.set(0 if oldest is None else max(self._clock() - oldest, 0.0))

    async def _reverify_pending(self) -> list[tuple[str, Exception]]:
        """Each source with a change not yet verified against its parked requests; those whose store failed."""
        failed: list[tuple[str, Exception]] = []
        for name in sorted(self._pending):
            seen = self._changed.get(name, 0)
            source = self._sources.current.by_name(name)
            if source is None:  # removed: nothing of it is kept
                self._forget(name)
                continue
            only = self._only(name, seen)
            try:
                relayed, waiting = await self.reverify(source, only=only)
            except Exception as exc:  # the store failed mid-source: it stays pending, and the others still go
                failed.append((name, exc))
                continue
            if self._sources.current.by_name(name) is None:  # removed during its pass
                self._forget(name)
                continue
            self._waiting[name] = waiting
            if only is None:
                self._verified[name] = (seen, 0)
            elif not waiting:  # the waiting ones went: a whole pass next, for a park that landed since the last
                self._verified.pop(name, None)
            if only is None and not waiting and self._changed.get(name, 0) == seen:  # a change said meanwhile
                self._pending.discard(name)
            if relayed or waiting:
                logger.warning(
                    "source %s: %d parked delivery(ies) verified with new secrets and relayed, %d waiting for Kafka",
                    name,
                    relayed,
                    len(waiting),
                    extra={"source": name},
                )
        return failed

    def _only(self, name: str, seen: int) -> dict[Key, None] | None:
        """The entries of `name` to verify again: those that verified and wait for Kafka, when nothing changed since
        its last whole pass, rather than every forgery again on every pass while Kafka is down. One pass in
        WHOLE_EVERY is whole still, so a park that landed after the whole pass (a Redis park answered past its
        timeout, another replica's) is verified within that many passes, or by the whole pass that follows the one
        that relayed the last waiting entry (a source leaves the pending set after a whole pass). None: the whole
        lot."""
        change, alone = self._verified.get(name, (-1, 0))
        if change != seen or alone + 1 >= WHOLE_EVERY:
            return None
        self._verified[name] = (change, alone + 1)
        return self._waiting.get(name, {})

    async def reverify(self, source: Source, *, only: Collection[Key] | None = None) -> tuple[int, dict[Key, None]]:
        """Verify `source`'s parked requests against its secrets now; relay those that pass, once (at least
        once across a stop: docs/guarantees.md).

        Returns (relayed, waiting): the entries `waiting` verified but could not be made durable now, and stay
        parked for the next pass. The rest stay parked until they age out: unverified, or verified and refused
        for the source's instance_id (verified again at its next change). A delivery is never published twice:
        it goes through the dedupe claim, as always. `only`: the entries (keys) to verify, the others skipped.
        """
        relayed = 0
        waiting: dict[Key, None] = {}  # in the order listed: the next pass reads them in it
        settled: set[tuple[str, str, bytes]] = set()  # entries one attempt of which verified
        held = False  # one was not made durable: the others that verify wait for the next pass, untried
        listed = await self._parking.entries(source.name, only)  # `only`: the entries read and tried again
        for entry in _after(listed, self._resume.pop(source.name, None)):
            if entry.key in settled:  # an entry lists each attempt: the first that verifies settles it
                continue
            headers = ParkedHeaders(entry)
            try:  # its timestamp was inside the window when it arrived; only the signature is checked
                signed = self._verify(headers, entry.body, source, now=float(entry.timestamp_text), window=0)
            except RelayError:
                continue
            settled.add(entry.key)
            if held:  # each try would wait its bound (Kafka's, a claim's): a pass would last that many of them
                waiting[entry.key] = None
                continue
            received_at = datetime.fromtimestamp(entry.received_at, UTC)
            try:
                outcome = await self._relay(
                    signed, headers, entry.body, source, received_at=received_at, reverified=True
                )
            except Unavailable as exc:
                logger.warning("parked delivery %s verified, not relayed yet (%s)", entry.delivery_id, exc.cause)
                waiting[entry.key] = None
                held, self._resume[source.name] = True, entry.key
                continue
            except RelayError as exc:  # wrong_instance: authentic, but not for this source as it is configured now
                logger.warning(  # kept: MyTPE gave up on it, and an instance_id mistyped may be corrected
                    "parked delivery %s verified, then refused: %s; kept parked for the next change of its source",
                    entry.delivery_id,
                    exc.reason,
                )
                continue
            else:
                if outcome.status != "duplicate":  # another attempt of the same delivery got there first
                    relayed += 1
                    self._metrics.reverified.labels(source.name).inc()
            await self._parking.remove(entry)
        return relayed, waiting


def _after(entries: list[Parked], key: Key | None) -> list[Parked]:
    """`entries` from the one after `key`'s (where the last pass stopped) round to it: an entry that cannot be made
    durable (its topic's ACL missing) holds the others of its source for a pass, never for good."""
    ends = [index + 1 for index, entry in enumerate(entries) if entry.key == key]
    return entries[ends[-1] :] + entries[: ends[-1]] if ends else entries


WHOLE_EVERY = 12
"""One pass in this many verifies a pending source's whole lot even when nothing changed (a minute, at 5 s)."""


def _said_failed(failed: list[tuple[str, Exception]]) -> None:
    """One line a pass, not one per source while the store is down."""
    if failed:
        name, exc = failed[0]
        logger.warning(
            "parking pass: %d source(s) not verified again, tried next pass (first: %s, %s: %s)",
            len(failed),
            name,
            type(exc).__name__,
            exc,
        )


class ParkedHeaders:
    """A parked request's MyTPE headers, as the verification and the DLQ record read them."""

    __slots__ = ("_values",)

    def __init__(self, entry: Parked) -> None:
        self._values = {
            signatures.SIGNATURE: "sha256=" + entry.digest.hex(),
            signatures.TIMESTAMP: entry.timestamp_text,
            signatures.DELIVERY_ID: entry.delivery_id,
            signatures.EVENT: entry.event,
        }

    def getlist(self, key: str) -> list[str]:
        value = self._values.get(key.lower())
        return [value] if value else []
