"""`spool drain`'s recovery of the files set aside: what each still yields is copied into the spool, batch by
batch, and a crash or a full disk only stops the copy where the next run goes on."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from relay.spool import aside
from relay.spool.database import describe, stored_headers
from relay.spool.room import Room, full


class Salvage(Room):
    """Copies the records of `spool.db.corrupt-*` files into this spool."""

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
        found, size, stopped, skipped = 0, 0, "", 0
        try:
            reader = aside.Reader(path, after=self._salvaged(name))
            for batch in reader.batches():
                usable = [shaped for row in batch if (shaped := _usable(row)) is not None]
                skipped += len(batch) - len(usable)
                rows = usable if room is None else _fitting(usable, room - size)
                if rows:
                    self._copy(name, rows)
                    found, size = found + len(rows), size + sum(_size(row) for row in rows)
                if len(rows) < len(usable):
                    stopped = "the spool is full (RELAY_SPOOL_MAX_BYTES)"
                    break
        except sqlite3.Error as exc:
            stopped = describe(exc)
        if stopped:
            return f"{path.name}: {found} record(s) recovered; stopped ({stopped}), the rest is kept", found, False
        if reader.whole and not skipped:  # this run's part was clean: the parts before it, read again
            skipped = _wrong_shape(path)
        if reader.whole and not skipped:
            aside.remove(path)
            self._forget_salvaged(name)
            return f"{path.name}: {found} record(s) recovered into the spool; removed", found, True
        kept = aside.set_aside(path, aside.UNREADABLE)
        self._forget_salvaged(name)
        what = f"{skipped} record(s) of the wrong shape" if reader.whole else "the rest"
        return f"{path.name}: {found} record(s) recovered; {what} unreadable, kept as {kept.name}", found, True

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
            if not full(exc) or not self._truncate_log():
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


def _usable(row: tuple[object, ...]) -> tuple[object, ...] | None:
    """A row (id, topic as bytes, key, value, headers, spooled_at, size) as the spool holds it (its topic as text),
    or None. A damaged file may yield any type in any column (SQLite keeps what it is given): a NULL failed the
    copy of its whole batch, a text key a later start, a size that is not the row's own stopped every run as
    "the spool is full". Such a row is left in the file, which is then kept as unreadable."""
    row_id, topic, key, value, stored, spooled_at, size = row
    headers = stored_headers(stored) if isinstance(stored, bytes | str) else None
    if headers is None or not (isinstance(topic, bytes) and isinstance(key, bytes) and isinstance(value, bytes)):
        return None
    try:
        name = topic.decode()
    except UnicodeDecodeError:
        return None
    own = len(key) + len(value) + sum(len(k) + len(v) for k, v in headers) + 64  # Pending.size's
    if not name or not isinstance(spooled_at, int | float) or isinstance(size, bool) or size != own:
        return None
    return row_id, name, key, value, stored, spooled_at, size


def _wrong_shape(path: Path) -> int:
    """The rows of `path` `_usable` refuses, read from its start (a run resumed after an earlier one's copy does
    not see the rows before it); one for the whole file when it can no longer be read to its end."""
    reader = aside.Reader(path)
    wrong = sum(_usable(row) is None for batch in reader.batches() for row in batch)
    return wrong if reader.whole else max(wrong, 1)


def _size(row: tuple[object, ...]) -> int:
    return int(cast(int, row[6]))


def _fitting(rows: Sequence[tuple[object, ...]], room: int) -> Sequence[tuple[object, ...]]:
    """The first `rows` whose sizes (column 6) add up to at most `room`."""
    for n, row in enumerate(rows):
        room -= _size(row)
        if room < 0:
            return rows[:n]
    return rows
