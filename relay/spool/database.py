"""The spool's SQLite connection and the directory's lock, closed together (opened by relay/spool/opening.py)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson

from relay.errors import StartupError

FILE = "spool.db"
LOCK = "spool.lock"
BUSY_SECONDS = 5.0  # how long an open or a write waits for a SQLite lock held elsewhere, then fails


class SpoolRefused(StartupError):
    """The spool cannot be used: the process must not start (exit 3). The line says whether a file was set aside."""


class Database:
    """One connection, used from one thread, and the lock's file descriptor."""

    def __init__(self, directory: Path, *, busy_seconds: float = BUSY_SECONDS) -> None:
        self.directory = directory
        self.path = directory / FILE
        self.log = directory / f"{FILE}-wal"  # SQLite's write-ahead log
        self._busy = busy_seconds
        self._db: sqlite3.Connection | None = None
        self._lock: int | None = None
        self._reserved = False

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


def describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def stored_headers(stored: object) -> list[tuple[str, bytes]] | None:
    """A row's headers as `insert` stored them (JSON pairs of a name and hex bytes), or None when they cannot be
    read as such."""
    try:
        headers = []
        for name, value in orjson.loads(stored):  # type: ignore[arg-type]  # bytes or text from SQLite, else raises
            if not isinstance(name, str):
                return None
            headers.append((name, bytes.fromhex(value)))
    except (TypeError, ValueError):  # orjson.JSONDecodeError is a ValueError
        return None
    return headers
