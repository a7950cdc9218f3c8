"""How many record batches, and records, a local broker has appended: read from its log segments.

A producer's records reach the broker in batches, one per partition per produce request; the relay and
the broker both pay per batch (a request, a CRC, an append), so records per batch says how well a target's
publishes were batched. The broker keeps each batch as it came (message format v2: a 61-byte header, then
the records), so the segment files count them: each header gives the batch's length and its record count.
Only live partitions count (directories named `<topic>-<partition>`: not internal topics `__…`, nor the
`-delete`, `-future` or `-stray` directories of a deleted or moving partition), and only data batches (not
transaction markers). A batch the broker is still writing at the end of a segment is not counted yet. A
segment removed between listing and reading is skipped. Not told apart: a segment replaced by another at
the same path (its topic deleted and made again, a compaction), which a `Reader` would go on reading where
it stopped in the first; the bench deletes and compacts nothing (and bench/run.py leaves out a figure it
cannot read, rather than stop the run). Reports, never asserts.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

HEADER = 61  # baseOffset .. recordsCount (message format v2)
LENGTH_END = 12  # baseOffset (8) and batchLength (4): batchLength counts the bytes after it
MAGIC_AT, ATTRIBUTES_AT, COUNT_AT = 16, 21, 57
CONTROL = 0x20  # attributes bit 5: a transaction marker, not records
PARTITION = re.compile(r"(?!__).+-[0-9]+")  # a live partition's directory


class Appended(NamedTuple):
    batches: int
    records: int

    def since(self, earlier: Appended) -> Appended:
        return Appended(self.batches - earlier.batches, self.records - earlier.records)


def appended(log_dirs: Path, prefix: str = "") -> Appended:
    """The data batches and records in every segment under `log_dirs` (a broker's `log.dirs`), of the
    topics whose name starts with `prefix`."""
    return Reader(log_dirs, prefix).appended()


class Reader:
    """`appended`, read again and again: each segment from where the last read stopped."""

    def __init__(self, log_dirs: Path, prefix: str = "") -> None:
        self._log_dirs = log_dirs
        self._prefix = prefix
        self._read: dict[Path, int] = {}  # each segment's bytes read
        self._total = Appended(0, 0)

    def appended(self) -> Appended:
        for segment in sorted(self._log_dirs.glob(f"{self._prefix}*/*.log")):
            if not PARTITION.fullmatch(segment.parent.name):
                continue
            try:
                stream = segment.open("rb")
            except FileNotFoundError:  # removed since the listing
                continue
            with stream:
                counted, self._read[segment] = _segment(
                    stream, self._read.get(segment, 0), os.fstat(stream.fileno()).st_size
                )
            self._total = Appended(self._total.batches + counted.batches, self._total.records + counted.records)
        return self._total


def _segment(stream: BinaryIO, position: int, size: int) -> tuple[Appended, int]:
    """The batches from `position` wholly within the first `size` bytes, and where the next read starts: a
    batch the broker is still writing is counted by a later read."""
    batches = records = 0
    while position + HEADER <= size:
        stream.seek(position)
        header = stream.read(HEADER)
        if len(header) < HEADER:  # shorter than it was a moment ago (truncated): nothing more to count now
            break
        (length,) = struct.unpack_from(">i", header, 8)
        if header[MAGIC_AT] != 2 or length < HEADER - LENGTH_END:
            raise ValueError(f"not a message format v2 batch at byte {position}")
        end = position + LENGTH_END + length
        if end > size:
            break
        (attributes,) = struct.unpack_from(">h", header, ATTRIBUTES_AT)
        if not attributes & CONTROL:
            batches += 1
            records += struct.unpack_from(">i", header, COUNT_AT)[0]
        position = end
    return Appended(batches, records), position
