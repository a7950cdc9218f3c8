"""The sources being served, reloaded without a restart: a content hash polled, and SIGHUP.

Kubernetes updates a Secret volume by swapping the `..data` symlink, which a watch on the file
itself misses; reading the file and comparing its SHA-256 sees every update, whatever the mount.
A poll applies a change once two reads a poll apart agree: a file written in place (an editor, `cat >`,
`kubectl cp`) is not applied half-written, as long as its writer does not pause for a poll midway. SIGHUP
applies what it reads at once. The file is read and parsed in a worker thread, never on the event loop,
and only when it is a regular file of at most MAX_BYTES; a read that hangs (a stuck network mount) holds the
watch, on a daemon thread, not the loop nor the process's exit.
A file that fails to read, parse or check changes nothing: the previous sources stay, one line names the
problem (once per content, or per read error), `mytpe_relay_config_reloads_total{result="error"}` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from relay.mytpe.threads import in_thread
from relay.settings import ConfigError
from relay.sources.config import DEFAULT, Source, SourceSet, parse, snapshot
from relay.sources.metrics import SourceMetrics

logger = logging.getLogger(__name__)

VARIABLE = "RELAY_SOURCES_FILE"
MAX_BYTES = 1 << 20
"""The largest sources file read (1 MiB: about 7,000 sources); a larger one is refused as a read error."""
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
        self._digest = self._seen = self._failure = ""
        sources = self._first_read()
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

    def _read(self) -> tuple[bytes, str]:
        """The file's content and its SHA-256 (touches no state: run in a worker thread by the watch). Opened
        without blocking and checked by its descriptor, so that a FIFO put in its place is refused, not waited on."""
        assert self._file is not None  # noqa: S101 - called only with a file
        where = f"{VARIABLE} {self._file}"
        try:
            descriptor = os.open(self._file, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(descriptor, "rb") as opened:
                if not stat.S_ISREG(os.fstat(opened.fileno()).st_mode):
                    raise ConfigError(f"{where}: cannot read: not a regular file")
                content = opened.read(MAX_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
        if len(content) > MAX_BYTES:
            raise ConfigError(f"{where}: cannot read: larger than {MAX_BYTES} bytes")
        return content, hashlib.sha256(content).hexdigest()

    def _parse(self, content: bytes) -> list[Source]:
        """Pure: run in a worker thread by the watch."""
        reserved = (DEFAULT,) if self._default is not None else ()
        return parse(content, f"{VARIABLE} {self._file}", reserved=reserved)

    def _first_read(self) -> list[Source]:
        """The file's sources at start: a file that cannot be read or parsed raises (the relay does not start)."""
        if self._file is None:
            return []
        content, self._digest = self._read()
        self._seen = self._digest
        return self._parse(content)

    def _fresh(self, digest: str, *, settle: bool) -> bool:
        """Whether content read now is to be parsed and applied: it changed, and, when `settle`, the read before
        found it too (a file being written in place is read again a poll later). Unchanged, and what is applied
        (again so, after a read that failed): the success gauge is 1."""
        seen, self._seen = self._seen, digest  # every read, so that "the read before" is the one just before
        if digest == self._digest:
            if digest == self.current.digest:
                self._metrics.config_last_reload_successful.set(1)
            return False
        return not settle or seen == digest

    async def poll(self, why: str = "change") -> bool:
        """The watch's reload: read and parse in a worker thread; a poll's change applied once it reads the same
        twice (`_fresh`); on SIGHUP, read and applied at once even if its hash looks unchanged, and a failure
        said again. True when a new set was applied."""
        applied = self._digest
        if why == "SIGHUP":
            self._digest = self._failure = ""
        try:
            content, digest = await in_thread(self._read, name="sources-read")
            self._failure = ""
            if not self._fresh(digest, settle=why != "SIGHUP"):
                return False
            try:
                sources = await in_thread(self._parse, content, name="sources-read")
            finally:
                self._digest = digest  # a bad file is reported once, not on every poll
        except ConfigError as exc:
            if not self._digest:  # a SIGHUP whose read failed: the content applied stays the one to compare
                self._digest = applied
            self._failed(why, exc)
            return False
        return self._apply(why, sources)

    def _failed(self, why: str, exc: ConfigError) -> None:
        """Counted and said once per failure: a file that stays unreadable is not a line on every poll."""
        self._metrics.config_last_reload_successful.set(0)
        if str(exc) == self._failure:
            return
        self._failure = str(exc)
        self._metrics.config_reloads.labels("error").inc()
        logger.error("sources not reloaded (%s), the previous ones stay: %s", why, exc)

    def _apply(self, why: str, sources: list[Source]) -> bool:
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

    def starting(self) -> None:
        """First thing in the lifespan, before Kafka, Redis and the spool (up to RELAY_STARTUP_TIMEOUT_SECONDS):
        SIGHUP is said and ignored, not the end of the process, until `start` installs its reload."""
        self._on_sighup(_starting)

    async def start(self) -> None:
        """The watch, and SIGHUP's handler (on the main thread): a reload, or, with no file, a line saying so
        (SIGHUP's default action would end the process)."""
        if self._file is not None:
            self._task = asyncio.create_task(self._watch(), name="sources-watch")
        self._on_sighup(self._wake.set if self._file is not None else _no_file)

    async def stop(self) -> None:
        """The watch stopped. SIGHUP is then ignored, with a line, until the loop closes (after the rest of the
        stop sequence: flush, spool close): removing the handler would put back its default action, which ends
        the process. Off the main thread no handler was installed, and SIGHUP keeps whatever the process had."""
        if self._signal_installed:
            self._on_sighup(_stopping)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_sighup(self, handler: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, handler)  # in place of one installed before: no gap
            self._signal_installed = True

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            why = "SIGHUP" if self._wake.is_set() else "change"
            self._wake.clear()
            try:
                await self.poll(why)
            except Exception:  # a listener's failure must not stop the watch
                logger.exception("sources reload failed")


def _no_file() -> None:
    logger.warning("SIGHUP: no %s to reload; ignored", VARIABLE)


def _starting() -> None:
    logger.warning("SIGHUP ignored: the relay is starting (the sources file was read at start)")


def _stopping() -> None:
    logger.warning("SIGHUP ignored: the relay is stopping")
