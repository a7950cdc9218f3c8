"""Spool files set aside: a corrupt `spool.db` is renamed, never read by the relay, and counted (by the relay
running on that spool: `mytpe_relay_spool_set_aside_files`; a PVC with no relay on it alerts nothing, and
`mytpe-relay check` or `spool drain` lists its files).

`spool.db.corrupt-<time>`: set aside at an open because SQLite called it corrupt (`SQLITE_CORRUPT`,
`SQLITE_NOTADB`, or a failed `PRAGMA quick_check`). `mytpe-relay spool drain` copies what it still
yields into the live spool and removes it; a file SQLite calls damaged partway is renamed
`spool.db.unreadable-<time>` once what comes before the damage is copied, and kept for a person (it is
still counted). A file that cannot be read for another reason (a full disk) stays `corrupt-*` for the
next run.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

CORRUPT = "corrupt"
UNREADABLE = "unreadable"
_SIDE_FILES = ("-wal", "-shm")
_MOVING = ".from."  # `<aside>.from.<source>`: an empty file naming what is being set aside, while it is
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_COLUMNS = "CAST(topic AS BLOB), key, value, headers, spooled_at, size"  # a topic that is not UTF-8 fails no query


class Corrupt(Exception):
    """`PRAGMA quick_check` did not answer ok."""


def is_corruption(exc: BaseException) -> bool:
    """Only SQLite's own verdict that the file is damaged: a locked, unreadable or full disk is not corruption."""
    if isinstance(exc, Corrupt):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in _CORRUPT_CODES


def set_aside(path: Path, kind: str = CORRUPT) -> Path:
    """Rename `path`'s -wal and -shm, then `path` itself, to `<name>.<kind>-<time>`; the new main file's path.

    Crash-safe: an empty `<aside>.from.<source>` is created first (no data to write: it works on a full
    disk) and removed last, so `finish()` completes a
    set-aside a crash cut short; the main file goes last, so `path-wal` is never left without `path`
    (the next open would start an empty `path`, and SQLite would drop that log with its records)."""
    stamp = int(time.time())
    aside = path.with_name(f"{_base(path)}.{kind}-{stamp}")
    while any(Path(str(aside) + suffix).exists() for suffix in ("", *_SIDE_FILES)):  # two within one second
        stamp += 1
        aside = path.with_name(f"{_base(path)}.{kind}-{stamp}")
    marker = Path(f"{aside}{_MOVING}{path.name}")
    marker.touch()
    _move(path, aside)
    marker.unlink()
    return aside


def _move(source: Path, target: Path) -> None:
    for suffix in (*_SIDE_FILES, ""):
        if Path(str(source) + suffix).exists() and not Path(str(target) + suffix).exists():
            Path(str(source) + suffix).rename(Path(str(target) + suffix))


class CutShort(Exception):
    """`spool.db-wal` without `spool.db`: opening would lose what that log holds; a person must look."""


def finish(path: Path) -> list[str]:
    """Before `path` is opened: complete each set-aside beside it that a crash cut short (its `.from.` marker
    is still there), one line each. Raises CutShort for a `path-wal` without `path` (a set-aside by an
    older version cut short, or a main file removed by hand)."""
    lines = []
    for marker in sorted(path.parent.glob(f"{path.name}.*{_MOVING}*")):
        target, source = marker.name.split(_MOVING, 1)
        _move(path.with_name(source), path.with_name(target))
        marker.unlink()
        lines.append(f"spool {path}: a set-aside cut short by a crash was completed: {target}")
    if not path.exists() and Path(f"{path}-wal").exists():
        raise CutShort(
            f"spool {path}: {path.name}-wal is there without {path.name} (a set-aside cut short?); it may hold"
            " records: move it beside the file it belongs to (or away), then start again"
        )
    return lines


def remove(path: Path) -> None:
    """Its -wal and -shm first: a crash midway leaves the main file, never a log without it."""
    for suffix in (*_SIDE_FILES, ""):
        Path(str(path) + suffix).unlink(missing_ok=True)


def listed(path: Path, kinds: tuple[str, ...] = (CORRUPT, UNREADABLE)) -> list[Path]:
    """The main files set aside beside `path` (spool.db), oldest first."""
    found = [
        candidate
        for kind in kinds
        for candidate in path.parent.glob(f"{path.name}.{kind}-*")
        if not candidate.name.endswith(_SIDE_FILES) and _MOVING not in candidate.name
    ]
    return sorted(found, key=lambda p: (p.name.rsplit("-", 1)[-1], p.name))


class Reader:
    """What a set-aside file still yields after row `after`, in spool order, in batches of (id, columns...);
    `whole` once it was read to the end.

    Opened read-only: its records are not changed, but SQLite may create its -shm (and reads its -wal).
    Damage (SQLite's corruption codes) ends the reading: what came before is kept, `whole` stays False. Any
    other error (a full disk, a permission, EIO) is raised: the file is not called damaged for it."""

    def __init__(self, path: Path, batch: int = 200, after: int = 0) -> None:
        self.path = path
        self.whole = False
        self._batch = batch
        self._after = after

    def batches(self) -> Iterator[list[tuple[object, ...]]]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        try:
            while True:
                rows = self._read(db)
                if rows:
                    self._after = int(cast(int, rows[-1][0]))
                    yield rows
                if len(rows) < self._batch:  # the end (whole), or damage
                    return
        finally:
            db.close()

    def _read(self, db: sqlite3.Connection) -> list[tuple[object, ...]]:
        rows: list[tuple[object, ...]] = []
        query = f"SELECT id, {_COLUMNS} FROM spool WHERE id > ? ORDER BY id"  # noqa: S608 - constant columns
        try:
            for row in db.execute(query, (self._after,)):
                rows.append(row)
                if len(rows) >= self._batch:
                    return rows
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            return rows  # damaged here: what was read before is kept
        self.whole = True
        return rows


def _base(path: Path) -> str:
    return path.name.split(".corrupt-")[0].split(".unreadable-")[0]
