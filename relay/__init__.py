"""mytpe-relay: a webhook ingress that turns verified MyTPE Pay webhooks into Kafka CloudEvents."""

__version__ = "0.1.0"
