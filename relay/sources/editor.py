"""Changes to the sources file by the `webhook` commands: checked whole, written atomically, the
previous version kept beside it.

A symbolic link (the kubelet's `..data` layout, git-sync) is followed: the file it points to is
the one locked and rewritten, and the link stays.

The read-modify-write holds an exclusive lock (`flock`) on a sibling file, `.FILE.lock` (left in
place, made with the file's owner, group and mode, and opened read-only by whoever may not write
it), so two commands run at once apply both changes, one after the other (one waits up to LOCK_WAIT_SECONDS
for the other's lock, then fails with a line naming it). The new content is
written in full to a temporary file in the same directory, flushed to disk, then renamed over the
file, so a reader (the relay's poll) sees the old file or the new one, never a half. The file keeps
its owner, group and mode (a new file: the writer's, mode 0600): a writer that cannot give the new
file that owner or group (not root, not the owner, not a member of the group) is refused before
anything is written. The previous content is kept as `FILE.previous`, with the same owner and mode.
YAML comments do not survive a rewrite, nor do anchors: a block several sources shared through an alias is
written out in each of them, and the change goes to the one source it names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from relay.settings import ConfigError
from relay.sources.config import Source, load, parse

Entry = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Owner:
    uid: int
    gid: int
    mode: int


_PRIVATE = _Owner(-1, -1, 0o600)
"""A new file: the writer's owner and group (-1 leaves them as created), readable by it alone."""


def edit(path: Path, name: str, change: Callable[[Entry], None], *, create: bool = False) -> Source:
    """Apply `change` to the entry of source `name`, check the whole file, write it. Returns the new source."""
    path = Path(os.path.realpath(path))  # a link's target: the link itself stays a link
    with _locked(path):
        return _edit(path, name, change, create=create)


def _edit(path: Path, name: str, change: Callable[[Entry], None], *, create: bool) -> Source:
    previous = path.read_bytes() if path.exists() else b""
    document = _unshared(load(previous, str(path))) if previous.strip() else None  # as strict as the relay reads it
    if document is None:
        document = {"sources": []}
    entries: list[Entry] = document.get("sources") if isinstance(document, dict) else None  # type: ignore[assignment]
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a top-level 'sources:' list")
    entry = next((e for e in entries if isinstance(e, dict) and e.get("name") == name), None)
    if entry is None:
        if not create:
            raise ConfigError(f"{path}: no source named {name!r}")
        entry = {"name": name, "secrets": []}
        entries.append(entry)
    change(entry)
    content = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True).encode()
    source = next(s for s in parse(content, str(path)) if s.name == name)  # the whole file, checked
    owner = _owner(path)
    if previous:
        _write(path.with_name(path.name + ".previous"), previous, owner, named=path)
    _write(path, content, owner, named=path)
    return source


def _unshared(node: Any) -> Any:
    """A copy in which no mapping or list is shared: YAML's anchors and aliases (`mytpe: &api`, then `mytpe: *api`)
    load as one object for several sources, and a change to one source's block would change them all. Written
    back, each source holds its own copy, and the anchors are gone."""
    if isinstance(node, dict):
        return {key: _unshared(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshared(value) for value in node]
    return node


LOCK_WAIT_SECONDS = 30.0
"""How long a change waits for another command's lock: a command stuck holding it (or a lock taken by hand)
fails this one with a line saying so, rather than a wait no one sees, a new secret held only in memory."""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `.FILE.lock` beside `path`, held for the whole read-modify-write. Raises
    BlockingIOError (an OSError: "the file is locked by another command") past LOCK_WAIT_SECONDS."""
    lock = path.with_name(f".{path.name}.lock")
    handle = _lock_file(lock, _owner(path))
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BlockingIOError(
                        errno.EWOULDBLOCK, f"{lock.name} held by another command for {LOCK_WAIT_SECONDS:g}s"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(handle)  # releases the lock


def _lock_file(lock: Path, owner: _Owner) -> int:
    """Open the lock file, made with `owner` if new; read-only if this user may not write it (flock
    works on either), so a lock file made by another user never locks out the file's own."""
    try:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, owner.mode)
    except FileExistsError:
        pass
    else:
        with contextlib.suppress(PermissionError):
            _keep(handle, owner, lock)
        return handle
    try:
        return os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        pass
    try:
        return os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise OSError(errno.EACCES, f"cannot open the lock file {lock}: run as its owner, or remove it") from None


def _owner(path: Path) -> _Owner:
    """The owner, group and permission bits the rewritten file must keep (the file itself, not a link's)."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return _PRIVATE
    return _Owner(found.st_uid, found.st_gid, stat.S_IMODE(found.st_mode))


def _write(path: Path, content: bytes, owner: _Owner, *, named: Path) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        try:
            _keep(handle, owner, named)
            _write_all(handle, content)
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    except OSError as exc:  # the file is in place: a file system that cannot sync a directory (some FUSE and
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # SMB mounts) must not make it read as not written
            raise
    finally:
        os.close(directory)


def _keep(handle: int, owner: _Owner, path: Path) -> None:
    """Give the new file the owner and mode of the file it replaces (chown first: it clears setuid
    bits). Only what differs is changed: an owner may not name a group it is not in, even unchanged
    (a setgid directory gives the new file the group already)."""
    made = os.fstat(handle)
    if owner.uid not in (-1, made.st_uid):
        try:
            os.fchown(handle, owner.uid, -1)
        except PermissionError:
            raise OSError(
                errno.EPERM,
                f"cannot keep the owner of {path} (uid {owner.uid}, gid {owner.gid}): run as that user or root",
            ) from None
    if owner.gid not in (-1, made.st_gid):
        try:
            os.fchown(handle, -1, owner.gid)
        except PermissionError:
            raise OSError(
                errno.EPERM,
                f"cannot keep the group of {path} (gid {owner.gid}): run as its owner and a member of that group, "
                "or as root",
            ) from None
    os.fchmod(handle, owner.mode)


def _write_all(handle: int, content: bytes) -> None:
    """os.write may write less than asked (a size limit, a full disk): write the rest, or fail."""
    view = memoryview(content)
    while view:
        written = os.write(handle, view)
        if written <= 0:
            raise OSError(errno.EIO, "the file took no more bytes")
        view = view[written:]


def install_secret(secret: str, *, keep: int = 1) -> Callable[[Entry], None]:
    """The new secret first; the previous current one (and `keep` - 1 more) after it, for late retries."""

    def change(entry: Entry) -> None:
        old = [s for s in entry.get("secrets") or [] if s != secret]
        entry["secrets"] = [secret, *old[:keep]]

    return change


def set_window(until: datetime | None) -> Callable[[Entry], None]:
    def change(entry: Entry) -> None:
        if until is None:
            entry.pop("rotation_window_until", None)
        else:
            entry["rotation_window_until"] = until.strftime("%Y-%m-%dT%H:%M:%SZ")

    return change
