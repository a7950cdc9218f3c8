"""Room on a full disk: `spool.reserve` held back for deletes, SQLite's log bounded to a quarter of it, and the
ways to make room, tried in order when a write finds the disk full."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from relay.spool.database import FILE, Database

# These lines keep the logger name they had before the split (log queries filter on it).
logger = logging.getLogger("relay.spool.store")

RESERVE = "spool.reserve"
RESERVE_MAX = 8 * 1024 * 1024  # room held back for deletes: at most this, at most 1/8 of the file system


class Room(Database):
    """The reserve and the bound of SQLite's log."""

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
        again instead of growing it. True if that gave room back: the log is shorter (a checkpoint that emptied
        it answers 0 pages, its log being reset by then)."""
        before = _size(self.log)
        try:
            busy, _, _ = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        return bool(busy == 0 and _size(self.log) < before)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def disk_free(directory: Path) -> int:
    """The bytes a writer other than root may still take on `directory`'s file system; 0 when it cannot be read."""
    try:
        disk = os.statvfs(directory)
    except OSError:
        return 0
    return disk.f_bavail * disk.f_frsize


OVERHEAD = 2.0
"""The spool's files per byte of records it counts against its cap, at most: measured 1.12 to 1.96 for records of
200 B to 4 KB with two or three headers (SQLite's pages and overflow pages, the headers stored as hex, the key's
index), the worst at 2 KB."""


def spool_room(directory: Path) -> int | None:
    """How large the spool's files can grow on their volume: their size now and the room free (a drained spool's
    file keeps its size, its pages free inside), less the reserve if it is not held yet; blocks kept for root and
    other files are not room. None when the file system cannot be read."""
    try:
        disk = os.statvfs(directory)
    except OSError:
        return None
    files = _size(directory / FILE) + _size(directory / f"{FILE}-wal")
    reserve = 0 if (directory / RESERVE).exists() else min(RESERVE_MAX, disk.f_blocks * disk.f_frsize // 8)
    return files + disk.f_bavail * disk.f_frsize - reserve


def relieve(reliefs: list[Callable[[], bool]]) -> bool:
    """Try the next way to make room, in order, until one works; False once none is left."""
    while reliefs:
        if reliefs.pop(0)():
            return True
    return False


def full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL


def no_room(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL, or no room to size the -shm (what a full disk gives at an open)."""
    return full(exc) or getattr(exc, "sqlite_errorcode", 0) == sqlite3.SQLITE_IOERR_SHMSIZE
