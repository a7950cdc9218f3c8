"""Sources: the MyTPE endpoints one relay serves, each with its path and secrets; their reload; parking.
May import: relay.dedupe (its Redis connection), relay.errors, relay.mytpe, relay.settings,
relay.types."""
