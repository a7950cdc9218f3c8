"""`mytpe-relay check`: is this configuration able to serve? Prints one line per check."""

from __future__ import annotations

from relay.dedupe.factory import dedupe_from_settings
from relay.errors import StartupError
from relay.kafka.publisher import probe
from relay.settings import Settings


async def check(settings: Settings) -> bool:
    router = settings.router()
    print(f"config: ok ({len(settings.secrets)} secret(s), listen {settings.host}:{settings.port})")
    try:
        cluster = await probe(settings, metadata_timeout=settings.startup_timeout_seconds)
    except StartupError as exc:
        print(f"kafka: FAILED: {exc}")
        return False
    print(f"kafka: ok ({','.join(settings.kafka_bootstrap_servers)}, {cluster.brokers} broker(s))")
    for topic in router.topics():
        state = (
            "ok" if topic in cluster.topics else "missing (created on first publish only if the broker auto-creates)"
        )
        print(f"topic {topic}: {state}")
    store = dedupe_from_settings(settings)
    await store.start()
    try:
        dedupe_ok = await store.ping()
    finally:
        await store.stop()
    print(f"dedupe: {'ok' if dedupe_ok else 'FAILED'} ({settings.dedupe_url.split('://', 1)[0]})")
    print("ready" if dedupe_ok else "not ready")
    return dedupe_ok
