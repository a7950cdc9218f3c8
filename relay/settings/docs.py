"""What the declarations say, in words: docs/configuration.md's tables and the report of `mytpe-relay check`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from relay.settings.declare import CONFIG_FILE, Spec, declared, specs
from relay.settings.model import Settings
from relay.settings.parsers import KINDS
from relay.settings.sections import SECTIONS
from relay.settings.values import FileSecret

BEGIN = "<!-- The tables below are generated from relay/settings/sections.py: python -m relay.settings --write -->"
END = "<!-- End of the generated tables. -->"
NAME = "docs/configuration.md"
DOCUMENT = Path(__file__).resolve().parents[2] / NAME
"""In the repository this package is in, wherever it is run from (an installed package has no docs/)."""


def tables() -> str:
    """One table per section of the settings, then the configuration file's own variable."""
    parts = []
    for section in SECTIONS:
        title = (section.__doc__ or section.__name__).split(":")[0].strip().rstrip(".")
        parts.append(f"### {title}\n\n{_table(specs(section))}")
    parts.append(f"### The configuration file\n\n{_table(iter([CONFIG_FILE]))}")
    return "\n".join(parts)


def _table(rows: Iterator[Spec]) -> str:
    lines = ["| variable | meaning | values | default |", "|---|---|---|---|"]
    for spec in rows:
        names = " or ".join(f"`{name}`" for name in (spec.env, *spec.also))
        lines.append(f"| {names} | {_cell(spec.help)} | {_kind(spec)} | {_default(spec)} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _kind(spec: Spec) -> str:
    if spec.kind is not None:
        return _cell(spec.kind)
    reader = spec.read if spec.read is not None else spec.parse
    return _cell(KINDS.get(reader, "text")) if reader is not None else "text"


def _default(spec: Spec) -> str:
    if spec.shown is not None:
        return spec.shown
    value = _defaults().get(spec.env)
    if value is None or value == ():
        return "unset"
    return f"`{_text(value)}`"


def _defaults() -> dict[str, object]:
    """Each variable's default, as the declarations give it (a group's from its own class)."""
    found: dict[str, object] = {}

    def walk(cls: type) -> None:
        for each, spec, nested in declared(cls):
            if spec is not None:
                found[spec.env] = each.default
            if nested is not None:
                walk(nested)

    walk(Settings)
    return found


def _text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(_text(item) for item in value)
    return str(value)


def render(document: str) -> str:
    """`document` with the text between BEGIN and END replaced by the current tables."""
    head, begin, rest = document.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{NAME}: the markers {BEGIN!r} and {END!r} are missing")
    return f"{head}{BEGIN}\n\n{tables()}\n{END}{tail}"


def report(settings: Settings) -> str:
    """`check`'s line of the settings that differ from their default: `RELAY_PORT=9000`, a secret as `(set)`."""
    changed = [_shown(spec, value) for spec, value in _changed(settings)]
    return f"config: set: {', '.join(changed)}" if changed else "config: every setting at its default"


def _shown(spec: Spec, value: object) -> str:
    """`VARIABLE=value` as the operator set it: a secret read from `…_FILE` is named by that variable."""
    if isinstance(value, FileSecret) and f"{spec.env}_FILE" in spec.also:
        return f"{spec.env}_FILE=(set)"
    if spec.secret:
        return f"{spec.env}=(set)"
    return f"{spec.env}={spec.show(value) if spec.show is not None else _text(value)}"


def _changed(instance: object) -> Iterator[tuple[Spec, object]]:
    for each, spec, nested in declared(type(instance)):
        value = getattr(instance, each.name)
        if nested is not None:
            yield from _changed(value)
        elif spec is not None and value != each.default:
            yield spec, value
