"""The durable spool: records Kafka has not acknowledged in time, on local disk (SQLite), and their drainer.
May import: relay.errors, relay.settings, relay.tracing, relay.types."""
