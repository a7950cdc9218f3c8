"""Delivery-id dedupe: the memory store, the Redis store and its command pipelining, the store factory.
May import: relay.errors, relay.settings, relay.types."""
