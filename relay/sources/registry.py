"""The sources being served, reloaded without a restart: a content hash polled, and SIGHUP.

Kubernetes updates a Secret volume by swapping the `..data` symlink, which a watch on the file
itself misses; reading the file and comparing its SHA-256 sees every update, whatever the mount.
A file that fails to parse or check changes nothing: the previous sources stay, one line names the
problem, `mytpe_relay_config_reloads_total{result="error"}` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from relay.settings import ConfigError
from relay.sources.config import DEFAULT, Source, SourceSet, parse, snapshot
from relay.sources.metrics import SourceMetrics

logger = logging.getLogger(__name__)

VARIABLE = "RELAY_SOURCES_FILE"
OnChange = Callable[[SourceSet, list[Source]], None]


class SourceRegistry:
    """Holds the current SourceSet; `lookup(path)` is the one read a request makes."""

    def __init__(
        self,
        *,
        default: Source | None,
        file: Path | None,
        metrics: SourceMetrics,
        poll_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if default is None and file is None:
            raise ConfigError(f"{VARIABLE} or RELAY_MYTPE_SECRETS: set at least one (no source to serve)")
        self._default = default
        self._file = file
        self._metrics = metrics
        self._poll = poll_seconds
        self._clock = clock
        self._listeners: list[OnChange] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._digest = ""
        sources, _ = self._read_sources(raising=True)
        self.current = snapshot(self._with_default(sources), generation=1, digest=self._digest)
        self._signal_installed = False
        metrics.config_generation.set(1)
        metrics.config_last_reload_successful.set(1)
        metrics.config_last_reload_success.set(clock())
        metrics.config_reloads.labels("success")
        metrics.config_reloads.labels("error")

    def lookup(self, path: str) -> Source | None:
        return self.current.by_path.get(path)

    def on_change(self, listener: OnChange) -> None:
        """Call `listener(new set, sources whose secrets changed)` after each applied reload."""
        self._listeners.append(listener)

    def _with_default(self, sources: Sequence[Source]) -> list[Source]:
        return [*([self._default] if self._default is not None else []), *sources]

    def _read_sources(self, *, raising: bool) -> tuple[list[Source], bool]:
        """The file's sources and whether its content changed since the last read."""
        if self._file is None:
            return [], False
        where = f"{VARIABLE} {self._file}"
        try:
            content = self._file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
        digest = hashlib.sha256(content).hexdigest()
        if digest == self._digest and not raising:
            return [], False
        reserved = (DEFAULT,) if self._default is not None else ()
        try:
            sources = parse(content, where, reserved=reserved)
        finally:
            self._digest = digest  # a bad file is reported once, not on every poll
        return sources, True

    def reload(self, why: str = "change") -> bool:
        """Read the file again; apply it if it changed and is valid. True when a new set was applied."""
        try:
            sources, changed = self._read_sources(raising=False)
        except ConfigError as exc:
            self._metrics.config_reloads.labels("error").inc()
            self._metrics.config_last_reload_successful.set(0)
            logger.error("sources not reloaded (%s), the previous ones stay: %s", why, exc)
            return False
        if not changed:
            if self._digest == self.current.digest:  # it holds what is applied: again so, after a read that failed
                self._metrics.config_last_reload_successful.set(1)
            return False
        previous = self.current
        self.current = snapshot(self._with_default(sources), generation=previous.generation + 1, digest=self._digest)
        changed_secrets = self.current.changed_secrets(previous)
        self._metrics.config_reloads.labels("success").inc()
        self._metrics.config_generation.set(self.current.generation)
        self._metrics.config_last_reload_successful.set(1)
        self._metrics.config_last_reload_success.set(self._clock())
        logger.info(
            "sources reloaded (%s): generation %d, %d source(s), secrets changed for: %s",
            why,
            self.current.generation,
            len(self.current.by_path),
            ", ".join(s.name for s in changed_secrets) or "none",
        )
        for listener in self._listeners:
            listener(self.current, changed_secrets)
        return True

    async def start(self) -> None:
        if self._file is None:
            return
        self._task = asyncio.create_task(self._watch(), name="sources-watch")
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, self._wake.set)
            self._signal_installed = True

    async def stop(self) -> None:
        if self._signal_installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal_installed = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            why = "SIGHUP" if self._wake.is_set() else "change"
            if why == "SIGHUP":
                self._digest = ""  # SIGHUP reads the file again even if its hash looks unchanged
            self._wake.clear()
            try:
                self.reload(why)
            except Exception:  # a listener's failure must not stop the watch
                logger.exception("sources reload failed")
