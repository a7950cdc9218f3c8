"""The operator's side: the `mytpe-relay` CLI and its commands (check, tail, replay and what it reads).
May import: all of relay but relay.consumer (this is the top layer; only relay.__main__ imports it)."""
