"""bench/kafkalog.py: record batches counted from a broker's log segments, against a real broker's own
segments, and against segments written here to the format's layout for the cases a run rarely shows."""

from __future__ import annotations

import io
import struct
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from localkafka import LocalKafka

from bench import kafkalog
from bench.kafkalog import CONTROL, Appended, Reader, appended
from bench.run import _appended


async def test_a_real_brokers_batches_and_records_are_counted(kafka: LocalKafka) -> None:
    """Batches of 1, 5 and 7 records sent as the relay sends them (idempotent, one batch per request)."""
    topic = f"kafkalog-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"creates the topic", partition=0)
        before = appended(kafka.data_dir / "data", topic)
        for size in (1, 5, 7):
            batch = producer.create_batch()
            for index in range(size):
                assert batch.append(key=None, value=b"x" * (index + 1), timestamp=None) is not None
            batch.close()
            await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()
    assert before == Appended(1, 1)
    assert appended(kafka.data_dir / "data", topic).since(before) == Appended(3, 13)


def _batch(records: int, *, attributes: int = 0, body: int = 10) -> bytes:
    """A v2 batch header (61 bytes) and `body` bytes standing for its records."""
    length = 61 - 12 + body
    header = struct.pack(">qiibIhiqqqhii", 0, length, 0, 2, 0, attributes, records - 1, 0, 0, -1, -1, -1, records)
    assert len(header) == 61
    return header + b"\0" * body


def _segment(directory: Path, name: str, data: bytes) -> None:
    (directory / name).mkdir(parents=True)
    (directory / name / "00000000000000000000.log").write_bytes(data)


def test_partial_control_and_internal_batches_are_not_counted(tmp_path: Path) -> None:
    whole = _batch(3) + _batch(1, attributes=CONTROL) + _batch(2)
    _segment(tmp_path, "orders-0", whole + _batch(4)[:-1])  # the last one still being written
    _segment(tmp_path, "orders-1", _batch(6) + _batch(5)[:30])  # even its header not whole yet
    _segment(tmp_path, "__consumer_offsets-0", _batch(9))
    assert appended(tmp_path) == Appended(3, 11)
    assert appended(tmp_path, "orders-1") == Appended(1, 6)


def test_a_reader_reads_on_from_where_it_stopped(tmp_path: Path) -> None:
    """A batch half written at one read is counted whole at the next, and nothing twice; what was read is
    not read again (here made unreadable in place: a reader starting over would refuse it)."""
    half = _batch(4)
    _segment(tmp_path, "orders-0", _batch(3) + half[:40])
    first = tmp_path / "orders-0" / "00000000000000000000.log"
    reader = Reader(tmp_path)
    assert reader.appended() == Appended(1, 3)
    with first.open("r+b") as segment:
        segment.write(b"\0" * 61)  # the batch already counted, overwritten: same file, same size
        segment.seek(0, 2)
        segment.write(half[40:] + _batch(2))
    (tmp_path / "orders-0" / "00000000000000000009.log").write_bytes(_batch(7))  # the segment rolled
    _segment(tmp_path, "orders-1", _batch(5))  # a partition created since
    assert reader.appended() == Appended(5, 21)
    assert reader.appended() == Appended(5, 21)


@pytest.mark.parametrize("name", ["orders-0.3f2a-delete", "orders-0.3f2a-future", "orders-0.3f2a-stray", "orders"])
def test_only_live_partitions_count(tmp_path: Path, name: str) -> None:
    _segment(tmp_path, name, _batch(3))
    assert appended(tmp_path) == Appended(0, 0)


def test_an_unreadable_log_leaves_the_figure_out_and_the_run_going(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _segment(tmp_path, "orders-0", b"\0" * 100)
    assert _appended(Reader(tmp_path)) is None
    assert "could not be read (not a message format v2 batch at byte 0)" in capsys.readouterr().out
    assert _appended(None) is None


def test_a_segment_shorter_than_it_was_listed_ends_the_read(tmp_path: Path) -> None:
    """Review finding: a header read short (the file truncated between its size and the read) raised
    IndexError, which stopped the bench."""
    whole = _batch(3)
    stream = io.BytesIO(whole[:14])
    assert kafkalog._segment(stream, 0, len(whole)) == (Appended(0, 0), 0)


def test_a_file_that_is_not_a_v2_segment_is_refused(tmp_path: Path) -> None:
    _segment(tmp_path, "orders-0", b"\0" * 100)
    with pytest.raises(ValueError, match="not a message format v2 batch at byte 0"):
        appended(tmp_path)
