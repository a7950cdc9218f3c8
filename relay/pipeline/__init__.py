"""The request path, one collaborator per concern: verification, record builders, the deliverer, the story.
May import: relay.dedupe, relay.envelope, relay.errors, relay.histogram, relay.mytpe, relay.routing,
relay.settings, relay.sources, relay.spool, relay.tracing, relay.types."""
