"""Pure routing: event family -> topic, entity id -> record key."""

from __future__ import annotations

from dataclasses import dataclass

from relay.payload import Unusable, Webhook


@dataclass(frozen=True, slots=True)
class Destination:
    topic: str
    key: str
    entity_id: str | None


@dataclass(frozen=True, slots=True)
class Router:
    prefix: str
    families: frozenset[str]

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    def topics(self) -> list[str]:
        return [*(f"{self.prefix}.{family}" for family in sorted(self.families)), self.dlq]

    def resolve(self, webhook: Webhook) -> Destination:
        """`{prefix}.{family}` keyed by `data.{family}.id`, else the delivery id. Raises Unusable."""
        family = webhook.family
        if family not in self.families:
            raise Unusable("unroutable_event")
        entity = entity_id(webhook, family)
        return Destination(f"{self.prefix}.{family}", entity or webhook.delivery_id, entity)


def entity_id(webhook: Webhook, family: str) -> str | None:
    """`data.transaction.id` for transaction events, `data.pay_link.id` for pay_link events, and so on."""
    entity = webhook.data.get(family)
    if not isinstance(entity, dict):
        return None
    value = entity.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    return text if 0 < len(text) <= 200 else None
