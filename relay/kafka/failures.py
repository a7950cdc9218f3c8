"""How a failed produce is answered: refused for good, denied, worth a retry, or a batch refusal that may be
about another record of the batch (each of its records is then sent again alone)."""

from __future__ import annotations

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownProducerId,
)

from relay.errors import KafkaDenied, KafkaRefused, Unavailable
from relay.kafka.batching import Batch

# Errors after which an idempotent aiokafka producer never sends successfully again. An authorization
# error on InitProducerId kills its sender task: every later send re-raises it until the producer is rebuilt.
BROKEN_PRODUCER = (
    ClusterAuthorizationFailedError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
)

# Produce errors that no retry can get past (the record is the problem): message too large (10), record
# list too large (18), invalid topic (17), policy violation (44), by errno. Not CORRUPT_MESSAGE (2): it is
# retriable, as in Java. INVALID_RECORD (87) has no class in aiokafka 0.14 and arrives as UnknownError
# (errno -1): see `KafkaPublisher._why`. An ACL (29) is KafkaDenied: the operator can fix it.
_REFUSED_FOR_GOOD = frozenset({10, 17, 18, 44})


# Produce errors about a whole batch as much as about one of its records: the broker checks
# `max.message.bytes` per batch (10, 18), and an invalid record (87, read as UnknownError, -1) fails its
# batch. aiokafka fails the whole batch (Java splits it): each of its records is sent again alone, and
# only a refusal of a record alone is for good.
_BATCH_REFUSALS = frozenset({-1, 10, 18})


def refused_with_others(exc: BaseException | None, batch: Batch) -> bool:
    """The batch was refused in a way that may be about another of its records."""
    count: int = batch.builder.record_count()
    return isinstance(exc, KafkaError) and getattr(exc, "errno", None) in _BATCH_REFUSALS and count > 1


def failed(exc: KafkaError) -> Unavailable:
    """A Kafka error as the relay answers it: refused for good, or worth a retry (`kafka_error`)."""
    if isinstance(exc, RecordTooLargeError) or getattr(exc, "errno", None) in _REFUSED_FOR_GOOD:
        return KafkaRefused(type(exc).__name__)
    if isinstance(exc, TopicAuthorizationFailedError):
        return KafkaDenied(type(exc).__name__)
    return Unavailable("kafka_error", type(exc).__name__)
