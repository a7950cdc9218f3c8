"""The error every bad setting raises, and the secret values that never show themselves."""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """An invalid or missing setting; the message names the variable."""


class Secret:
    """A webhook secret whose repr and str never show its value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class FileSecret(Secret):
    """A secret named by a `…_FILE` variable: its file is read again each time it is revealed, so a
    rotated file (a mounted Secret) applies without a restart. reveal() raises OSError if it cannot be read."""

    __slots__ = ("_path",)

    def __init__(self, path: Path, value: str) -> None:
        super().__init__(value)
        self._path = path

    def reveal(self) -> str:
        return self._path.read_text(encoding="utf-8").strip()


def readable(variable: str, path: Path) -> None:
    """Raises ConfigError, naming `variable`, when `path` cannot be opened for reading."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from None
