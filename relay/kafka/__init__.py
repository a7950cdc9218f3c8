"""Kafka: the idempotent publisher, its per-partition batches, Kafka's partitioner, topic metadata.
May import: relay.errors, relay.settings, relay.types."""
