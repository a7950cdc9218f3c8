"""The spool's storage: one SQLite database in WAL mode with `synchronous=FULL`, used from one thread.

A record is durable once the transaction that inserted it has committed: with WAL and FULL, SQLite
fsyncs the log before `COMMIT` returns. Inserts are grouped (one transaction, one fsync, for every
record waiting), deletes too. A torn tail (a crash mid-write) is rolled back by SQLite when the file
is opened. A file SQLite calls corrupt (`SQLITE_CORRUPT`, `SQLITE_NOTADB`, or a failed
`PRAGMA quick_check`) is set aside and a new one started; any other error at open (a lock held
elsewhere, a permission, a full disk) refuses the open, and nothing is set aside. One process at a
time: the directory's `spool.lock` (flock) is held while the spool is open. flock excludes processes on
one host only (on NFS it is not available, or emulated with POSIX locks, depending on the client), and
SQLite's WAL needs shared memory on one host: the spool belongs on a file system mounted by one host
(a block volume, local or network-attached), never on NFS or another shared file system.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import orjson

from relay.errors import StartupError
from relay.spool import aside

logger = logging.getLogger(__name__)

FILE = "spool.db"
LOCK = "spool.lock"
RESERVE = "spool.reserve"
RESERVE_MAX = 8 * 1024 * 1024  # room held back for deletes: at most this, at most 1/8 of the file system
BUSY_SECONDS = 5.0  # how long an open or a write waits for a SQLite lock held elsewhere, then fails
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
CREATE TABLE IF NOT EXISTS heads (key BLOB PRIMARY KEY, id INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS heads_id ON heads (id);
CREATE TRIGGER IF NOT EXISTS spool_head_in AFTER INSERT ON spool BEGIN
    INSERT OR IGNORE INTO heads (key, id) VALUES (new.key, new.id);
END;
CREATE TRIGGER IF NOT EXISTS spool_head_out AFTER DELETE ON spool
WHEN old.id = (SELECT id FROM heads WHERE key = old.key) BEGIN
    DELETE FROM heads WHERE key = old.key;
    INSERT INTO heads (key, id) SELECT key, id FROM spool WHERE key = old.key ORDER BY id LIMIT 1;
END;
"""
# `heads` holds each key's oldest row (ids only grow, so a new row never displaces its key's head), kept by
# the triggers in the transaction that changes `spool`. A file from before `heads` gets the table and its
# rows in one transaction at its first open: that is a write, so such a file on a full disk is refused
# (one line, nothing set aside) until there is room. An open of a current file writes nothing else (beyond
# the -shm SQLite creates), so a spool on a full disk still opens (with `spool.reserve` given up if need be).
_REBUILD_HEADS = "DELETE FROM heads; INSERT INTO heads (key, id) SELECT key, MIN(id) FROM spool GROUP BY key;"
HEADS = (
    "SELECT s.id, s.topic, s.key, s.value, s.headers, s.spooled_at, s.size"
    " FROM heads AS h JOIN spool AS s ON s.id = h.id ORDER BY h.id LIMIT ?"
)


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


class SpoolRefused(StartupError):
    """The spool cannot be used: the process must not start (exit 3). The line says whether a file was set aside."""


class SpoolStore:
    """Blocking calls; the async Spool runs them one at a time on its own thread."""

    def __init__(self, directory: Path, *, busy_seconds: float = BUSY_SECONDS) -> None:
        self.directory = directory
        self.path = directory / FILE
        self._busy = busy_seconds
        self._db: sqlite3.Connection | None = None
        self._lock: int | None = None
        self._reserved = False

    def open(self) -> str | None:
        """Lock the directory, open (or create) the database. Returns a line saying what was set aside, if
        SQLite called the file corrupt (or which set-aside cut short by a crash was completed). Raises
        SpoolRefused for anything else (another process holds the spool, a locked or unreadable file, a
        full disk): a new empty spool is never started beside records."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            finished = aside.finish(self.path)
            problem = self._open_with_room()
            self._keep_reserve()
            return "; ".join([*finished, *([problem] if problem else [])]) or None
        except aside.CutShort as exc:
            self.close()
            raise SpoolRefused(str(exc)) from None
        except SpoolRefused:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise SpoolRefused(f"spool {self.directory}: {exc.strerror or exc}") from None
        except sqlite3.Error as exc:
            self.close()
            refusal = f"spool {self.path} cannot be opened ({_describe(exc)}); nothing was set aside"
            raise SpoolRefused(refusal) from None

    def _take_lock(self) -> None:
        """One process per spool: the relay and `spool drain` hold `spool.lock` while the spool is open."""
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolRefused(
                f"spool {self.directory} is in use by another process (it holds {LOCK}): one relay or drain per spool"
            ) from None
        except OSError as exc:  # ENOLCK: flock is not available here (some NFS mounts)
            os.close(fd)
            raise SpoolRefused(
                f"spool {self.directory}: cannot lock {LOCK} ({exc.strerror or exc}); the spool needs a file system"
                " with flock, mounted by one host"
            ) from None
        self._lock = fd

    def _open_with_room(self) -> str | None:
        """An open on a full disk (no room for the -shm, or for the log): `spool.reserve`, left by the last
        process, is given up to it once, so a spool stopped on a full disk still opens and drains."""
        try:
            return self._open_db()
        except sqlite3.OperationalError as exc:
            reserve = self.directory / RESERVE
            if not _no_room(exc) or not reserve.exists():
                raise
            reserve.unlink()
            logger.warning("spool %s: the disk is full; its reserve was released so that it opens", self.path)
            return self._open_db()

    def _open_db(self) -> str | None:
        try:
            self._db = self._connect()
            verdict = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise aside.Corrupt(str(verdict).splitlines()[0][:200])
        except (sqlite3.DatabaseError, aside.Corrupt) as exc:
            self._close_db()
            if not aside.is_corruption(exc):
                raise
            moved = aside.set_aside(self.path)
            try:
                self._db = self._connect()
            except sqlite3.Error as again:
                raise SpoolRefused(
                    f"spool {self.path} is corrupt ({_describe(exc)}); set aside as {moved.name}, but a new one"
                    f" cannot be started ({_describe(again)})"
                ) from None
            return f"spool {self.path} is corrupt ({_describe(exc)}); set aside as {moved.name}, a new one started"
        return None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self._busy)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._bound_log(db)
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'heads'").fetchone() is None:
                # a new file, or one from before `heads`: its schema and its heads in one transaction
                db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} {_REBUILD_HEADS} COMMIT;")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            db.close()
            raise
        return db

    def set_aside(self) -> list[Path]:
        """The files set aside beside this spool (counted by mytpe_relay_spool_set_aside_files)."""
        return aside.listed(self.path)

    def close(self) -> None:
        self._close_db()
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError("the spool is closed")
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT. On an error, the error is what is raised: SQLite may already have
        rolled the transaction back (SQLITE_FULL, SQLITE_IOERR), and a ROLLBACK then would hide it."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

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
                if not _full(exc) or not _relieve(reliefs):
                    raise
                continue
            chunks.pop(0)
        if len(reliefs) == 3:  # no room was needed: take the reserve again if it was given up
            self._keep_reserve()

    def _delete(self, ids: Sequence[int]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])

    def _reserve_size(self) -> int:
        disk = os.statvfs(self.directory)
        return min(RESERVE_MAX, disk.f_blocks * disk.f_frsize // 8)

    def _bound_log(self, db: sqlite3.Connection) -> None:
        """Keep SQLite's log a quarter of the reserve: checkpointed into the file at that size, and truncated
        back to it when it restarts. A delete on a full disk then needs only what the reserve gives: the
        records live in the file, not in a log that failed writes grew until the disk was full (with the
        log left at SQLite's 1,000 pages, a spool that filled a 256 KiB disk could delete none of them)."""
        quarter = self._reserve_size() // 4
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        db.execute(f"PRAGMA wal_autocheckpoint = {max(1, quarter // page)}")
        db.execute(f"PRAGMA journal_size_limit = {max(page, quarter)}")

    def _keep_reserve(self) -> None:
        """Hold `spool.reserve` (allocated, not sparse) while there is room for it; quietly not, else."""
        path = self.directory / RESERVE
        if self._reserved:
            return
        try:
            size = self._reserve_size()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError:
            path.unlink(missing_ok=True)
            return
        self._reserved = True

    def _release_reserve(self) -> bool:
        if not self._reserved:
            return False
        (self.directory / RESERVE).unlink(missing_ok=True)
        self._reserved = False
        logger.warning("spool %s: the disk is full; its reserve was released so that deletes go on", self.path)
        return True

    def _truncate_log(self) -> bool:
        """On a full disk: copy SQLite's log into the file and truncate it, so the next write starts the log
        again instead of growing it. True if that gave room back."""
        try:
            busy, pages, _ = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        return bool(busy == 0 and pages > 0)

    def salvage(self, room: int | None = None) -> tuple[list[str], int]:
        """Copy what each `spool.db.corrupt-*` file still yields into this spool, at most `room` bytes; one
        line per file, and the records copied. Their order per key is the file's own, after this spool's.

        Batch by batch, each its own transaction (fsynced) that also records how far the file was copied
        (table `salvaged`, by name and inode): a crash, a full disk or `room` stops the copy, and the next
        run goes on from there, never copying a record twice. A file copied to its end is removed; one
        damaged partway is kept as `spool.db.unreadable-*`. The first file stopped ends the run."""
        lines, copied = [], 0
        for path in aside.listed(self.path, (aside.CORRUPT,)):
            line, found, done = self._salvage_file(path, None if room is None else room - copied)
            lines.append(line)
            copied += found
            if not done:
                break
        return lines, copied

    def _salvage_file(self, path: Path, room: int | None) -> tuple[str, int, bool]:
        name = f"{path.name}:{path.stat().st_ino}"
        found, size, stopped = 0, 0, ""
        try:
            reader = aside.Reader(path, after=self._salvaged(name))
            for batch in reader.batches():
                rows = batch if room is None else _fitting(batch, room - size)
                if rows:
                    self._copy(name, rows)
                    found, size = found + len(rows), size + sum(_size(row) for row in rows)
                if len(rows) < len(batch):
                    stopped = "the spool is full (RELAY_SPOOL_MAX_BYTES)"
                    break
        except sqlite3.Error as exc:
            stopped = _describe(exc)
        if stopped:
            return f"{path.name}: {found} record(s) recovered; stopped ({stopped}), the rest is kept", found, False
        if reader.whole:
            aside.remove(path)
            self._forget_salvaged(name)
            return f"{path.name}: {found} record(s) recovered into the spool; removed", found, True
        kept = aside.set_aside(path, aside.UNREADABLE)
        self._forget_salvaged(name)
        return f"{path.name}: {found} record(s) recovered; the rest unreadable, kept as {kept.name}", found, True

    def _salvaged(self, name: str) -> int:
        """The last row of file `name` already copied (0: none)."""
        db = self._conn()
        db.execute("CREATE TABLE IF NOT EXISTS salvaged (file TEXT PRIMARY KEY, last INTEGER NOT NULL)")
        row = db.execute("SELECT last FROM salvaged WHERE file = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def _forget_salvaged(self, name: str) -> None:
        with contextlib.suppress(sqlite3.Error):  # left behind (a full disk), it only names a file now gone
            self._conn().execute("DELETE FROM salvaged WHERE file = ?", (name,))

    def _copy(self, name: str, rows: Sequence[tuple[object, ...]]) -> None:
        """Never with the reserve: it is for deletes, so that what Kafka acknowledged can leave the spool."""
        try:
            self._insert_salvaged(name, rows)
        except sqlite3.OperationalError as exc:
            if not _full(exc) or not self._truncate_log():
                raise
            self._insert_salvaged(name, rows)

    def _insert_salvaged(self, name: str, rows: Sequence[tuple[object, ...]]) -> None:
        with self._transaction() as db:  # the rows and how far the file was copied: both or neither
            db.executemany(
                "INSERT INTO spool (topic, key, value, headers, spooled_at, size) VALUES (?, ?, ?, ?, ?, ?)",
                [row[1:] for row in rows],
            )
            db.execute(
                "INSERT INTO salvaged (file, last) VALUES (?, ?) ON CONFLICT (file) DO UPDATE SET last = excluded.last",
                (name, rows[-1][0]),
            )

    def heads(self, limit: int, skip: Sequence[int]) -> list[Row]:
        """The oldest record of each key (the only one a drainer may publish), oldest first."""
        skipped = set(skip)
        rows = []
        for row in self._conn().execute(HEADS, (limit + len(skipped),)):
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
        """The spooled_at of the first record by id: one primary-key lookup, not a scan. Ids grow with time,
        except for records recovered from a set-aside file: they come after, with their own older time, so
        while they are in the spool this (and the oldest-age gauge) can be younger than the oldest record."""
        row = self._conn().execute("SELECT spooled_at FROM spool ORDER BY id LIMIT 1").fetchone()
        return None if row is None else float(row[0])


def _relieve(reliefs: list[Callable[[], bool]]) -> bool:
    """Try the next way to make room, in order, until one works; False once none is left."""
    while reliefs:
        if reliefs.pop(0)():
            return True
    return False


def _full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL


def _no_room(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL, or no room to size the -shm (what a full disk gives at an open)."""
    return _full(exc) or getattr(exc, "sqlite_errorcode", 0) == sqlite3.SQLITE_IOERR_SHMSIZE


def _size(row: tuple[object, ...]) -> int:
    return int(cast(int, row[6]))


def _fitting(rows: Sequence[tuple[object, ...]], room: int) -> Sequence[tuple[object, ...]]:
    """The first `rows` whose sizes (column 6) add up to at most `room`."""
    for n, row in enumerate(rows):
        room -= _size(row)
        if room < 0:
            return rows[:n]
    return rows


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


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
    query = (
        "SELECT s.id, s.topic, s.key, s.value, s.headers, s.spooled_at, s.size, m.since"
        " FROM in_flight AS m JOIN spool AS s ON s.id = m.id ORDER BY s.id"
    )
    marked = []
    for row in db.execute(query):
        headers = [(name, bytes.fromhex(value)) for name, value in orjson.loads(row[4])]
        marked.append((Row(row[0], row[1], row[2], row[3], headers, row[5], row[6]), float(row[7])))
    return marked


def clear_in_flight(store: SpoolStore) -> None:
    """Forget every mark (after the check): the rows left are drained, and marked again when sent."""
    db = store._conn()
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'in_flight'").fetchone() is not None:
        db.execute("DELETE FROM in_flight")
