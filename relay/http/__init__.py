"""The HTTP face: the app factory and its lifespan, the webhook on raw ASGI, the probes, the uvicorn server.
May import: relay.pipeline, relay.sources, relay.spool, relay.kafka, relay.dedupe, relay.errors, relay.metrics,
relay.settings, relay.tracing, relay.types."""
