"""The spool's storage: one SQLite database in WAL mode with `synchronous=FULL`, used from one thread.

A record is durable once the transaction that inserted it has committed: with WAL and FULL, SQLite
fsyncs the log before `COMMIT` returns. Inserts are grouped (one transaction, one fsync, for every
record waiting), deletes too. A torn tail (a crash mid-write) is rolled back by SQLite when the file
is opened; a file that fails `PRAGMA quick_check` is set aside and a new one started.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

logger = logging.getLogger(__name__)

FILE = "spool.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    headers BLOB NOT NULL,
    spooled_at REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS spool_key ON spool (key, id);
"""


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


@dataclass(frozen=True, slots=True)
class Pending:
    topic: str
    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]]

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value) + sum(len(k) + len(v) for k, v in self.headers) + 64


class SpoolStore:
    """Blocking calls; the async Spool runs them one at a time on its own thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / FILE
        self._db: sqlite3.Connection | None = None

    def open(self) -> str | None:
        """Open (or create) the database. Returns a line saying what was set aside, if a file was corrupt."""
        self.directory.mkdir(parents=True, exist_ok=True)
        problem = None
        try:
            self._db = self._connect()
            verdict = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(str(verdict)[:200])
        except sqlite3.DatabaseError as exc:
            if self._db is not None:
                self._db.close()
            aside = self.path.with_name(f"{FILE}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                source = Path(str(self.path) + suffix)
                if source.exists():
                    source.rename(Path(str(aside) + suffix))
            problem = f"spool {self.path} is unreadable ({exc}); set aside as {aside.name}, a new one started"
            self._db = self._connect()
        return problem

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError("the spool is closed")
        return self._db

    def insert(self, records: Sequence[Pending], now: float) -> list[int]:
        """One transaction (one fsync) for all `records`; their ids, in order."""
        db = self._conn()
        ids: list[int] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for record in records:
                headers = orjson.dumps([[name, value.hex()] for name, value in record.headers])
                cursor = db.execute(
                    "INSERT INTO spool (topic, key, value, headers, spooled_at, size) VALUES (?, ?, ?, ?, ?, ?)",
                    (record.topic, record.key, record.value, headers, now, record.size),
                )
                ids.append(int(cursor.lastrowid or 0))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return ids

    def delete(self, ids: Sequence[int]) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def heads(self, limit: int, skip: Sequence[int]) -> list[Row]:
        """The oldest record of each key (the only one a drainer may publish), oldest first."""
        query = (
            "SELECT id, topic, key, value, headers, spooled_at, size FROM spool AS s"
            " WHERE id = (SELECT MIN(id) FROM spool WHERE key = s.key) ORDER BY id LIMIT ?"
        )
        skipped = set(skip)
        rows = []
        for row in self._conn().execute(query, (limit + len(skipped),)):
            if row[0] in skipped:
                continue
            headers = [(name, bytes.fromhex(value)) for name, value in orjson.loads(row[4])]
            rows.append(Row(row[0], row[1], row[2], row[3], headers, row[5], row[6]))
        return rows[:limit]

    def totals(self) -> tuple[int, int, float | None, dict[bytes, int]]:
        """Entries, bytes, the oldest spooled_at, and entries per key: read once, at start."""
        db = self._conn()
        count, size, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(spooled_at) FROM spool"
        ).fetchone()
        keys = {bytes(key): n for key, n in db.execute("SELECT key, COUNT(*) FROM spool GROUP BY key")}
        return int(count), int(size), oldest, keys

    def oldest(self) -> float | None:
        row = self._conn().execute("SELECT MIN(spooled_at) FROM spool").fetchone()
        return None if row[0] is None else float(row[0])
