"""Changes to the sources file by the `webhook` commands: checked whole, written atomically, the
previous version kept beside it.

The new content is written to a temporary file in the same directory (mode 0600), flushed to disk,
then renamed over the file, so a reader (the relay's poll) sees the old file or the new one, never a
half. The previous content is kept as `FILE.previous` (0600). YAML comments do not survive a rewrite.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from relay.settings import ConfigError
from relay.sources.config import Source, parse

Entry = dict[str, Any]


def edit(path: Path, name: str, change: Callable[[Entry], None], *, create: bool = False) -> Source:
    """Apply `change` to the entry of source `name`, check the whole file, write it. Returns the new source."""
    previous = path.read_bytes() if path.exists() else b""
    document = yaml.safe_load(previous) if previous.strip() else None
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
    if previous:
        _write(path.with_name(path.name + ".previous"), previous)
    _write(path, content)
    return source


def _write(path: Path, content: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(handle, 0o600)
        os.write(handle, content)
        os.fsync(handle)
    finally:
        os.close(handle)
    try:
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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
