"""Opening the spool: its lock, its file, its schema.

A torn tail (a crash mid-write) is rolled back by SQLite when the file is opened. A file SQLite calls corrupt
(`SQLITE_CORRUPT`, `SQLITE_NOTADB`, or a failed `PRAGMA quick_check`) is set aside and a new one started; any
other error at open (a lock held elsewhere, a permission, a full disk) refuses the open, and nothing is set
aside. One process at a time: the directory's `spool.lock` (flock) is held while the spool is open. flock
excludes processes on one host only (on NFS it is not available, or emulated with POSIX locks, depending on
the client), and SQLite's WAL needs shared memory on one host: the spool belongs on a file system mounted by
one host (a block volume, local or network-attached), never on NFS or another shared file system.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from pathlib import Path

from relay.spool import aside
from relay.spool.database import LOCK, SpoolRefused, describe
from relay.spool.room import RESERVE, Room, no_room

# These lines keep the logger name they had before the split (log queries filter on it).
logger = logging.getLogger("relay.spool.store")

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


def _writable(db: sqlite3.Connection) -> None:
    """Raise ReadOnly if SQLite opened the file read-only. It does so silently when the file cannot be opened
    for writing (a permission, a read-only mount): reads pass, and every write would fail later, when Kafka is
    down, which is when the spool is needed. A write that changes nothing, rolled back, writes no byte (it
    passes on a full disk too)."""
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM heads WHERE 0")
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
            raise ReadOnly(describe(exc)) from None
        raise
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")


class ReadOnly(Exception):
    """The spool's file cannot be written by this process."""


class Opening(Room):
    """Lock, open (or create) and check the database; set aside a file SQLite calls corrupt."""

    def open(self) -> str | None:
        """Lock the directory, open (or create) the database. Returns a line saying what was set aside, if
        SQLite called the file corrupt (or which set-aside cut short by a crash was completed). Raises
        SpoolRefused for anything else (another process holds the spool, a locked, unreadable or unwritable
        file, a full disk): a new empty spool is never started beside records."""
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
        except ReadOnly as exc:
            self.close()
            refusal = f"spool {self.path} cannot be written ({exc}): a permission or a read-only mount?"
            raise SpoolRefused(refusal) from None
        except sqlite3.Error as exc:
            self.close()
            refusal = f"spool {self.path} cannot be opened ({describe(exc)}); nothing was set aside"
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
            if not no_room(exc) or not reserve.exists():
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
                    f"spool {self.path} is corrupt ({describe(exc)}); set aside as {moved.name}, but a new one"
                    f" cannot be started ({describe(again)})"
                ) from None
            return f"spool {self.path} is corrupt ({describe(exc)}); set aside as {moved.name}, a new one started"
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
            _writable(db)
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
