"""Configuration: one frozen `Settings` built from `RELAY_*` variables, each declared once (sections.py).
May import: relay.logs, relay.routing."""

from relay.settings.declare import merged_env, read_env_file, variables
from relay.settings.docs import report
from relay.settings.kafka import MECHANISMS, PROTOCOLS, TOKEN_PROVIDERS, KafkaSecurity
from relay.settings.model import KafkaTarget, Settings
from relay.settings.redis import (
    DEDUPE_SCHEMES,
    STORE_CLEANUP_SECONDS,
    STORE_STOP_SECONDS,
    STORE_TIMEOUT_SECONDS,
    SentinelUrl,
    sentinel_url,
)
from relay.settings.values import ConfigError, FileSecret, Secret

__all__ = [
    "DEDUPE_SCHEMES",
    "MECHANISMS",
    "PROTOCOLS",
    "STORE_CLEANUP_SECONDS",
    "STORE_STOP_SECONDS",
    "STORE_TIMEOUT_SECONDS",
    "TOKEN_PROVIDERS",
    "ConfigError",
    "FileSecret",
    "KafkaSecurity",
    "KafkaTarget",
    "Secret",
    "SentinelUrl",
    "Settings",
    "merged_env",
    "read_env_file",
    "report",
    "sentinel_url",
    "variables",
]
