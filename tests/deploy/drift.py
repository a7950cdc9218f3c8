"""Field-by-field differences between two rendered Kubernetes objects, minus a list of known ones."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of an object by its dotted path. Lists of named items (containers, volumes, mounts, env) are
    keyed by name, so that their order does not count; other lists by index. Empty maps and lists are leaves."""
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        value = {v["name"]: v for v in value}
    if isinstance(value, list) and value:
        value = {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict) or not value:
        return {path: value}
    leaves: dict[str, Any] = {}
    for key, item in value.items():
        leaves |= flatten(item, f"{path}.{key}" if path else str(key))
    return leaves


def differences(ours: dict[str, Any], theirs: dict[str, Any], known: dict[str, str]) -> list[str]:
    """The paths where the two differ (a field one has and the other lacks included), except those under a
    known difference (a dotted path, `*` standing for any part)."""
    a, b = flatten(ours), flatten(theirs)
    missing = object()

    def is_known(path: str) -> bool:
        return any(fnmatchcase(path, pattern) or fnmatchcase(path, pattern + ".*") for pattern in known)

    return [
        f"{path}: chart {a.get(path, '<absent>')!r}, kustomize {b.get(path, '<absent>')!r}"
        for path in sorted(a.keys() | b.keys())
        if a.get(path, missing) != b.get(path, missing) and not is_known(path)
    ]
