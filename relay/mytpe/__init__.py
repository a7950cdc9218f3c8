"""What belongs to the provider, MyTPE Pay: its signatures, its payloads, realistic sample events.
May import: relay.errors."""
