"""The parking attendant: re-verification at start and after a change, retry while Kafka is down, expiry."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from relay.dedupe.memory import MemoryDedupeStore
from relay.errors import KafkaDenied, ParkingError, SignatureError
from relay.http.webhook import RawHeaders
from relay.metrics import Metrics
from relay.mytpe import signatures
from relay.pipeline.compose import compose
from relay.sources import attendant as attendant_module
from relay.sources.attendant import Attendant
from relay.sources.config import parse
from relay.sources.parking import Key, Limits, MemoryParkingLot, Parked
from relay.sources.registry import SourceRegistry
from tests.conftest import make_settings
from tests.fakes import FakePublisher, kafka_down
from tests.helpers import sample, signed_headers

NEW = "whsec_" + "4d" * 24
OLD = "whsec_" + "0d" * 24


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):  # bounded
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def parked(secret: str, *, at: float, delivery_id: str | None = None) -> Parked:
    body, delivery_id = sample(delivery_id=delivery_id)
    stamp = str(int(at))
    digest = bytes.fromhex(signatures.sign(secret, stamp, body).removeprefix("sha256="))
    return Parked("shop", delivery_id, stamp, digest, "transaction.completed", body, at)


def attendant_for(
    tmp_path: Path,
    publisher: FakePublisher,
    lot: MemoryParkingLot,
    metrics: Metrics,
    interval: float = 5.0,
    *,
    also: str = "",
) -> Attendant:
    """`also`: another source's name, served beside `shop`."""
    file = tmp_path / "sources.yaml"
    other = f"  - {{name: {also}, secrets: [{OLD}]}}\n" if also else ""
    file.write_text(f"sources:\n  - {{name: shop, secrets: [{NEW}]}}\n{other}")
    settings = make_settings(secrets=(), sources_file=file)
    registry = SourceRegistry(default=None, file=file, metrics=metrics)
    return compose(
        settings,
        publisher=publisher,
        dedupe=MemoryDedupeStore(ttl=60, max_entries=100),
        metrics=metrics,
        sources=registry,
        parking=lot,
        parking_interval=interval,
    ).attendant


async def test_at_start_parked_requests_that_now_verify_are_relayed_once(tmp_path: Path) -> None:
    now = time.time()
    lot = MemoryParkingLot(Limits())
    first = parked(NEW, at=now - 30)
    retry = parked(NEW, at=now - 20, delivery_id=first.delivery_id)  # the same delivery, re-signed later
    forged = parked("whsec_" + "ff" * 24, at=now - 10)
    for entry in (first, retry, forged):
        assert await lot.park(entry) is None
    publisher, metrics = FakePublisher(), Metrics()
    attendant = attendant_for(tmp_path, publisher, lot, metrics, interval=0.05)
    attendant.start()
    try:
        await eventually(lambda: _entries_are(lot, 1))
    finally:
        await attendant.stop()
    assert [dict(s.headers)["mytpe-relay-reverified"] for s in publisher.sent] == [b"true"]
    assert await lot.entries("shop") == [forged]
    assert metrics.reverified.labels("shop")._value.get() == 1


async def test_verified_while_kafka_is_down_stays_parked_and_is_tried_again(tmp_path: Path) -> None:
    lot = MemoryParkingLot(Limits())
    await lot.park(parked(NEW, at=time.time()))
    publisher = FakePublisher(fail_with=kafka_down())
    attendant = attendant_for(tmp_path, publisher, lot, Metrics(), interval=0.05)
    attendant.start()
    try:
        await asyncio.sleep(0.3)
        assert (await lot.usage()).entries == 1 and publisher.sent == []
        publisher.fail_with = None
        await eventually(lambda: _true(bool(publisher.sent)))
    finally:
        await attendant.stop()
    assert (await lot.usage()).entries == 0


async def test_old_entries_expire_and_are_counted(tmp_path: Path) -> None:
    lot = MemoryParkingLot(Limits(max_age_seconds=60))
    await lot.park(parked("whsec_" + "ee" * 24, at=time.time() - 61))
    metrics = Metrics()
    attendant = attendant_for(tmp_path, FakePublisher(), lot, metrics)
    await attendant.pass_once()
    assert (await lot.usage()).entries == 0
    assert metrics.parked_expired.labels("shop")._value.get() == 1
    assert metrics.parked_entries._value.get() == 0


async def _entries_are(lot: MemoryParkingLot, count: int) -> bool:
    return (await lot.usage()).entries == count


async def _true(value: bool) -> bool:
    return value


class HeldLot(MemoryParkingLot):
    """Its first listing waits until the test lets it go; every listing is counted."""

    def __init__(self) -> None:
        super().__init__(Limits())
        self.listed = 0
        self.listing = asyncio.Event()
        self.go = asyncio.Event()

    async def entries(self, source: str, only: Collection[Key] | None = None) -> list[Parked]:
        self.listed += 1
        self.listing.set()
        await self.go.wait()
        return await super().entries(source, only)


async def test_a_secret_change_during_a_pass_is_verified_again_by_the_next_pass(tmp_path: Path) -> None:
    """Review finding: a pass took the source off the pending set when it ended, so a change that came while it
    listed or relayed (a second rotation) was dropped: deliveries signed with the newer secret stayed parked
    until they expired, after MyTPE had given up on them."""
    lot = HeldLot()
    attendant = attendant_for(tmp_path, FakePublisher(), lot, Metrics())
    current = attendant._sources.current
    shop = current.by_name("shop")
    assert shop is not None
    attendant.secrets_changed(current, [shop])
    first = asyncio.create_task(attendant.pass_once())
    await asyncio.wait_for(lot.listing.wait(), 5)
    attendant.secrets_changed(current, [shop])  # while the pass lists the old entries
    lot.go.set()
    await asyncio.wait_for(first, 5)
    await attendant.pass_once()
    assert lot.listed == 2, "the change that came during the first pass was not verified again"
    await attendant.pass_once()
    assert lot.listed == 2  # and only once


class CountingLot(MemoryParkingLot):
    """Counts its listings; `written_then_error`: a park that is stored and answered "error", as a Redis call
    past its timeout may be."""

    def __init__(self, *, written_then_error: bool = False) -> None:
        super().__init__(Limits())
        self.listed = 0
        self.read: list[int] = []  # the attempts each listing read
        self.errs = written_then_error

    async def park(self, entry: Parked) -> str | None:
        refused = await super().park(entry)
        return "error" if self.errs and refused is None else refused

    async def entries(self, source: str, only: Collection[Key] | None = None) -> list[Parked]:
        self.listed += 1
        self.read.append(len(await super().entries(source, only)))
        return await super().entries(source, only)


async def _parked_after_the_pass(tmp_path: Path, lot: CountingLot, *, straddled: bool) -> FakePublisher:
    """A request signed with the new secret, checked against the source it found (before the reload when
    `straddled`, else after it) and parked after the attendant's pass for that change; then the next pass."""
    file = tmp_path / "sources.yaml"
    file.write_text(f"sources:\n  - {{name: shop, secrets: [{OLD}]}}\n")
    metrics, publisher = Metrics(), FakePublisher()
    registry = SourceRegistry(default=None, file=file, metrics=metrics)
    pipeline = compose(
        make_settings(secrets=(), sources_file=file),
        publisher=publisher,
        dedupe=MemoryDedupeStore(ttl=60, max_entries=100),
        metrics=metrics,
        sources=registry,
        parking=lot,
    )
    registry.on_change(pipeline.attendant.secrets_changed)
    found = registry.lookup("/webhooks/mytpe/shop")  # as the request starts; its body is still coming
    file.write_text(f"sources:\n  - {{name: shop, secrets: [{NEW}]}}\n")  # MyTPE regenerated; the file follows
    assert await registry.poll("SIGHUP")
    await pipeline.attendant.pass_once()  # the pass for that change: nothing parked yet
    assert lot.listed == 1
    if not straddled:
        found = registry.lookup("/webhooks/mytpe/shop")
    assert found is not None
    body, delivery_id = sample()
    forged = "whsec_" + "ee" * 24
    signed = signed_headers(
        body, secret=NEW if straddled else forged, timestamp=int(time.time()), delivery_id=delivery_id
    )
    raw = RawHeaders([(k.lower().encode(), v.encode()) for k, v in signed.items()])
    with pytest.raises(ParkingError if lot.errs else SignatureError):  # a park answered "error": a 503
        await pipeline.relay.handle(raw, body, found)  # checked against the secrets it found: parked
    await pipeline.attendant.pass_once()
    return publisher


@pytest.mark.parametrize("written_then_error", [False, True], ids=["parked", "parked-then-error"])
async def test_a_request_that_found_its_source_before_a_reload_and_parked_after_its_pass_is_verified_again(
    tmp_path: Path, written_then_error: bool
) -> None:
    """Review finding: a request looks its source up before it reads its body. One that straddled a reload
    was checked against the secrets it found, parked after the attendant's pass for that change, and waited
    for the next change or its expiry (a day), past MyTPE's last attempt. The review of the fix: a Redis park
    answered "error" past its timeout may have been stored too."""
    lot = CountingLot(written_then_error=written_then_error)
    publisher = await _parked_after_the_pass(tmp_path, lot, straddled=True)
    assert lot.listed == 2, "left parked until the next change"
    assert [dict(s.headers).get("mytpe-relay-reverified") for s in publisher.sent] == [b"true"]
    assert await _entries_are(lot, 0)


async def test_a_park_checked_against_the_current_secrets_asks_for_no_pass(tmp_path: Path) -> None:
    """A forgery parked after the reload: no new secret can verify it, and any sender can cause one."""
    lot = CountingLot()
    publisher = await _parked_after_the_pass(tmp_path, lot, straddled=False)
    assert lot.listed == 1 and publisher.sent == [] and await _entries_are(lot, 1)


async def test_a_parked_delivery_refused_for_its_instance_stays_parked_for_the_next_change(tmp_path: Path) -> None:
    """Review finding: a parked delivery that verified with the new secret but was refused `wrong_instance` (an
    instance_id mistyped in the same edit) was removed: MyTPE had given up on it, so correcting the typo
    recovered nothing. It now stays parked, and the next change of the source verifies it again."""
    lot = MemoryParkingLot(Limits())
    entry = parked(NEW, at=time.time())
    await lot.park(entry)
    publisher = FakePublisher()
    attendant = attendant_for(tmp_path, publisher, lot, Metrics())
    (mistyped,) = parse(f"sources:\n  - {{name: shop, secrets: [{NEW}], instance_id: not-this-one}}\n".encode(), "F")
    assert await attendant.reverify(mistyped) == (0, {})
    assert await lot.entries("shop") == [entry] and publisher.sent == []
    (corrected,) = parse(f"sources:\n  - {{name: shop, secrets: [{NEW}]}}\n".encode(), "F")
    assert await attendant.reverify(corrected) == (1, {})
    assert len(publisher.sent) == 1 and await lot.entries("shop") == []


class FailingLot(MemoryParkingLot):
    """Its entries of one source cannot be listed: the store failing mid-pass."""

    def __init__(self, failing: str) -> None:
        super().__init__(Limits())
        self.failing = failing

    async def entries(self, source: str, only: Collection[Key] | None = None) -> list[Parked]:
        if source == self.failing:
            raise ConnectionError("the store closed the connection")
        return await super().entries(source, only)


async def test_a_source_whose_store_fails_mid_pass_leaves_the_others_verified_and_stays_pending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: one failing call ended the whole pass, so the sources sorted after it were never verified
    again while it kept failing, and the gauges went stale. Each source now stands alone."""
    lot = FailingLot("a-first")
    await lot.park(parked(NEW, at=time.time()))
    publisher, metrics = FakePublisher(), Metrics()
    attendant = attendant_for(tmp_path, publisher, lot, metrics, also="a-first")
    attendant._pending.update({"a-first", "shop"})
    await attendant.pass_once()
    assert len(publisher.sent) == 1  # shop, sorted after the failing source
    assert attendant._pending == {"a-first"}  # tried again next pass
    assert metrics.parked_entries._value.get() == 0  # the gauges still set
    (said,) = [r.getMessage() for r in caplog.records if "parking pass" in r.getMessage()]
    assert said.startswith("parking pass: 1 source(s) not verified again, tried next pass (first: a-first,")


async def test_while_kafka_is_down_only_the_entries_that_verified_are_tried_again(tmp_path: Path) -> None:
    """Review finding: a source stays pending while one of its entries waits for Kafka, and every pass verified
    its whole lot again: at the parking cap, about 0.35 s of HMAC on the event loop every 5 s for as long as
    Kafka was down (on Redis, the lot downloaded each time too). With no change since its last whole pass, only
    the entries that verified are tried again; a change verifies the whole lot again. Review of that: on Redis
    each pass still downloaded the whole lot; only those entries are read now."""
    now = time.time()
    lot = CountingLot()
    await lot.park(parked(NEW, at=now))
    for n in range(20):
        await lot.park(parked("whsec_" + f"{n:02x}" * 24, at=now))  # forgeries
    publisher = FakePublisher(fail_with=kafka_down())
    attendant = attendant_for(tmp_path, publisher, lot, Metrics())
    verified: list[str] = []
    verify = attendant._verify

    def counting(headers: Any, body: bytes, source: Any, *, now: float, window: int) -> Any:
        verified.append(headers.getlist(signatures.DELIVERY_ID)[0])
        return verify(headers, body, source, now=now, window=window)

    attendant._verify = counting
    attendant._pending.add("shop")
    await attendant.pass_once()
    assert len(verified) == 21 and lot.read == [21] and attendant._pending == {"shop"}  # one waits for Kafka
    verified.clear()
    await attendant.pass_once()
    assert len(verified) == 1 and lot.read == [21, 1]  # only the one that verified, read and tried again
    publisher.fail_with = None  # Kafka back, nothing changed
    await attendant.pass_once()
    assert len(verified) == 2 and len(publisher.sent) == 1
    verified.clear()
    await attendant.pass_once()  # then a whole pass, for a park landed since the last (the test below)
    assert len(verified) == 20 and len(publisher.sent) == 1 and attendant._pending == set()
    attendant.secrets_changed(attendant._sources.current, [attendant._sources.current.by_name("shop")])  # type: ignore[list-item]
    verified.clear()
    await attendant.pass_once()
    assert len(verified) == 20 and len(publisher.sent) == 1  # a change: the whole lot (the forgeries) again


@pytest.mark.parametrize("down", [3, 0], ids=["kafka-back-after-a-whole-pass", "kafka-back-before"])
async def test_a_park_landing_after_the_whole_pass_is_verified_within_a_few_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, down: int
) -> None:
    """Review of the above: a park that lands after a source's whole pass (a Redis park answered past its timeout,
    or another replica's) was verified by the passes that followed while Kafka was down; with only the waiting
    entries tried, it would wait for the source's next change and expire. One pass in WHOLE_EVERY is whole.
    Review of that: Kafka back before that pass, the waiting entries relayed by a pass of their own took the
    source off the pending list, and the late park was never verified; a source leaves it after a whole pass."""
    monkeypatch.setattr(attendant_module, "WHOLE_EVERY", 3)
    lot = MemoryParkingLot(Limits())
    await lot.park(parked(NEW, at=time.time()))
    publisher = FakePublisher(fail_with=kafka_down())
    attendant = attendant_for(tmp_path, publisher, lot, Metrics())
    attendant._pending.add("shop")
    await attendant.pass_once()  # whole: the first entry verifies and waits for Kafka
    late = parked(NEW, at=time.time())
    await lot.park(late)  # landed after that pass, signed with the current secret
    for _ in range(down):  # Kafka still down; bounded: a whole pass comes within WHOLE_EVERY, and finds `late` too
        await attendant.pass_once()
    publisher.fail_with = None  # Kafka back, nothing changed
    for _ in range(2):  # bounded: the waiting entry's pass, then a whole one
        await attendant.pass_once()
    assert len(publisher.sent) == 2 and await lot.entries("shop") == [] and attendant._pending == set()


@pytest.mark.parametrize("during_its_pass", [False, True], ids=["between-passes", "during-its-pass"])
async def test_a_removed_source_leaves_nothing_behind(tmp_path: Path, during_its_pass: bool) -> None:
    """Review finding: the per-source state (the changes said, the last whole pass, the waiting entries) of a
    source removed while it was not pending stayed for the process's life, and a source removed during its own
    pass had it written again as the pass ended."""
    lot = HeldLot()
    attendant = attendant_for(tmp_path, FakePublisher(fail_with=kafka_down()), lot, Metrics(), also="b")
    registry = attendant._sources
    registry.on_change(attendant.secrets_changed)
    b = registry.current.by_name("b")
    assert b is not None
    attendant.secrets_changed(registry.current, [b])
    lot.go.set()
    await attendant.pass_once()
    assert "b" in attendant._changed and "b" in attendant._verified and attendant._pending == set()
    if during_its_pass:
        lot.go.clear()
        lot.listing.clear()
        attendant.secrets_changed(registry.current, [b])
        passing = asyncio.create_task(attendant.pass_once())
        await asyncio.wait_for(lot.listing.wait(), 5)
        assert lot.listed == 2  # b's second pass is listing its entries
    (tmp_path / "sources.yaml").write_text(f"sources:\n  - {{name: shop, secrets: [{NEW}]}}\n")
    assert await registry.poll("SIGHUP")
    if during_its_pass:
        lot.go.set()
        await asyncio.wait_for(passing, 5)
    await attendant.pass_once()
    assert [name for name in ("b", "shop") if name in attendant._changed] == []
    assert "b" not in attendant._verified and "b" not in attendant._waiting and attendant._pending == set()


async def test_while_kafka_is_down_a_pass_tries_one_publish_per_source(tmp_path: Path) -> None:
    """Review finding: the entries of a source were relayed one after another, each waiting for its publish to
    fail (RELAY_PUBLISH_TIMEOUT_SECONDS, or RELAY_INFLIGHT_WAIT_SECONDS behind a claim the late acknowledgements
    hold), so with N waiting a pass lasted N times that, and every other source's pass and the expiry waited
    behind it. After one is not made durable, the others that verify wait for the next pass untried."""
    now = time.time()
    lot = MemoryParkingLot(Limits())
    for _ in range(3):
        await lot.park(parked(NEW, at=now))
    publisher = FakePublisher(fail_with=kafka_down())
    attendant = attendant_for(tmp_path, publisher, lot, Metrics())
    tried: list[str] = []
    relay = attendant._relay

    def counting(signed: Any, headers: Any, body: bytes, source: Any, **kwargs: Any) -> Any:
        tried.append(headers.getlist(signatures.DELIVERY_ID)[0])
        return relay(signed, headers, body, source, **kwargs)

    attendant._relay = counting
    attendant._pending.add("shop")
    for _ in range(2):  # a whole pass, then one of the waiting entries
        tried.clear()
        await attendant.pass_once()
        assert len(tried) == 1 and len(attendant._waiting["shop"]) == 3 and attendant._pending == {"shop"}
    publisher.fail_with = None  # Kafka back
    for _ in range(2):  # bounded: the waiting entries, then a whole pass
        await attendant.pass_once()
    assert len(publisher.sent) == 3 and await lot.entries("shop") == [] and attendant._pending == set()


async def test_an_entry_that_cannot_be_relayed_does_not_hold_its_sources_others(tmp_path: Path) -> None:
    """Review of the above: entries are listed oldest first, so one that can never be made durable (its topic's
    ACL missing, a body too large for the spool's room left) was tried first on every pass, and held the
    others untried until it expired, with Kafka healthy. A pass starts after the entry the last one stopped at."""
    now = time.time()
    lot = MemoryParkingLot(Limits())
    entries = [parked(NEW, at=now) for _ in range(4)]
    for entry in entries:
        await lot.park(entry)
    blocked = {entries[0].delivery_id, entries[2].delivery_id}
    publisher = FakePublisher()
    attendant = attendant_for(tmp_path, publisher, lot, Metrics())
    relay = attendant._relay

    def denying(signed: Any, headers: Any, body: bytes, source: Any, **kwargs: Any) -> Any:
        if headers.getlist(signatures.DELIVERY_ID)[0] in blocked:
            raise KafkaDenied("TopicAuthorizationFailedError")
        return relay(signed, headers, body, source, **kwargs)

    attendant._relay = denying
    attendant._pending.add("shop")
    for _ in range(3):  # bounded: each pass goes past the entry the last one stopped at
        await attendant.pass_once()
    assert sorted(json.loads(sent.value)["id"] for sent in publisher.sent) == sorted(
        e.delivery_id for e in (entries[1], entries[3])
    )
    assert {e.delivery_id for e in await lot.entries("shop")} == blocked and attendant._pending == {"shop"}
