"""How a setting is declared, once, on its field: `port: int = setting("RELAY_PORT", 8080, port, "…")`.

Everything else is read from those declarations: parsing from the environment, the one-line errors
that name the variable, docs/configuration.md (relay.settings.docs) and the report of `check`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from relay.settings.values import ConfigError

T = TypeVar("T")

Reader = Callable[[Mapping[str, str], str], object]
"""Reads a setting that is more than one stripped value: (environment, variable) -> value or None."""

SPEC = "relay.setting"
GROUP = "relay.setting-group"


@dataclass(frozen=True, kw_only=True)
class Spec:
    """One setting: its variable, how its text becomes a value, and what the docs say of it."""

    env: str
    help: str
    parse: Callable[[str], object] | None = None
    read: Reader | None = None
    """In place of `parse`, for a setting read from more than its one stripped variable."""
    secret: bool = False
    """Never shown: not in reprs, not in `check`'s report."""
    shown: str | None = None
    """The default as the docs show it, where the value alone would not say it."""
    kind: str | None = None
    """The values it takes, where the parser's own description would not say it."""
    also: tuple[str, ...] = ()
    """Other variables it reads (`…_FILE`)."""
    show: Callable[[Any], str] | None = None
    """How `check`'s report writes the value, where its text would say too much (a URL's password) or not say
    it as the variable is written."""

    def value(self, env: Mapping[str, str]) -> object | None:
        """The value `env` gives, or None where it is silent. Raises ConfigError naming the variable."""
        if self.read is not None:
            return self.read(env, self.env)
        assert self.parse is not None, self.env  # noqa: S101 - a declaration has one of the two
        raw = env.get(self.env)
        if raw is None or raw.strip() == "":
            return None
        try:
            return self.parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(f"{self.env}: {exc}") from None


def setting(
    env: str,
    default: T,
    parse: Callable[[str], T] | None,
    help: str,
    *,
    read: Reader | None = None,
    secret: bool = False,
    shown: str | None = None,
    kind: str | None = None,
    also: tuple[str, ...] = (),
    show: Callable[[Any], str] | None = None,
) -> T:
    """A dataclass field declared as the setting of variable `env`."""
    spec = Spec(env=env, help=help, parse=parse, read=read, secret=secret, shown=shown, kind=kind, also=also, show=show)
    return field(default=default, repr=not secret, metadata={SPEC: spec})


def group(cls: Callable[[], T]) -> T:
    """A dataclass field holding a dataclass of settings of its own (read from the same environment)."""
    return field(default_factory=cls, metadata={GROUP: cls})


CONFIG_FILE = Spec(
    env="RELAY_CONFIG_FILE",
    help="a `KEY=VALUE` file read before the environment (see `config/relay.env.example`); the environment wins",
    parse=Path,
)


def declared(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Spec | None, type | None]]:
    """Each field of the dataclass `cls` with its Spec, or the settings class of a group."""
    for each in dataclasses.fields(cls):
        yield each, each.metadata.get(SPEC), each.metadata.get(GROUP)


def specs(cls: type) -> Iterator[Spec]:
    """Every setting `cls` declares, groups expanded, in declaration order."""
    for _, spec, nested in declared(cls):
        if spec is not None:
            yield spec
        if nested is not None:
            yield from specs(nested)


def variables(cls: type) -> list[str]:
    """Every variable `cls` reads, `RELAY_CONFIG_FILE` included."""
    return [name for spec in (*specs(cls), CONFIG_FILE) for name in (spec.env, *spec.also)]


def read(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of `cls` that `env` sets, in declaration order (the first bad one raises)."""
    values: dict[str, Any] = {}
    for each, spec, nested in declared(cls):
        value = spec.value(env) if spec is not None else None
        if nested is not None:
            value = nested(**read(nested, env))
        if value is not None:
            values[each.name] = value
    return values


def merged_env(env: Mapping[str, str]) -> dict[str, str]:
    """The `RELAY_*` variables of `env` over those of the file `RELAY_CONFIG_FILE` names."""
    merged = read_env_file(Path(env["RELAY_CONFIG_FILE"])) if env.get("RELAY_CONFIG_FILE") else {}
    merged.update({k: v for k, v in env.items() if k.startswith("RELAY_") and v.strip()})  # empty: the file's applies
    return merged


def read_env_file(path: Path) -> dict[str, str]:
    """Parse `KEY=VALUE` lines, the value as written to the line's end (no quotes, no `export`, no comment after it);
    blank lines and `#` comment lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"RELAY_CONFIG_FILE: cannot read {path}: {exc.strerror}") from None
    except UnicodeError:
        raise ConfigError(f"RELAY_CONFIG_FILE: {path} is not UTF-8 text") from None
    result: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise ConfigError(f"RELAY_CONFIG_FILE: {path}:{number}: expected KEY=VALUE")
        key, value = key.strip(), value.strip()
        if key.startswith("export "):  # a shell's line: its variable would be read as `export KEY`, never set
            raise ConfigError(f"RELAY_CONFIG_FILE: {path}:{number}: KEY=VALUE without `export`")
        if len(value) > 1 and value[0] == value[-1] and value[0] in "\"'":  # dotenv's quotes would be the value's
            raise ConfigError(f"RELAY_CONFIG_FILE: {path}:{number}: {key}: write the value without quotes")
        result[key] = value
    return result
