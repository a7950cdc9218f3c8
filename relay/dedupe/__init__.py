"""Delivery-id dedupe: the memory store, the Redis store, its batched script calls, the store factory.
May import: relay.errors, relay.settings, relay.types."""
