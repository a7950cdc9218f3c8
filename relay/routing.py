"""Pure routing: event family -> topic, entity id -> record key.

A family is the part of the event name before the first dot (`transaction` in `transaction.paid`).
Each configured family has a `Route`: the topic suffix under the prefix and where its entity id is
in `data`. A family without a route is unusable and goes to the DLQ.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.mytpe.payload import Unusable, Webhook

FAMILY = re.compile(r"[a-z][a-z0-9_]{0,62}")
TOPIC_SUFFIX = re.compile(r"[a-z][a-z0-9_.-]{0,99}")
KEY_PATH = re.compile(r"[A-Za-z0-9_]{1,64}(\.[A-Za-z0-9_]{1,64}){0,7}")
DLQ = "dlq"
_MAX_KEY = 200


@dataclass(frozen=True, slots=True)
class Destination:
    topic: str
    key: str
    entity_id: str | None


@dataclass(frozen=True, slots=True)
class Route:
    """`family` goes to `{prefix}.{topic}`, keyed by `data.<key>` (default: `data.{family}.id`, then `data.id`)."""

    family: str
    topic: str
    key: tuple[str, ...] | None = None

    def key_paths(self) -> tuple[tuple[str, ...], ...]:
        return (self.key,) if self.key is not None else ((self.family, "id"), ("id",))

    def spec(self) -> str:
        """The `RELAY_ROUTES` entry that parses back to this route."""
        return f"{self.family}={self.topic}" + (f"@{'.'.join(self.key)}" if self.key else "")


def parse_route(entry: str) -> Route:
    """`family=topic` or `family=topic@path.to.id`; raises ValueError naming what is wrong."""
    family, sep, rest = entry.partition("=")
    topic, _, path = rest.partition("@")
    family, topic, path = family.strip(), topic.strip(), path.strip()
    if not sep or not FAMILY.fullmatch(family):
        raise ValueError(f"{entry!r}: expected family=topic[@key.path] with a lower-case family name")
    if not TOPIC_SUFFIX.fullmatch(topic) or topic == DLQ:
        raise ValueError(f"{entry!r}: topic suffix must be lower-case letters, digits, '.', '_', '-', not 'dlq'")
    if "@" in rest and not KEY_PATH.fullmatch(path):
        raise ValueError(f"{entry!r}: key path must be dot-separated member names under data")
    return Route(family, topic, tuple(path.split(".")) if path else None)


def routes_for(families: Iterable[str], overrides: Iterable[Route] = ()) -> dict[str, Route]:
    """Each family to the topic of its own name, then the explicit routes on top."""
    routes = {family: Route(family, family) for family in families}
    routes.update((route.family, route) for route in overrides)
    return routes


class Router:
    __slots__ = ("dlq", "prefix", "routes")

    def __init__(self, prefix: str, routes: Mapping[str, Route]) -> None:
        self.prefix = prefix
        self.routes = dict(routes)
        self.dlq = f"{prefix}.{DLQ}"

    @classmethod
    def for_families(cls, prefix: str, families: Iterable[str]) -> Router:
        return cls(prefix, routes_for(families))

    def topics(self) -> list[str]:
        """Every topic the relay writes: the routed ones, sorted, then the DLQ."""
        return [*sorted({f"{self.prefix}.{route.topic}" for route in self.routes.values()}), self.dlq]

    def resolve(self, webhook: Webhook) -> Destination:
        """The route's topic, keyed by the entity id, else by the delivery id. Raises Unusable."""
        route = self.routes.get(webhook.family)
        if route is None:
            raise Unusable("unroutable_event")
        entity = entity_id(webhook.data, route.key_paths())
        return Destination(f"{self.prefix}.{route.topic}", entity or webhook.delivery_id, entity)


def entity_id(data: Mapping[str, Any], paths: Iterable[tuple[str, ...]]) -> str | None:
    """The first path under `data` that holds a usable id: a non-empty string or an integer."""
    for path in paths:
        value: Any = data
        for name in path:
            value = value.get(name) if isinstance(value, dict) else None
        if isinstance(value, bool) or not isinstance(value, str | int):
            continue
        text = str(value)
        if 0 < len(text) <= _MAX_KEY:
            return text
    return None
