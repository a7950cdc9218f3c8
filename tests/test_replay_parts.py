"""The parts of `mytpe-relay replay` that need no broker: the file format, the progress bar, the report."""

from __future__ import annotations

import io
from pathlib import Path

from relay.captured import count_lines, read_file
from relay.progress import Progress
from relay.replay import Report


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
