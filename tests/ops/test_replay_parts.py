"""The parts of `mytpe-relay replay` that need no broker: the file format, the progress bar, the report."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from relay.errors import SignatureError, Unavailable
from relay.ops.captured import Captured, count_lines, read_file
from relay.ops.progress import Progress
from relay.ops.replay import Report, replay
from relay.pipeline.records import Outcome
from relay.settings import Secret
from relay.sources.config import Source, legacy, snapshot
from tests.helpers import SECRET


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

    def __init__(self, failing: str = "") -> None:
        self.published: list[str] = []
        self.failing = failing
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
    ) -> tuple[str, SimpleNamespace]:
        entity, _, seconds = body.decode().partition(":")
        return signed.delivery_id, SimpleNamespace(key=entity.encode(), seconds=float(seconds))

    async def deliver(
        self, delivery_id: str, record: SimpleNamespace, signed: object, *, key: str, source: str
    ) -> Outcome:
        await asyncio.sleep(record.seconds)
        if delivery_id == self.failing:
            raise Unavailable("kafka_timeout")
        self.published.append(delivery_id)
        return Outcome("accepted", delivery_id)


async def replayed(relay: FakeRelay, bodies: dict[str, bytes], pause_before: str = "") -> Report:
    async def entries() -> AsyncIterator[Captured]:
        for origin, body in bodies.items():
            if origin == pause_before:
                await asyncio.sleep(0.15)
            yield Captured(origin, {}, body)

    progress = Progress(len(bodies), stream=io.StringIO(), enabled=False)
    return await replay(relay, entries(), sources=relay.sources, from_dlq=False, dry_run=False, progress=progress)  # type: ignore[arg-type]


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
