"""The consumer kit: typed events from Kafka records, idempotent handling, status precedence, trace continuation.
May import: nothing else of relay (consumers import `relay.consumer`; its path is part of the contract).

event = parse_record(record)                 # NotAnEvent: DLQ or foreign (UnreadableEvent: for a person)
with process_span(record, event=event):      # continues the relay's trace (no-op without OpenTelemetry)
    handled, _ = await idempotent.run(event.id, lambda: apply(event))
if compare(current_status, event.transaction.status) is Verdict.STALE: ...
"""

from relay.consumer.events import (
    Customer,
    Event,
    Instance,
    KafkaRecord,
    NotAnEvent,
    NumberText,
    PayLink,
    Transaction,
    UnreadableEvent,
    parse_event,
    parse_record,
)
from relay.consumer.idempotency import Idempotent, MemorySeenStore, SeenStore
from relay.consumer.precedence import FINAL, TRANSACTION_RANK, Verdict, compare, should_apply
from relay.consumer.tracecontext import TraceParent, parse_traceparent
from relay.consumer.tracing import process_span

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
    "NumberText",
    "PayLink",
    "SeenStore",
    "TraceParent",
    "Transaction",
    "UnreadableEvent",
    "Verdict",
    "compare",
    "parse_event",
    "parse_record",
    "parse_traceparent",
    "process_span",
    "should_apply",
]
