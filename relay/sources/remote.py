"""The MyTPE side of a source: its API client, and the drift check (what MyTPE calls, with which secret).

A source with a `mytpe:` block is checked every `RELAY_MYTPE_DRIFT_CHECK_SECONDS` (with ±10% jitter, so
replicas do not call MyTPE together, and a doubling back-off up to 8 periods after an error):
- url: MyTPE's webhook URL for the source is `RELAY_PUBLIC_URL` + the source's path;
- secret (legacy only; the new generation never shows a secret again): the masked secret MyTPE shows
  ends like one of the source's secrets.
`mytpe_relay_source_drift{source, aspect}` is 1 while one differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relay.mytpe.answers import MytpeApiError, same_url
from relay.mytpe.api import Credentials, MytpeApi
from relay.mytpe.masks import mask_readable, masked_matches
from relay.settings import ConfigError, Secret, Settings
from relay.sources.config import Source
from relay.sources.metrics import DriftMetrics
from relay.sources.registry import SourceRegistry

logger = logging.getLogger(__name__)
ASPECTS = ("url", "secret")


def api_for(source: Source, settings: Settings, *, allow_http: bool = False) -> MytpeApi:
    """The API client of `source`. Raises ConfigError when it has no `mytpe:` block or no credentials."""
    config = source.mytpe
    if config is None:
        raise ConfigError(f"source {source.name}: no `mytpe:` block (api, base_url, …) in RELAY_SOURCES_FILE")
    key = _reader(config.api_key_file, settings.mytpe_api_key, "RELAY_MYTPE_API_KEY", source.name)
    secret = _reader(config.api_secret_file, settings.mytpe_api_secret, "RELAY_MYTPE_API_SECRET", source.name)
    try:
        return MytpeApi(
            config.base_url,
            Credentials(key, secret),
            timeout=settings.mytpe_api_timeout_seconds,
            allow_http=config.allow_http or allow_http,
        )
    except MytpeApiError as exc:
        raise ConfigError(f"source {source.name}: {exc}") from None


def _reader(file: str | None, shared: Secret | None, variable: str, name: str) -> Callable[[], str]:
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"source {name}: cannot read {path}")
        return lambda: path.read_text(encoding="utf-8").strip()
    if shared is None:
        raise ConfigError(f"source {name}: no API credentials ({variable}[_FILE], or api_key_file/api_secret_file)")
    return shared.reveal


@dataclass(frozen=True)
class Drift:
    """What MyTPE has for the source, against what the relay serves. None: not checkable."""

    url: str | None
    url_ok: bool
    secret_ok: bool | None
    active: bool = True
    secret_index: int | None = None
    """Which configured secret MyTPE's masked one matches (0: the current one)."""

    @property
    def drifting(self) -> bool:
        return not self.url_ok or self.secret_ok is False or not self.active


def expected_url(source: Source, settings: Settings) -> str:
    if settings.public_url is None:
        raise ConfigError("RELAY_PUBLIC_URL: needed to compare with the URL MyTPE calls")
    return settings.public_url + source.path


async def check(source: Source, api: MytpeApi, url: str) -> Drift:
    """Raises MytpeApiError."""
    config = source.mytpe
    assert config is not None  # noqa: S101 - api_for checked it
    if config.api == "legacy":
        assert config.instance_id is not None  # noqa: S101 - the parser requires it
        hook = await api.legacy_get(config.instance_id)
        if hook.has_secret and not mask_readable(hook.masked_secret):
            return Drift(hook.url, same_url(hook.url, url), None)  # a mask of another shape: unknown, no drift
        secrets = [secret.reveal() for secret in source.secrets]
        index = next((i for i, s in enumerate(secrets) if masked_matches(hook.masked_secret, s)), None)
        return Drift(hook.url, same_url(hook.url, url), hook.has_secret and index is not None, secret_index=index)
    if config.webhook_id is None:
        raise MytpeApiError(f"source {source.name}: the ext API needs mytpe.webhook_id")
    endpoint = await api.endpoint(config.webhook_id)
    return Drift(endpoint.url, same_url(endpoint.url, url), None, endpoint.is_active)


class DriftWatch:
    def __init__(self, registry: SourceRegistry, settings: Settings, metrics: DriftMetrics) -> None:
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._uncompared: set[str] = set()  # legacy sources whose masked secret could not be compared: said once

    def watched(self) -> list[Source]:
        if self._settings.public_url is None:
            return []
        return [s for s in self._registry.current.by_path.values() if s.mytpe is not None]

    def start(self) -> None:
        self.follow()

    def follow(self) -> None:
        """One task per watched source (after a reload too); a source gone stops its task."""
        wanted = {source.name for source in self.watched()}
        for name in list(self._tasks):
            if name not in wanted:
                self._tasks.pop(name).cancel()
                self._uncompared.discard(name)  # said again if it comes back with such a mask
                for aspect in ASPECTS:
                    with contextlib.suppress(KeyError):
                        self._metrics.source_drift.remove(name, aspect)
        for name in wanted - set(self._tasks):
            for aspect in ASPECTS:
                self._metrics.source_drift.labels(name, aspect)
            for result in ("ok", "drift", "error"):
                self._metrics.drift_checks.labels(name, result)
            self._tasks[name] = asyncio.create_task(self._watch(name), name=f"drift-{name}")

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, name: str) -> None:
        period = self._settings.drift_check_seconds
        await asyncio.sleep(period * random.uniform(0.0, 0.1))  # noqa: S311 - jitter
        failures = 0
        while True:
            ok = await self.check_once(name)
            failures = 0 if ok else failures + 1
            factor = min(2**failures, 8)
            await asyncio.sleep(period * factor * random.uniform(0.9, 1.1))  # noqa: S311 - jitter

    def _unknown(self, source: Source, secret_ok: bool | None) -> None:
        """Said once per source while it lasts: a legacy source's masked secret in a shape that cannot be compared
        reads as no drift (the gauge at 0), so without this line the secret's alert would be silent for good."""
        legacy = source.mytpe is not None and source.mytpe.api == "legacy"
        if not legacy or secret_ok is not None:
            self._uncompared.discard(source.name)
        elif source.name not in self._uncompared:
            self._uncompared.add(source.name)
            logger.warning(
                "drift check of source %s: MyTPE's masked secret has a shape that cannot be compared; the secret is"
                " not checked until it has (the URL still is)",
                source.name,
                extra={"source": source.name},
            )

    async def check_once(self, name: str) -> bool:
        """Check one source now; False when MyTPE could not be asked (counted, logged, retried later)."""
        source = self._registry.current.by_name(name)
        if source is None:
            return True
        try:
            drift = await check(source, api_for(source, self._settings), expected_url(source, self._settings))
        except (MytpeApiError, ConfigError) as exc:
            self._metrics.drift_checks.labels(name, "error").inc()
            logger.warning("drift check of source %s failed: %s", name, exc, extra={"source": name})
            return False
        except Exception as exc:  # the check must outlive anything; its text may quote a credential
            self._metrics.drift_checks.labels(name, "error").inc()
            logger.error("drift check of source %s failed: %s", name, type(exc).__name__, extra={"source": name})
            return False
        self._metrics.source_drift.labels(name, "url").set(0 if drift.url_ok and drift.active else 1)
        self._metrics.source_drift.labels(name, "secret").set(1 if drift.secret_ok is False else 0)
        self._metrics.drift_checks.labels(name, "drift" if drift.drifting else "ok").inc()
        self._unknown(source, drift.secret_ok)
        if drift.drifting:
            logger.warning(
                "source %s drifted: MyTPE calls %s (url %s, secret %s, active %s)",
                name,
                drift.url or "nothing",
                "ok" if drift.url_ok else "DIFFERENT",
                {True: "ok", False: "NOT ONE OF OURS", None: "not checkable"}[drift.secret_ok],
                drift.active,
                extra={"source": name},
            )
        return True
