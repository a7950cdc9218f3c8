"""A Kafka record's headers as any client gives them: read leniently, never raising."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def values(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, Any] | None, name: str) -> list[Any]:
    """The values named `name` (any case, text or bytes): from (name, value) pairs (tuples or lists, as a
    decoded JSON record has them), or a mapping. Anything else is none."""
    pairs: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers or ()
    if not isinstance(pairs, Iterable) or isinstance(pairs, str | bytes):
        return []
    return [pair[1] for pair in pairs if isinstance(pair, tuple | list) and len(pair) == 2 and _named(pair[0], name)]


def _named(given: Any, name: str) -> bool:
    """A header's name, as text or ASCII bytes (clients give either), equal to `name` in any case."""
    if isinstance(given, bytes | bytearray):
        given = text(given)
    return isinstance(given, str) and given.lower() == name


def text(value: Any) -> str | None:
    """An ASCII header value as text (bytes decoded, a str as it is); anything else, or not ASCII, is None."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) and value.isascii() else None
