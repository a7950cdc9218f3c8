"""The parts of `mytpe-relay replay` that need no broker: the file format, the progress bar, the report."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import orjson
import pytest

from relay.dedupe.memory import MemoryDedupeStore
from relay.errors import KafkaRefused, SignatureError, Unavailable
from relay.metrics import Metrics
from relay.ops.captured import Captured, DlqStalled, count_lines, read_file
from relay.ops.cli import stopped_line
from relay.ops.progress import Progress
from relay.ops.replay import Report, _prepare, replay
from relay.pipeline.compose import compose
from relay.pipeline.records import REVERIFIED_HEADER, Outcome
from relay.settings import Secret, Settings
from relay.sources.config import Source, legacy, snapshot
from tests.fakes import FakePublisher
from tests.helpers import SECRET, signed_headers

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer


def test_the_file_format_and_its_unreadable_entries(tmp_path: Path) -> None:
    path = tmp_path / "captured.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"headers": {"X-MytpePay-Event": "transaction.completed"}, "body": "{\\"a\\":\\"\\u00e9\\"}"}',
                "",
                '{"headers": {"X": "1"}, "body_base64": "eyJiIjoxfQ=="}',
                "not json",
                '{"headers": {"X": 1}, "body": "{}"}',
                '{"headers": {}, "body_base64": "***"}',
                '{"body": "{}"}',
            ]
        ),
        encoding="utf-8",
    )
    entries = list(read_file(path))
    assert count_lines(path) == len(entries) == 6
    assert entries[0].getlist("x-mytpepay-event") == ["transaction.completed"]
    assert entries[0].body == '{"a":"é"}'.encode()
    assert (entries[1].origin, entries[1].body, entries[1].problem) == ("captured.jsonl:3", b'{"b":1}', None)
    problems = [e.problem for e in entries[2:]]
    assert all(p is not None and p.startswith("unreadable entry: ") for p in problems), problems
    assert [e.origin for e in entries[2:]] == [f"captured.jsonl:{n}" for n in (4, 5, 6, 7)]


def test_a_line_nested_past_the_parser_is_unreadable_and_the_others_still_go(tmp_path: Path) -> None:
    """Review finding: json.loads raised RecursionError on `[[[[…`, a traceback that every rerun met at the same
    line, so the rest of the file was never replayed."""
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "\n" + '{"headers": {}, "body": "{}"}\n', encoding="utf-8")
    first, second = read_file(path)
    assert first.problem is not None and first.problem.startswith("unreadable entry: ")
    assert second.problem is None


class FailingRead(io.BytesIO):
    """A file whose read fails after its first line, as a bad block does (EIO)."""

    def __iter__(self) -> FailingRead:
        self._lines = 0
        return self

    def __next__(self) -> bytes:
        self._lines += 1
        if self._lines > 1:
            raise OSError(5, "Input/output error")
        return b'{"headers": {}, "body": "{}"}\n'


async def test_a_file_whose_read_fails_midway_ends_in_one_unreadable_entry_after_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: an OSError while reading (EIO) was a traceback, from count_lines first (it reads the file
    before the replay does), then from read_file; the entries read before it are replayed, and it is a line."""
    path = tmp_path / "bad-block.jsonl"
    path.write_text("")
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: FailingRead())
    assert count_lines(path) is None
    entries = list(read_file(path))
    assert [(e.origin, e.problem) for e in entries] == [
        ("bad-block.jsonl:1", None),
        ("bad-block.jsonl:2", "unreadable entry: the file could not be read from here on: Input/output error"),
    ]


def test_the_progress_bar_redraws_at_most_every_interval_and_ends_with_a_newline() -> None:
    now = [100.0]
    stream = io.StringIO()
    bar = Progress(4, stream=stream, enabled=True, every=0.5, clock=lambda: now[0])
    now[0] = 101.0
    bar.update(1, {"accepted": 1})
    now[0] = 101.2
    bar.update(2, {"accepted": 2})  # too soon: not drawn
    now[0] = 102.0
    bar.finish(4, {"accepted": 3, "duplicate": 1})
    frames = stream.getvalue().split("\r")[1:]
    assert frames == [
        "[######                  ] 1/4  25%  1/s  accepted 1\x1b[K",
        "[########################] 4/4 100%  2/s  accepted 3 duplicate 1\x1b[K\n",
    ]


def test_without_a_total_or_a_terminal() -> None:
    stream = io.StringIO()
    assert Progress(None, stream=stream, enabled=True).render(7, {"accepted": 7}, 2.0) == "7 done  4/s  accepted 7"
    quiet = Progress(3, stream=stream, enabled=False)
    quiet.update(1, {})
    quiet.finish(3, {})
    assert stream.getvalue() == ""


class GoneTerminal(io.StringIO):
    """A terminal whose session closed: every write fails with EIO."""

    tried = 0

    def write(self, text: str) -> int:
        self.tried += 1
        raise OSError(5, "Input/output error")


def test_a_terminal_that_is_gone_stops_the_bar_never_the_command() -> None:
    """Review finding: SIGHUP (a closed ssh session) stops a replay as Ctrl-C does, and the publishes in flight
    are waited for; each one that settles redraws the bar, whose write to the gone terminal raised EIO, which
    abandoned the rest of the wait (their claims left in flight) and ended the command with a traceback."""
    terminal = GoneTerminal()
    bar = Progress(4, stream=terminal, enabled=True, every=0.0)
    bar.update(1, {"accepted": 1})  # raised OSError here
    bar.update(2, {"accepted": 2})
    bar.finish(4, {"accepted": 4})
    assert terminal.tried == 1  # no bar after the terminal is gone


def test_the_report_is_complete_only_when_everything_is_on_a_family_topic() -> None:
    durable, mixed = Report(), Report()
    for report in (durable, mixed):
        report.add("f:1", "accepted")
        report.add("f:2", "duplicate")
    mixed.add("f:3", "quarantined:malformed_json")
    assert durable.complete and durable.problems == []
    assert not mixed.complete
    assert (mixed.counts["quarantined"], mixed.problems) == (1, ["f:3: quarantined:malformed_json"])


class FakeRelay:
    """verify/build/deliver as the replay loop calls them; a body is `entity:seconds to publish`."""

    tracer = None  # tracing off

    def __init__(self, failing: str = "", refused: str = "") -> None:
        self.published: list[str] = []
        self.quarantined: list[tuple[str, str]] = []
        self.failing = failing
        self.refused = refused
        self.dlq_refuses = False
        self.sources = SimpleNamespace(current=snapshot([legacy([Secret(SECRET)])], generation=1, digest=""))

    def verify(self, headers: Captured, body: bytes, source: Source, *, now: float, window: int) -> SimpleNamespace:
        if body == b"forged":
            raise SignatureError("bad_signature")
        return SimpleNamespace(delivery_id=headers.origin)

    def build(
        self,
        signed: SimpleNamespace,
        body: bytes,
        source: Source,
        *,
        received_at: datetime,
        created_in: str | None = None,
        reverified: bool = False,
    ) -> tuple[str, SimpleNamespace, str]:
        entity, _, seconds = body.decode().partition(":")
        return signed.delivery_id, SimpleNamespace(key=entity.encode(), seconds=float(seconds)), signed.delivery_id

    async def deliver(
        self, delivery_id: str, record: SimpleNamespace, signed: object, *, key: str, source: str
    ) -> Outcome:
        await asyncio.sleep(record.seconds)
        if delivery_id == self.failing:
            raise Unavailable("kafka_timeout")
        if delivery_id == self.refused:
            raise KafkaRefused("MessageSizeTooLargeError")
        self.published.append(delivery_id)
        return Outcome("accepted", delivery_id)

    async def quarantine(
        self,
        signed: SimpleNamespace,
        headers: Captured,
        body: bytes,
        source: Source,
        reason: str,
        *,
        error: str = "",
        key: str = "",
    ) -> Outcome:
        if self.dlq_refuses:
            raise KafkaRefused("MessageSizeTooLargeError")
        self.quarantined.append((signed.delivery_id, reason))
        return Outcome("quarantined", signed.delivery_id, reason)


async def replayed(
    relay: FakeRelay,
    bodies: dict[str, bytes],
    pause_before: str = "",
    *,
    window: int = 64,
    from_dlq: bool = False,
    headers: dict[str, str] | None = None,
    tracer: Tracer | None = None,
) -> Report:
    """`bodies` replayed through `relay`, each entry with `headers`; `pause_before` an origin: read 0.15 s late."""

    async def entries() -> AsyncIterator[Captured]:
        for origin, body in bodies.items():
            if origin == pause_before:
                await asyncio.sleep(0.15)
            yield Captured(origin, dict(headers or {}), body)

    progress = Progress(len(bodies), stream=io.StringIO(), enabled=False)
    return await replay(
        relay,  # type: ignore[arg-type]
        entries(),
        sources=relay.sources,  # type: ignore[arg-type]
        from_dlq=from_dlq,
        dry_run=False,
        progress=progress,
        window=window,
        tracer=tracer,
    )


async def test_one_entity_waits_for_its_previous_entry_while_others_overlap() -> None:
    relay = FakeRelay()
    report = await replayed(relay, {"a1": b"A:0.2", "a2": b"A:0", "b1": b"B:0", "x": b"forged", "a3": b"A:0"})
    assert relay.published == ["b1", "a1", "a2", "a3"]  # b1 did not wait for A; a2 waited for a1
    assert (report.counts, report.problems) == ({"accepted": 4, "rejected": 1}, ["x: rejected:bad_signature"])


async def test_after_a_failure_its_entity_stops_and_nothing_new_starts() -> None:
    relay = FakeRelay(failing="a1")
    bodies = {"a1": b"A:0.05", "a2": b"A:0", "b1": b"B:0.1", "late": b"C:0"}
    report = await replayed(relay, bodies, pause_before="late")  # read after a1 failed
    assert relay.published == ["b1"]  # in flight when a1 failed, so it completes; `late` never starts
    assert report.stopped == "a1: unavailable:kafka_timeout"
    assert (report.processed, report.counts) == (3, {"accepted": 1, "unavailable": 2})
    assert report.problems == ["a1: unavailable:kafka_timeout", "a2: unavailable:after_earlier_failure"]


async def test_a_full_window_does_not_start_an_entity_after_its_failure() -> None:
    """Review finding: with the window full, the next entry waited for a publish to finish; when that was its own
    entity's previous entry and it failed, the entry started anyway, with no predecessor: a2 published after
    a1 was not (an entity's order broken), though the run had stopped."""
    relay = FakeRelay(failing="a1")
    report = await replayed(relay, {"a1": b"A:0.05", "a2": b"A:0"}, window=1)
    assert relay.published == []
    assert report.stopped == "a1: unavailable:kafka_timeout"
    assert report.problems == ["a1: unavailable:kafka_timeout", "a2: unavailable:after_earlier_failure"]


async def test_a_record_kafka_refuses_for_good_goes_to_the_dlq_from_a_file_and_stays_there_from_the_dlq() -> None:
    """Review finding: replay called deliver directly, skipping the live relay's fallback: KafkaRefused (too large
    for its topic) is an Unavailable, so it stopped the run with 'rerun to resume', and every rerun stopped there
    again; nothing after it was ever replayed."""
    bodies = {"a1": b"A:0", "big": b"B:0", "c1": b"C:0"}
    from_file, from_dlq = FakeRelay(refused="big"), FakeRelay(refused="big")
    report = await replayed(from_file, bodies, pause_before="c1")
    assert (report.stopped, from_file.published, from_file.quarantined) == (
        None,
        ["a1", "c1"],
        [("big", "kafka_refused")],
    )
    assert report.problems == ["big: quarantined:kafka_refused"]
    report = await replayed(from_dlq, bodies, pause_before="c1", from_dlq=True)
    assert (report.stopped, from_dlq.published, from_dlq.quarantined) == (None, ["a1", "c1"], [])
    assert report.problems == ["big: refused:kafka_refused"]  # left in the DLQ, as an unusable record is


async def test_a_record_the_dlq_refuses_too_stops_the_run_and_says_what_to_change() -> None:
    """Review of the above: the DLQ record is the same body, so a record too large for its topic may be too large
    for the DLQ: the live relay answers 503; a replay stops there, and 'run it again' alone would loop."""
    relay = FakeRelay(refused="big")
    relay.dlq_refuses = True
    report = await replayed(relay, {"big": b"B:0", "c1": b"C:0"}, pause_before="c1")
    assert report.stopped == "big: unavailable:kafka_refused" and relay.published == []
    assert "raise its max.message.bytes" in stopped_line(report.stopped)
    assert stopped_line("a1: unavailable:kafka_timeout").endswith("run it again to resume (replays are idempotent)")


async def test_the_first_reason_to_stop_is_the_one_said() -> None:
    """Review finding: after a failure the loop reads one more entry before it stops; a DLQ that stalled on that
    read replaced the failure as the reason given."""
    relay = FakeRelay(failing="a1")

    async def entries() -> AsyncIterator[Captured]:
        for origin in ("a1", "stalled"):
            if origin == "stalled":
                await asyncio.sleep(0.1)  # a1 has failed by now
                raise DlqStalled("the DLQ stopped answering")
            yield Captured(origin, {}, b"A:0")

    progress = Progress(None, stream=io.StringIO(), enabled=False)
    report = await replay(relay, entries(), sources=relay.sources, from_dlq=True, dry_run=False, progress=progress)  # type: ignore[arg-type]
    assert report.stopped == "a1: unavailable:kafka_timeout"


def test_a_reverified_dlq_record_replayed_keeps_its_reverified_marks(settings_factory: Callable[..., Settings]) -> None:
    """Review finding: a delivery re-verified from parking, then quarantined, carries
    `mytpe-relay-reverified: true` in the DLQ; `replay --from-dlq` rebuilt it as never re-verified (no
    `mytpereverified`, no header), where records.md gives every re-verified delivery both."""
    now = int(time.time())
    body = b'{"delivery_id":"rv-1","event":"transaction.completed","data":{"transaction":{"id":"t-1"}}}'
    headers = {k.lower(): v for k, v in signed_headers(body, timestamp=now, delivery_id="rv-1").items()}
    entry = Captured("dlq[0]@0", {**headers, "reason": "unroutable_event", REVERIFIED_HEADER: "true"}, body, None)
    parts = compose(
        settings_factory(),
        publisher=FakePublisher(),
        dedupe=MemoryDedupeStore(ttl=60, max_entries=10),
        metrics=Metrics(),
    )
    step = _prepare(parts.relay, parts.sources.current, entry, from_dlq=True, dry_run=False, now=float(now))
    assert not isinstance(step, str), step
    record = step[1].args[0].args[1]  # type: ignore[attr-defined]  # the publish, in its refusal's guard
    assert (REVERIFIED_HEADER, b"true") in record.headers
    assert orjson.loads(record.value)["mytpereverified"] is True
