"""The deliverer's order of operations with a shared dedupe store: the answer does not wait for the commit.

A store fake stands for Redis here (the order is the deliverer's logic); the same path against a real
redis-server and broker is in tests/integration/test_redis_dedupe.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from relay.errors import DedupeUnavailable, PublishPending, Unavailable
from relay.mytpe.signatures import SignedHeaders
from relay.pipeline import late_acks
from relay.pipeline.commits import Commits
from relay.pipeline.deliverer import Deliverer
from relay.pipeline.metrics import DeliveryMetrics
from relay.pipeline.records import Record
from relay.pipeline.tasks import Tasks
from relay.types import Ack, Claim, DedupeStore
from tests.conftest import make_settings
from tests.fakes import FakePublisher

TOPIC = "t.transaction"


@dataclass
class HeldStore:
    """A shared store whose commits wait until the test lets them through."""

    let_through: asyncio.Event = field(default_factory=asyncio.Event)
    committed: list[str] = field(default_factory=list)
    commits_started: int = 0

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def ping(self) -> bool:
        return True

    async def claim(self, key: str, *, wait: float) -> Claim:
        return Claim.DUPLICATE if key in self.committed else Claim.NEW

    async def commit(self, key: str) -> None:
        self.commits_started += 1
        await self.let_through.wait()
        self.committed.append(key)

    def commit_soon(self, key: str, done: Callable[[BaseException | None], None]) -> asyncio.Future[object]:
        """As RedisDedupeStore's: a reply future, `done` told the outcome; a cancel stops the wait only."""
        sent: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        running = asyncio.ensure_future(self.commit(key))
        running.add_done_callback(partial(_settle, sent))
        sent.add_done_callback(partial(_told, done, running))
        return sent

    async def release(self, key: str) -> None: ...
    async def extend(self, key: str, seconds: float) -> bool:
        return False  # no lease: nothing to renew


def _settle(sent: asyncio.Future[object], running: asyncio.Future[None]) -> None:
    if sent.done():
        return
    if running.cancelled():
        sent.cancel()
    elif running.exception() is None:
        sent.set_result(None)
    else:
        sent.set_exception(running.exception())  # type: ignore[arg-type]


def _told(
    done: Callable[[BaseException | None], None], running: asyncio.Future[None], sent: asyncio.Future[object]
) -> None:
    done(asyncio.CancelledError() if sent.cancelled() else sent.exception())  # a cancel leaves `running` be


def deliverer(
    store: DedupeStore,
    *,
    max_in_flight: int = 10,
    publisher: FakePublisher | None = None,
    metrics: DeliveryMetrics | None = None,
    fail_open: bool = False,
) -> Deliverer:
    settings = make_settings(max_in_flight=max_in_flight, dedupe_fail_open=fail_open)
    metrics = metrics if metrics is not None else DeliveryMetrics(CollectorRegistry())
    publisher = publisher or FakePublisher()
    return Deliverer(settings, publisher=publisher, dedupe=store, metrics=metrics, topics=[TOPIC])


async def deliver(relay: Deliverer, delivery_id: str) -> str:
    """One delivery, answered; a deliverer that waited for the held commit fails here instead of hanging."""
    return await asyncio.wait_for(_deliver(relay, delivery_id), 5)


async def _deliver(relay: Deliverer, delivery_id: str) -> str:
    relay.admit()
    try:
        record = Record(TOPIC, b"key", b"{}", [])
        outcome = await relay.deliver(delivery_id, record, SignedHeaders(0, "0", b"", delivery_id))
    finally:
        relay.leave()
    return outcome.status


async def test_the_answer_does_not_wait_for_a_shared_stores_commit() -> None:
    store = HeldStore()
    relay = deliverer(store)
    assert await deliver(relay, "d-1") == "accepted"  # the commit is still held
    await asyncio.sleep(0)
    assert store.commits_started == 1 and store.committed == []
    store.let_through.set()
    assert await relay.drain(timeout=5) == 0
    assert store.committed == ["d-1"]


async def test_drain_waits_for_the_commits_on_their_way() -> None:
    store = HeldStore()
    relay = deliverer(store)
    await deliver(relay, "d-2")
    draining = asyncio.create_task(relay.drain(timeout=30))
    await asyncio.sleep(0.05)
    assert not draining.done()  # the store must not stop under a commit
    store.let_through.set()
    await draining
    assert store.committed == ["d-2"]


async def test_a_commit_still_held_at_the_drain_bound_is_said_as_unknown_not_as_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review finding: the drain's cancel was reported as a failed commit (a line per delivery and a count),
    though cancelling the reply stops the wait only, and the commit may still land."""
    store = HeldStore()
    metrics = DeliveryMetrics(CollectorRegistry())
    relay = deliverer(store, metrics=metrics)
    await deliver(relay, "d-3")
    with caplog.at_level(logging.WARNING):
        assert await relay.drain(timeout=0.05) == 0  # no late acknowledgement was abandoned
        await asyncio.sleep(0)  # the cancelled reply's callbacks
    assert "1 published delivery(ies) possibly not marked done at shutdown" in caplog.text
    assert "could not mark it done" not in caplog.text
    assert metrics.dedupe_errors.labels("commit")._value.get() == 0
    store.let_through.set()  # the operation was not withdrawn: it lands after all
    for _ in range(100):  # bounded
        if store.committed:
            break
        await asyncio.sleep(0)
    assert store.committed == ["d-3"]


async def test_commits_on_their_way_do_not_count_against_max_in_flight() -> None:
    """A commit holds its key only; the requests that made it were counted while they ran."""
    store = HeldStore()
    relay = deliverer(store, max_in_flight=1)
    await deliver(relay, "d-4")
    relay.admit()
    relay.leave()
    store.let_through.set()
    await relay.drain(timeout=5)


async def test_the_drain_waits_for_acknowledgements_and_commits_within_one_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding: the two waits took `timeout` each, so shutdown could take a second more than its
    budget (RELAY_* bounds, docs/guarantees.md §7). Their bounds now add up to `timeout`."""
    bounds: list[float] = []
    for waits in (Tasks, Commits):  # the late acknowledgements, then the commits

        async def recorded(self: Tasks | Commits, timeout: float, *cleanup: float, finish: Any = waits.finish) -> int:
            bounds.append(timeout)
            return int(await finish(self, timeout, *cleanup))

        monkeypatch.setattr(waits, "finish", recorded)
    publisher = FakePublisher()
    relay = deliverer(HeldStore(), publisher=publisher)
    await deliver(relay, "d-5")  # its commit is held
    publisher.leave_pending = True
    with pytest.raises(PublishPending):
        await deliver(relay, "d-6")  # its late acknowledgement never comes: the first wait lasts its bound
    await relay.drain(timeout=0.05)
    assert len(bounds) == 2 and sum(bounds) <= 0.05 + 0.001  # the old code gave the second wait 0.05 too


class StoppedStore(HeldStore):
    def commit_soon(self, key: str, done: Callable[[BaseException | None], None]) -> asyncio.Future[object]:
        raise Unavailable("shutting_down", "the dedupe store is stopped")


async def test_a_commit_refused_by_a_stopped_store_is_said_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """Review finding: only DedupeUnavailable was caught, so a commit sent after the store stopped failed
    inside a task nobody awaited (asyncio's 'never retrieved' traceback), with no log line and no count."""
    metrics = DeliveryMetrics(CollectorRegistry())
    relay = deliverer(StoppedStore(), metrics=metrics)
    with caplog.at_level(logging.WARNING):
        assert await deliver(relay, "d-7") == "accepted"
        await relay.drain(timeout=5)
    assert "published d-7 but could not mark it done" in caplog.text
    assert "background step failed" not in caplog.text
    assert metrics.dedupe_errors.labels("commit")._value.get() == 1


class StoppedReleaseStore(HeldStore):
    async def release(self, key: str) -> None:
        raise Unavailable("shutting_down", "the dedupe store is stopped")


class UnansweredReleaseStore(HeldStore):
    async def release(self, key: str) -> None:
        raise DedupeUnavailable("release", TimeoutError("no answer"))


@pytest.mark.parametrize("store", [StoppedReleaseStore, UnansweredReleaseStore], ids=["stopped", "unanswered"])
async def test_a_refused_release_keeps_the_publishs_failure_and_counts_once(
    store: type[HeldStore], caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: `_release` caught only DedupeUnavailable, so a store that had stopped replaced the
    publish's failure (its reason code, its log line) with its own, uncounted. A store that did not answer
    is counted by the store's timing: not a second time here."""
    metrics = DeliveryMetrics(CollectorRegistry())
    failure = Unavailable("kafka_unavailable", "Kafka did not acknowledge")
    relay = deliverer(store(), metrics=metrics, publisher=FakePublisher(fail_with=failure))
    with caplog.at_level(logging.WARNING), pytest.raises(Unavailable) as raised:
        await deliver(relay, "d-7r")
    assert raised.value is failure
    assert "could not release d-7r" in caplog.text
    assert metrics.dedupe_errors.labels("release")._value.get() == 1


async def test_a_late_ack_whose_release_is_refused_does_not_say_it_was_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review finding: a late acknowledgement that failed logged "its claim is released" after "could not
    release" (a store that did not answer, or had stopped)."""
    publisher = FakePublisher(leave_pending=True)
    relay = deliverer(UnansweredReleaseStore(), publisher=publisher)
    with pytest.raises(PublishPending):
        await deliver(relay, "d-7l")
    with caplog.at_level(logging.WARNING):
        publisher.pending[0].set_exception(Unavailable("kafka_unavailable", "Kafka did not acknowledge"))
        await relay.drain(timeout=5)
    assert "could not release d-7l" in caplog.text
    assert "d-7l was not published" in caplog.text and "its claim is left to its lease" in caplog.text
    assert "its claim is released" not in caplog.text


class FailingStore(HeldStore):
    async def commit(self, key: str) -> None:
        raise DedupeUnavailable("commit", TimeoutError("no answer"))


class AwaitedStore:
    """A shared store with no `commit_soon` (relay.types.SendsCommits): its commit is awaited, as before."""

    def __init__(self, inner: HeldStore) -> None:
        self.start, self.stop, self.ping = inner.start, inner.stop, inner.ping
        self.claim, self.commit, self.release, self.extend = inner.claim, inner.commit, inner.release, inner.extend


@pytest.mark.parametrize("awaited", [False, True], ids=["sent", "awaited"])
async def test_a_failed_commit_is_counted_once(awaited: bool) -> None:
    """The store's timing counts a store error; the commit's own handler must not count it again."""
    metrics = DeliveryMetrics(CollectorRegistry())
    relay = deliverer(AwaitedStore(FailingStore()) if awaited else FailingStore(), metrics=metrics)
    assert await deliver(relay, "d-8") == "accepted"
    await relay.drain(timeout=5)
    await asyncio.sleep(0)
    assert metrics.dedupe_errors.labels("commit")._value.get() == 1


async def test_a_store_without_commit_soon_is_awaited() -> None:
    store = HeldStore()
    relay = deliverer(AwaitedStore(store))
    answering = asyncio.create_task(deliver(relay, "d-10"))
    for _ in range(100):  # bounded
        if store.commits_started:
            break
        await asyncio.sleep(0)
    assert store.commits_started == 1 and not answering.done()  # the answer waits for this store's commit
    store.let_through.set()
    assert await answering == "accepted" and store.committed == ["d-10"]


async def test_a_background_step_that_fails_is_logged_not_dropped(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise ValueError("a bug")

    tasks = Tasks()
    with caplog.at_level(logging.ERROR, logger="relay.pipeline.tasks"):
        tasks.start(broken())
        assert await tasks.finish(5, 5) == 0
    assert "a delivery's background step failed: ValueError" in caplog.text
    assert len(tasks) == 0


class RefusingStore(HeldStore):
    async def claim(self, key: str, *, wait: float) -> Claim:
        raise DedupeUnavailable("claim", TimeoutError("no answer"))


def claims(registry: CollectorRegistry) -> tuple[float, float]:
    """The claim's observations and its counted errors (a series never touched: 0)."""
    observed = registry.get_sample_value("mytpe_relay_dedupe_duration_seconds_count", {"op": "claim"})
    failed = registry.get_sample_value("mytpe_relay_dedupe_errors_total", {"op": "claim"})
    return observed or 0.0, failed or 0.0


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
async def test_a_shared_stores_claim_is_timed_and_its_failure_counted_once(fail_open: bool) -> None:
    """The claim is timed by the deliverer around its own await (no coroutine of StoreTiming's): each claim
    is observed once, whatever its outcome, and a store error counted once."""
    registry = CollectorRegistry()
    relay = deliverer(HeldStore(let_through=asyncio.Event()), metrics=DeliveryMetrics(registry))
    assert await deliver(relay, "d-11") == "accepted"
    assert claims(registry) == (1.0, 0.0)
    registry = CollectorRegistry()
    relay = deliverer(RefusingStore(), metrics=DeliveryMetrics(registry), fail_open=fail_open)
    if fail_open:
        assert await deliver(relay, "d-12") == "accepted"
    else:
        with pytest.raises(DedupeUnavailable):
            await deliver(relay, "d-12")
    assert claims(registry) == (1.0, 1.0)


class StalledExtendStore(HeldStore):
    """A shared store whose `extend` never answers, and which records its extensions and releases."""

    def __init__(self) -> None:
        super().__init__()
        self.extending = asyncio.Event()
        self.extensions = 0
        self.released: list[str] = []

    async def extend(self, key: str, seconds: float) -> bool:
        self.extensions += 1
        self.extending.set()
        await asyncio.Event().wait()
        return True

    def round_trips(self) -> int:
        """The store's operations after the claim: each one a Redis round trip in the real store
        (docs/guarantees.md §7). A commit sent without waiting counts too (`UnsentCommitStore`)."""
        return self.extensions + len(self.released) + self.commits_started

    async def release(self, key: str) -> None:
        self.released.append(key)


async def extending(
    store: StalledExtendStore, publisher: FakePublisher, delivery_id: str, *, metrics: DeliveryMetrics | None = None
) -> Deliverer:
    """A deliverer whose publish of `delivery_id` was left pending, its claim's extension under way."""
    relay = deliverer(store, publisher=publisher, metrics=metrics)
    with pytest.raises(PublishPending):
        await deliver(relay, delivery_id)
    await asyncio.wait_for(store.extending.wait(), 5)
    return relay


def running() -> list[asyncio.Task[Any]]:
    """The tasks not done, but this one."""
    return [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]


async def test_a_late_ack_abandoned_at_the_drain_while_its_claim_is_extended_releases_the_claim() -> None:
    """Noted in earlier sessions' closing notes, left until now: the drain cancelled a late acknowledgement's
    task while it extended the claim, and the claim was kept (until its lease, extended or not, expired),
    where a cancelled wait for the acknowledgement itself releases it, so that a retry goes through."""
    store = StalledExtendStore()
    publisher = FakePublisher(leave_pending=True)
    relay = await extending(store, publisher, "d-13")
    assert await relay.drain(timeout=0.05) == 1  # abandoned: its acknowledgement never came
    assert store.released == ["d-13"]
    assert store.round_trips() == 2  # the extension in flight, then the release: §7's "up to two more"


async def test_the_drain_says_how_many_late_acks_it_gave_up_on(caplog: pytest.LogCaptureFixture) -> None:
    """Said by the drain itself: the server said it, and `replay` (the other caller) dropped the count."""
    relay = await extending(StalledExtendStore(), FakePublisher(leave_pending=True), "d-14")
    with caplog.at_level(logging.WARNING, logger="relay.pipeline.deliverer"):
        assert await relay.drain(timeout=0.05) == 1
    said = [record.getMessage() for record in caplog.records if "given up on at the drain" in record.getMessage()]
    assert said == [
        "1 late acknowledgement(s) given up on at the drain (released, or committed if acked meanwhile, unless a"
        " line says that was cut)"
    ]


class UnsentCommitStore(StalledExtendStore):
    """As Redis's batcher does with a commit sent behind a stalled batch when the store stops right after the
    drain: a commit sent without waiting never lands; only an awaited one does."""

    def commit_soon(self, key: str, done: Callable[[BaseException | None], None]) -> asyncio.Future[object]:
        self.commits_started += 1  # sent: a round trip, whether or not it lands
        return asyncio.get_running_loop().create_future()


async def test_a_late_ack_that_came_while_its_claim_was_being_renewed_is_committed_at_once() -> None:
    """Review findings, in turn: the outcome was awaited only after the extension, so an acknowledgement that came
    while the extension waited on Redis was thrown away by a drain that gave up then (a retry would publish the
    record again); then it was committed only once the drain gave up; and, with renewals, only once the renewal
    answered. Now the renewal does not keep it waiting: committed at once, the drain has no late ack to give up."""
    store = UnsentCommitStore()
    store.let_through.set()
    publisher = FakePublisher(leave_pending=True)
    relay = await extending(store, publisher, "d-14")
    publisher.pending[0].set_result(Ack(TOPIC, 0, 7))  # Kafka acknowledges while the renewal waits on Redis
    await asyncio.sleep(0.02)  # before the drain
    assert await relay.drain(timeout=0.05) == 0  # nothing given up on: it was committed, not held
    assert store.released == []
    assert store.commits_started == 1  # sent at once (the drain then says it may not have landed)
    assert store.round_trips() == 2  # the renewal in flight (cancelled), then the commit: §7's "up to two more"
    assert running() == []  # the renewal Kafka's outcome overtook is cancelled, not left running


async def test_a_late_ack_that_comes_during_the_drain_is_committed_awaited() -> None:
    """Review of the renewals: an acknowledgement that came during the drain went the ordinary way, a commit sent
    without waiting, which had only what was left of the drain's second (the store stops right after it); one
    queued behind a slow batch was lost, its mark left in flight. Once the drain has begun it is awaited, as a
    given-up late acknowledgement's is, within the drain's bound for store operations."""
    store = UnsentCommitStore()  # a commit sent without waiting never lands; an awaited one does
    store.let_through.set()
    publisher = FakePublisher(leave_pending=True)
    relay = await extending(store, publisher, "d-15")
    draining = asyncio.create_task(relay.drain(timeout=0.5))
    await asyncio.sleep(0.05)  # the drain has begun
    publisher.pending[0].set_result(Ack(TOPIC, 0, 9))
    assert await draining == 0
    assert store.committed == ["d-15"] and store.released == []


class StalledStore(StalledExtendStore):
    """Redis stalled: neither the extension nor the release queued behind it answers."""

    async def release(self, key: str) -> None:
        self.released.append(key)
        await asyncio.Event().wait()


async def test_the_drain_cuts_the_store_operations_of_a_late_ack_it_gave_up_on_at_their_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Carried in earlier sessions' notes: the stop bound (Settings.stop_bound_seconds, the ready line, the
    chart's check) left out a given-up late acknowledgement's release or commit, which the drain awaited
    for as long as the store client's socket timeout let it (a URL may set a longer one). Now the drain
    cuts them at STORE_CLEANUP_SECONDS, which the bound counts, and says so."""
    monkeypatch.setattr(late_acks, "STORE_CLEANUP_SECONDS", 0.05)
    store = StalledStore()
    registry = CollectorRegistry()
    relay = await extending(store, FakePublisher(leave_pending=True), "d-16", metrics=DeliveryMetrics(registry))
    with caplog.at_level(logging.WARNING, logger="relay.pipeline.deliverer"):
        abandoned = await asyncio.wait_for(relay.drain(timeout=0.05), 10)  # unbounded before: it never returned
    assert abandoned == 1
    assert store.released == ["d-16"]  # sent, never answered
    assert "delivery d-16: its release was cut at the drain's bound" in caplog.text
    assert running() == []
    # Neither cut operation is a round trip that took the drain's bound: none is observed, as a commit the
    # drain stopped waiting for is not (Commits); the lines say them.
    assert observed(registry, "extend") == observed(registry, "release") == 0.0
    assert observed(registry, "claim") == 1.0  # the registry is the deliverer's, its store timed as shared


def observed(registry: CollectorRegistry, op: str) -> float:
    """How many of `op`'s round trips `dedupe_duration` observed."""
    return registry.get_sample_value("mytpe_relay_dedupe_duration_seconds_count", {"op": op}) or 0.0


async def test_the_drain_cuts_an_awaited_commit_at_the_bound_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Kafka acknowledged during the drain; the awaited commit that follows never answers: cut at the drain's bound
    for store operations, and said (the shutdown line does not say it was committed)."""
    monkeypatch.setattr(late_acks, "STORE_CLEANUP_SECONDS", 0.05)
    store = UnsentCommitStore()  # its awaited commit waits for `let_through`, never set here
    publisher = FakePublisher(leave_pending=True)
    registry = CollectorRegistry()
    relay = await extending(store, publisher, "d-19", metrics=DeliveryMetrics(registry))
    draining = asyncio.create_task(relay.drain(timeout=0.1))
    await asyncio.sleep(0.02)  # the drain has begun
    publisher.pending[0].set_result(Ack(TOPIC, 0, 8))
    with caplog.at_level(logging.WARNING, logger="relay.pipeline.deliverer"):
        assert await asyncio.wait_for(draining, 10) == 1
    assert store.committed == [] and store.released == []
    assert "delivery d-19: its commit (Kafka had acknowledged it) was cut at the drain's bound" in caplog.text
    assert registry.get_sample_value("mytpe_relay_published_total", {"topic": TOPIC}) == 1.0
    assert observed(registry, "commit") == 0.0  # the cut commit is no round trip of the bound's length
    assert running() == []


async def test_a_commit_still_on_its_way_at_the_drain_is_said_and_counted_apart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Kafka acknowledged while the claim was being renewed; the commit that follows never answers: the drain
    says it may not have landed (the shutdown line does not say it was committed)."""
    store = UnsentCommitStore()  # its commits never land
    publisher = FakePublisher(leave_pending=True)
    registry = CollectorRegistry()
    relay = await extending(store, publisher, "d-18", metrics=DeliveryMetrics(registry))
    publisher.pending[0].set_result(Ack(TOPIC, 0, 8))
    await asyncio.sleep(0.02)  # before the drain: its commit is sent without waiting, the ordinary way
    with caplog.at_level(logging.WARNING, logger="relay.pipeline.deliverer"):
        assert await asyncio.wait_for(relay.drain(timeout=0.05), 10) == 0
    assert store.committed == [] and store.released == []
    assert "1 published delivery(ies) possibly not marked done at shutdown" in caplog.text
    # Kafka has the record: published counts it; neither the cancelled renewal nor the commit that never
    # answered is a round trip in dedupe_duration
    assert registry.get_sample_value("mytpe_relay_published_total", {"topic": TOPIC}) == 1.0
    assert observed(registry, "commit") == observed(registry, "extend") == 0.0
    assert observed(registry, "claim") == 1.0


class SlowReleaseStore(StalledExtendStore):
    """Redis answering a release after a few turns of the event loop, as a real round trip does."""

    async def release(self, key: str) -> None:
        await asyncio.sleep(0.05)
        self.released.append(key)


async def test_the_drain_gives_a_late_acks_release_its_time_before_the_cut(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding on the cut above: every fake store's release answered without yielding, so a cut of 0 s
    passed every test (a real store's release would then never be sent and answered)."""
    monkeypatch.setattr(late_acks, "STORE_CLEANUP_SECONDS", 5.0)
    store = SlowReleaseStore()
    relay = await extending(store, FakePublisher(leave_pending=True), "d-17")
    with caplog.at_level(logging.WARNING, logger="relay.pipeline.deliverer"):
        assert await asyncio.wait_for(relay.drain(timeout=0.05), 10) == 1
    assert store.released == ["d-17"]
    assert "cut at the drain's bound" not in caplog.text  # the line a cut says


class SlowReleaseAfterExtendStore(StalledExtendStore):
    """The extension answers at once; a release answers after a few turns of the loop."""

    releasing = False

    async def extend(self, key: str, seconds: float) -> bool:
        self.extensions += 1
        return False  # answered, nothing more to renew

    async def release(self, key: str) -> None:
        self.releasing = True
        await asyncio.sleep(0.2)
        self.released.append(key)


async def test_a_failed_late_publish_keeps_its_release_when_the_drain_gives_up_meanwhile(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: the release after a late publish failed (Kafka down at SIGTERM: the flush fails the
    records still held) was interrupted by the drain's first cancel, with no cleanup time and no line."""
    monkeypatch.setattr(late_acks, "STORE_CLEANUP_SECONDS", 5.0)
    store = SlowReleaseAfterExtendStore()
    publisher = FakePublisher(leave_pending=True)
    relay = deliverer(store, publisher=publisher)
    with pytest.raises(PublishPending):
        await deliver(relay, "d-19")
    publisher.pending[0].set_exception(RuntimeError("the producer stopped"))
    for _ in range(100):  # bounded: the settling task sees the failure and starts the release
        if store.releasing:
            break
        await asyncio.sleep(0)
    assert store.releasing
    with caplog.at_level(logging.WARNING, logger="relay.pipeline.deliverer"):
        assert await asyncio.wait_for(relay.drain(timeout=0.05), 10) == 1  # given up on, mid-release
    assert store.released == ["d-19"]
    assert "delivery d-19 was not published (the producer stopped); its claim is released" in caplog.text

    monkeypatch.setattr(late_acks, "STORE_CLEANUP_SECONDS", 0.05)  # and past the bound: cut, and said
    store.releasing = False
    with pytest.raises(PublishPending):
        await deliver(relay, "d-20")
    publisher.pending[1].set_exception(RuntimeError("the producer stopped"))
    for _ in range(100):
        if store.releasing:
            break
        await asyncio.sleep(0)
    assert store.releasing  # cut mid-release, not in _abandoned's
    with caplog.at_level(logging.WARNING, logger="relay.pipeline.deliverer"):
        assert await asyncio.wait_for(relay.drain(timeout=0.05), 10) == 1
    assert store.released == ["d-19"]
    assert "delivery d-20: its release was cut at the drain's bound" in caplog.text
    assert running() == []


class BrokenExtendStore(StalledExtendStore):
    async def extend(self, key: str, seconds: float) -> bool:
        raise ValueError("a bug in the store")


async def test_an_extension_that_raises_leaves_no_outcome_running() -> None:
    """Review finding: the outcome runs as a task of its own from the start; when the extension raised
    something other than Unavailable (a bug), the claim was released and that task left running, read by
    no one ("Task exception was never retrieved", or a record landing after its claim was released)."""
    store = BrokenExtendStore()
    relay = deliverer(store, publisher=FakePublisher(leave_pending=True))
    with pytest.raises(PublishPending):
        await deliver(relay, "d-15")
    for _ in range(100):  # bounded: the settling task runs, fails its extension, releases, ends
        if store.released and not running():
            break
        await asyncio.sleep(0)
    assert store.released == ["d-15"]
    assert running() == []


async def test_a_send_span_that_cannot_be_made_releases_the_claim() -> None:
    """Review finding: the PRODUCER span was made after the claim and outside the block that releases it, so a
    tracer raising there (a span processor's on_start, say) left the claim held: with memory dedupe every retry
    of the delivery answered 503 in_flight until a restart. It is made inside that block now."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from relay.tracing import TracingConfig
    from relay.tracing.otel import Tracer

    tracer = Tracer.build(TracingConfig(ratio=1.0), SimpleSpanProcessor(InMemorySpanExporter()))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no span")

    tracer.send = broken  # type: ignore[method-assign]
    assert await _claim_after_a_traced_failure(tracer) is Claim.NEW


async def _claim_after_a_traced_failure(tracer: Any) -> Claim:
    """A sampled delivery whose tracing raises, on memory dedupe; then what a retry's claim gets."""
    from relay.dedupe.memory import MemoryDedupeStore

    store = MemoryDedupeStore(ttl=60, max_entries=100)
    relay = Deliverer(
        make_settings(inflight_wait_seconds=0.1),
        publisher=FakePublisher(),
        dedupe=store,
        metrics=DeliveryMetrics(CollectorRegistry()),
        topics=[TOPIC],
        tracer=tracer,
    )
    with tracer.request("/webhooks/mytpe", "/webhooks/mytpe"), pytest.raises(RuntimeError):
        await deliver(relay, "d-1")
    return await store.claim("d-1", wait=0.1)


async def test_a_claim_span_that_cannot_end_releases_the_new_claim() -> None:
    """Review of the fix above: the `dedupe claim` span ended after the claim, outside the block that releases it,
    so a span processor raising at its end left the new claim held, as the send span's did."""
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

    from relay.tracing import TracingConfig
    from relay.tracing.otel import Tracer

    class Refusing(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            if span.name == "dedupe claim":
                raise RuntimeError("the processor failed")

    assert await _claim_after_a_traced_failure(Tracer.build(TracingConfig(ratio=1.0), Refusing())) is Claim.NEW
