"""What belongs to the provider, MyTPE Pay: signatures, payloads, samples, its configuration API, a sandbox.
May import: relay.errors."""
