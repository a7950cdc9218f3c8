"""The consumer kit: typed events from Kafka records, once-only handling, status precedence.
May import: nothing else of relay (consumers import `relay.consumer`; its path is part of the contract).

event = parse_record(record)                 # raises NotAnEvent for DLQ or foreign records
handled, _ = await idempotent.run(event.id, lambda: apply(event))
if compare(current_status, event.transaction.status) is Verdict.STALE: ...
"""

from relay.consumer.events import (
    Customer,
    Event,
    Instance,
    KafkaRecord,
    NotAnEvent,
    PayLink,
    Transaction,
    parse_event,
    parse_record,
)
from relay.consumer.idempotency import Idempotent, MemorySeenStore, SeenStore
from relay.consumer.precedence import FINAL, TRANSACTION_RANK, Verdict, compare, should_apply

__all__ = [
    "FINAL",
    "TRANSACTION_RANK",
    "Customer",
    "Event",
    "Idempotent",
    "Instance",
    "KafkaRecord",
    "MemorySeenStore",
    "NotAnEvent",
    "PayLink",
    "SeenStore",
    "Transaction",
    "Verdict",
    "compare",
    "parse_event",
    "parse_record",
    "should_apply",
]
