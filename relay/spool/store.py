"""The spool's storage: one SQLite database in WAL mode with `synchronous=FULL`, used from one thread.

A record is durable once the transaction that inserted it has committed: with WAL and FULL, SQLite
fsyncs the log before `COMMIT` returns. Inserts are grouped (one transaction, one fsync, for every
record waiting), deletes too. Opening it (its lock, a corrupt file set aside) is relay/spool/opening.py;
room on a full disk, relay/spool/room.py; the recovery of files set aside, relay/spool/salvage.py.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import orjson

from relay.spool import aside
from relay.spool.database import BUSY_SECONDS, FILE, stored_headers
from relay.spool.opening import Opening
from relay.spool.room import full, relieve
from relay.spool.salvage import Salvage

__all__ = [  # FILE as before the split, beside what this module defines
    "FILE",
    "HEADS",
    "Pending",
    "Row",
    "SpoolStore",
    "Summary",
    "clear_in_flight",
    "in_flight",
    "mark_in_flight",
    "peek",
]

COLUMNS = (  # every column as bytes: text that is not UTF-8 (a damaged file) would fail the whole query
    "s.id, CAST(s.topic AS BLOB), CAST(s.key AS BLOB), CAST(s.value AS BLOB), CAST(s.headers AS BLOB),"
    " s.spooled_at, s.size, CAST(s.size AS REAL)"  # the last: the size as the start's SUM counted it
)


HEADS = f"SELECT {COLUMNS} FROM heads AS h JOIN spool AS s ON s.id = h.id ORDER BY h.id LIMIT ?"  # noqa: S608
NEXT_HEAD = "INSERT OR IGNORE INTO heads (key, id) SELECT key, id FROM spool WHERE key = ? ORDER BY id LIMIT 1"


@dataclass(frozen=True, slots=True)
class Row:
    """One spooled record, as it goes to Kafka."""

    id: int
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    spooled_at: float
    size: int
    damaged: bytes = b""
    """Set when a column cannot be read back as the spool wrote it (the file changed on disk): its topic, as
    bytes, and its stored headers, as bytes, JSON-encoded as a pair of hex strings; `topic` is then '' or its
    `headers` empty, and the drainer moves it to the DLQ with these bytes (relay.spool.drainer)."""


def row_of(columns: Sequence[object]) -> Row:
    """A row from `COLUMNS`, never an exception for the whole query: one whose topic is not UTF-8, whose headers
    do not read back, whose key or value is NULL, or whose time or size is not a number is `damaged` (its size
    then the number SQLite makes of it, as near as the start's SUM counted it: the spool's byte count stays
    right when the row leaves)."""
    row_id, topic, key, value, stored, spooled_at, size, counted = columns[:8]
    name = ""
    if isinstance(topic, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            name = topic.decode()
    headers = stored_headers(stored)
    whole = isinstance(key, bytes) and isinstance(value, bytes) and isinstance(spooled_at, int | float)
    sized = isinstance(size, int) and not isinstance(size, bool) and size >= 0
    damaged = b""
    if not (name and headers is not None and whole and sized):
        damaged = orjson.dumps([_hex(topic), _hex(stored)])
    return Row(
        cast(int, row_id),
        name,
        key if isinstance(key, bytes) else b"",
        value if isinstance(value, bytes) else b"",
        headers or [],
        float(spooled_at) if isinstance(spooled_at, int | float) else 0.0,
        cast(int, size) if sized else _counted(counted),
        damaged=damaged,
    )


def _counted(size: object) -> int:
    """A damaged size as the start's SUM counted it (as a number; an infinite one made the SUM NULL: 0)."""
    return int(size) if isinstance(size, float) and math.isfinite(size) else 0


def _hex(column: object) -> str:
    return column.hex() if isinstance(column, bytes) else ""


@dataclass(frozen=True, slots=True)
class Pending:
    topic: str
    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]]

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value) + sum(len(k) + len(v) for k, v in self.headers) + 64


class SpoolStore(Salvage, Opening):
    """Blocking calls; the async Spool runs them one at a time on its own thread."""

    def insert(self, records: Sequence[Pending], now: float) -> list[int]:
        """One transaction (one fsync) for all `records`; their ids, in order."""
        ids: list[int] = []
        with self._transaction() as db:
            for record in records:
                headers = orjson.dumps([[name, value.hex()] for name, value in record.headers])
                cursor = db.execute(
                    "INSERT INTO spool (topic, key, value, headers, spooled_at, size) VALUES (?, ?, ?, ?, ?, ?)",
                    (record.topic, record.key, record.value, headers, now, record.size),
                )
                ids.append(int(cursor.lastrowid or 0))
        return ids

    def delete(self, ids: Sequence[int]) -> None:
        """A delete needs room too (SQLite's log grows). On a full disk the log is checkpointed and truncated
        first, then the rows are deleted one per transaction (a smaller piece of log each, checkpointed in
        between), then the reserve is given up to it once, so what Kafka acknowledged can still leave the
        spool; the reserve is taken again when there is room. A row deleted before a later one fails stays
        deleted: deleting it again is a no-op."""
        chunks = [list(ids)]

        def one_at_a_time() -> bool:
            if len(chunks[0]) < 2:
                return False
            chunks[0:1] = [[i] for i in chunks[0]]
            return True

        reliefs = [self._truncate_log, one_at_a_time, self._release_reserve]
        while chunks:
            try:
                self._delete(chunks[0])
            except sqlite3.OperationalError as exc:
                if not full(exc) or not relieve(reliefs):
                    raise
                continue
            chunks.pop(0)
        if len(reliefs) == 3:  # no room was needed: take the reserve again if it was given up
            self._keep_reserve()

    def _delete(self, ids: Sequence[int]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])
            # The triggers find a key's first row by the key's value: a key whose stored type changed on disk
            # (text where the spool wrote bytes) matches no `heads` entry, which would then name a deleted row and
            # hold the key's next rows for good. Such an entry goes, and the key's next row takes its place.
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                stale = db.execute(f"SELECT key FROM heads WHERE id IN ({marks})", chunk).fetchall()  # noqa: S608
                for (key,) in stale:
                    db.execute("DELETE FROM heads WHERE key = ?", (key,))
                    db.execute(NEXT_HEAD, (key,))

    def heads(self, limit: int, skip: Sequence[int]) -> list[Row]:
        """The oldest record of each key (the only one a drainer may publish), oldest first. One whose topic or
        headers cannot be read (the file changed on disk) comes `damaged`, never failing the whole pass."""
        skipped = set(skip)
        rows = []
        for row in self._conn().execute(HEADS, (limit + len(skipped),)):
            if row[0] in skipped:
                continue
            rows.append(row_of(row))
        return rows[:limit]

    def totals(self) -> tuple[int, int, float | None, dict[bytes, int]]:
        """Entries, bytes, the oldest spooled_at, and entries per key: read once, at start."""
        db = self._conn()
        count, size, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(spooled_at) FROM spool"
        ).fetchone()
        keys: dict[bytes, int] = {}
        for key, n in db.execute("SELECT CAST(key AS BLOB), COUNT(*) FROM spool GROUP BY key"):  # any type, as bytes
            keys[key or b""] = keys.get(key or b"", 0) + n  # a NULL key: b"", as `row_of` reads it
        return int(count), int(size), oldest, keys

    def oldest(self) -> float | None:
        """The spooled_at of the first record by id: one primary-key lookup, not a scan. Ids grow with time,
        except for records recovered from a set-aside file: they come after, with their own older time, so
        while they are in the spool this (and the oldest-age gauge) can be younger than the oldest record."""
        row = self._conn().execute("SELECT spooled_at FROM spool ORDER BY id LIMIT 1").fetchone()
        return None if row is None else float(row[0])


@dataclass(frozen=True, slots=True)
class Summary:
    entries: int
    bytes: int
    oldest: float | None
    set_aside: list[Path]


def peek(directory: Path) -> Summary:
    """What a spool directory holds, read without its lock (a relay may be running on it: SQLite allows a
    reader), opened read-only: its records, -wal and -shm are left as they are (SQLite may create a -shm
    that is missing). Raises sqlite3.Error or OSError when the file cannot be read."""
    path = directory / FILE
    if not path.exists():
        return Summary(0, 0, None, aside.listed(path))
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_SECONDS)  # ro: its close writes nothing
    try:
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool").fetchone()
        first = db.execute("SELECT spooled_at FROM spool ORDER BY id LIMIT 1").fetchone()
    finally:
        db.close()
    return Summary(int(count), int(size), None if first is None else float(first[0]), aside.listed(path))


# In-flight marks (RELAY_SPOOL_RECOVERY_CHECK, relay/spool/recovery.py): a drained row is marked before its
# publish, with the time; the mark leaves with the row (trigger). Marks left at the next start are the rows
# a killed process may have had written to Kafka.
_MARKS = (
    "CREATE TABLE IF NOT EXISTS in_flight (id INTEGER PRIMARY KEY, since REAL NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS spool_in_flight_out AFTER DELETE ON spool BEGIN"
    " DELETE FROM in_flight WHERE id = old.id; END",
)


def mark_in_flight(store: SpoolStore, ids: Sequence[int], since: float) -> None:
    """One transaction (fsynced): `ids` are being sent from `since` on. A row marked already keeps its first time."""
    with store._transaction() as db:
        for statement in _MARKS:
            db.execute(statement)
        db.executemany("INSERT OR IGNORE INTO in_flight (id, since) VALUES (?, ?)", [(i, since) for i in ids])


def in_flight(store: SpoolStore) -> list[tuple[Row, float]]:
    """The rows still marked in flight, with the time each was first sent; none when nothing was ever marked."""
    db = store._conn()
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'in_flight'").fetchone() is None:
        return []
    query = f"SELECT {COLUMNS}, m.since FROM in_flight AS m JOIN spool AS s ON s.id = m.id ORDER BY s.id"  # noqa: S608
    marked = [(row_of(row), float(row[8])) for row in db.execute(query)]
    return [(row, since) for row, since in marked if not row.damaged]  # a damaged one goes to the DLQ as it is


def clear_in_flight(store: SpoolStore) -> None:
    """Forget every mark (after the check): the rows left are drained, and marked again when sent."""
    db = store._conn()
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'in_flight'").fetchone() is not None:
        db.execute("DELETE FROM in_flight")
