"""The values table of deploy/helm/mytpe-relay/README.md, generated from the `# --` comments of values.yaml.

`scripts/deploy_sync.py` writes it; tests/deploy/test_helm.py checks that the committed README equals what this
renders, so a value documented in one place only fails the suite.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent.parent / "deploy/helm/mytpe-relay"
START, END = "<!-- values table: start (scripts/deploy_sync.py writes it) -->", "<!-- values table: end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):")
DESCRIPTION = re.compile(r"^ *# -- ?(?P<text>.*)$")
CONTINUATION = re.compile(r"^ *# ?(?P<text>.*)$")


@dataclass(frozen=True)
class Row:
    path: str
    kind: str
    default: str
    description: str


def rows(values_yaml: str) -> list[Row]:
    """One row per key preceded by a `# --` comment (continued by the `#` lines right below it)."""
    data = yaml.safe_load(values_yaml)
    found: list[Row] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in values_yaml.splitlines():
        if (start := DESCRIPTION.match(line)) is not None:
            pending = [start["text"]]
        elif pending is not None and (more := CONTINUATION.match(line)) is not None:
            pending.append(more["text"])
        elif (key := KEY.match(line)) is not None:
            indent = len(key["indent"])
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, key["key"])]
            if pending is not None:
                path = [k for _, k in stack]
                found.append(_row(path, _at(data, path), " ".join(pending)))
            pending = None
    return found


def _at(data: Any, path: list[str]) -> Any:
    for key in path:
        data = data[key]
    return data


def _row(path: list[str], value: Any, description: str) -> Row:
    kinds = {bool: "bool", int: "int", float: "number", str: "string", list: "list", dict: "object"}
    kind = "null" if value is None else kinds[type(value)]
    return Row(".".join(path), kind, json.dumps(value, separators=(", ", ": ")), description)


def table(values_yaml: str) -> str:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for row in rows(values_yaml):
        default, description = (text.replace("|", "\\|") for text in (row.default, row.description))
        lines.append(f"| `{row.path}` | {row.kind} | `{default}` | {description} |")
    return "\n".join(lines)


def render_readme(readme: str, values_yaml: str) -> str:
    """The README with the text between the two markers replaced by the current table."""
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{table(values_yaml)}\n{END}{after}"


def write() -> Path:
    readme = CHART / "README.md"
    values = (CHART / "values.yaml").read_text(encoding="utf-8")
    readme.write_text(render_readme(readme.read_text(encoding="utf-8"), values), encoding="utf-8")
    return readme
