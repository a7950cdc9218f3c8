"""`mytpe-relay webhook rotate`: a source's secret regenerated on MyTPE with nothing lost.

1. open the rotation window in the sources file (a bad signature gets 503, and is parked) and wait
   until every replica given (`--relay-url`, once per replica) serves that window (its
   mytpe_relay_rotation_window_until_timestamp_seconds shows its end); stop there if one does not;
2. regenerate on MyTPE (never blindly retried: relay.mytpe.oneshot);
3. install the new secret first, the previous one second, the window's end again from now (it counts
   from the install), and read it back;
4. check that MyTPE's masked secret ends like it (legacy; a regeneration applied late: once more);
5. wait until every replica serves the new file (that window's end) and verifies a request with the
   new secret, check MyTPE once more, then close the window.
The sources file is a local file, or a Kubernetes Secret (`--kube-secret`): then each change is
applied to the Secret as it is at that moment (relay.ops.kube), and the replicas see it after the
kubelet's sync delay, which steps 1 and 5 wait for (`--reload-timeout`).
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from relay.mytpe.api import MytpeApi
from relay.mytpe.oneshot import ROUNDS, Pace
from relay.ops.secret_install import agrees, install, only_copy, reason, regenerate
from relay.settings import ConfigError
from relay.sources.config import Source
from relay.sources.editor import Entry, edit, set_window

EXIT_DRIFT = 1
EXIT_CONFIG = 2
GENERATION = "mytpe_relay_config_generation"
WINDOW = "mytpe_relay_rotation_window_until_timestamp_seconds"
MATCHES = "mytpe_relay_secret_matches_total"


@dataclass(frozen=True)
class Target:
    """The sources file the command edits. With `remote` (a Kubernetes Secret), each edit of the working
    copy at `path` is made through it: applied to the Secret's content as it is then, and written back."""

    path: Path
    where: str
    remote: Callable[[Callable[[], object]], None] | None = None

    def apply(self, edit_copy: Callable[[], object]) -> None:
        if self.remote is None:
            edit_copy()
        else:
            self.remote(edit_copy)

    def change(self, name: str, change: Callable[[Entry], None]) -> None:
        self.apply(lambda: edit(self.path, name, change))


@dataclass(frozen=True)
class Replicas:
    """The relay replicas to watch, by their base URL (their /metrics)."""

    urls: tuple[str, ...] = ()

    def generations(self, *, strict: bool = True) -> dict[str, float]:
        """Each replica's sources generation now (0 for one that does not answer, unless `strict`:
        then ConfigError)."""
        found = {url: _metric(url, GENERATION, {}) for url in self.urls}
        silent = [url for url, value in found.items() if value is None]
        if silent and strict:
            raise ConfigError(f"--relay-url: no {GENERATION} from {', '.join(silent)} (is it a relay?)")
        return {url: value or 0.0 for url, value in found.items()}

    async def serving(self, name: str, until: datetime, timeout: float) -> list[str]:
        """The replicas that do not serve the source's window ending at `until` within `timeout` (none:
        all do). That exact end, not any reload: another change to the file may reach a replica first."""
        labels = {"source": name}
        return await self._until(lambda url: _metric(url, WINDOW, labels) == until.timestamp(), timeout)

    async def verifying(self, name: str, timeout: float) -> list[str]:
        """The replicas that verify no request with the source's first secret within `timeout`."""
        labels = {"source": name, "secret_index": "0"}
        before = {url: _metric(url, MATCHES, labels) or 0.0 for url in self.urls}
        return await self._until(lambda url: (_metric(url, MATCHES, labels) or 0.0) > before[url], timeout)

    async def _until(self, done: Callable[[str], bool], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        waiting = list(self.urls)
        while True:
            waiting = [url for url in waiting if not done(url)]
            if not waiting or time.monotonic() > deadline:
                return waiting
            await asyncio.sleep(0.5)


@dataclass(frozen=True)
class Waits:
    window: timedelta
    reload: float
    verify: float
    pace: Pace


async def rotate(target: Target, source: Source, api: MytpeApi, replicas: Replicas, waits: Waits) -> int:
    replicas.generations()  # each --relay-url answers as a relay, or ConfigError before anything changes
    until = _window_end(waits.window)
    try:
        target.change(source.name, set_window(until))
    except (OSError, ConfigError) as exc:
        print(
            f"1. cannot open the rotation window in {target.where} ({reason(exc)}): nothing regenerated",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    print(f"1. rotation window open until {waits.window} from now (a bad signature gets 503, and is parked)")
    late = await replicas.serving(source.name, until, waits.reload)
    if late:
        print(
            f"1. {', '.join(late)} did not load the window within {waits.reload:g}s: nothing regenerated "
            "(the window closes by itself)",
            file=sys.stderr,
        )
        return EXIT_DRIFT
    if len(replicas.urls) > 1:
        print(f"   all {len(replicas.urls)} replicas serve the window")
    superseded: str | None = None
    for _ in range(ROUNDS):
        secret = await regenerate(api, source, waits.pace)
        until = _window_end(waits.window, after=until)  # the window counts from the install
        with only_copy(secret, target.where):
            print("2. secret regenerated on MyTPE (the old one no longer signs)")
            target.apply(
                functools.partial(install, target.path, source.name, secret, keep=1, drop=superseded, window=until)
            )
        print(
            f"3. new secret installed first in {target.where}, the previous one kept second for late retries; "
            f"the window ends {waits.window} from now"
        )
        code = await _confirm(target, source, api, secret, replicas, until, waits)
        if code is not None:
            return code
        print("  MyTPE signs with another secret (a regeneration applied late): regenerating once more")
        superseded = secret
    print(f"MyTPE signed with another secret {ROUNDS} times: the window closes by itself", file=sys.stderr)
    return EXIT_DRIFT


async def _confirm(  # noqa: PLR0917 - one step's inputs
    target: Target,
    source: Source,
    api: MytpeApi,
    secret: str,
    replicas: Replicas,
    until: datetime,
    waits: Waits,
) -> int | None:
    """Steps 4 and 5. None when MyTPE signs with another secret (a regeneration applied late)."""
    agreed = await agrees(api, source, secret)
    if agreed is False:
        return None
    print(
        "4. MyTPE's masked secret matches the installed one"
        if agreed
        else "4. MyTPE shows no secret to compare (this generation, or a mask of another shape): the relay"
        " verifying with it is the check"
    )
    if not replicas.urls:
        print("5. no --relay-url: the window closes by itself at its end")
        return 0
    silent = await replicas.serving(source.name, until, waits.reload)  # the file with the new secret
    silent = silent or await replicas.verifying(source.name, waits.verify)
    if silent:
        print(f"5. nothing verified with the new secret by {', '.join(silent)}; the window closes by itself")
        return EXIT_DRIFT
    if await agrees(api, source, secret) is False:
        return None
    try:
        target.change(source.name, set_window(None))
    except (OSError, ConfigError) as exc:
        print(
            f"5. the relay verifies with the new secret, but the window could not be closed in {target.where} "
            f"({reason(exc)}): it closes by itself at its end",
            file=sys.stderr,
        )
        return EXIT_DRIFT
    every = "the relay verifies" if len(replicas.urls) == 1 else f"all {len(replicas.urls)} replicas verify"
    print(f"5. {every} with the new secret: rotation window closed")
    return 0


def _window_end(length: timedelta, after: datetime | None = None) -> datetime:
    """Now + `length`, to the second as the file holds it, and later than `after` (so that each write
    of the window is told apart on the replicas)."""
    until = (datetime.now(UTC) + length).replace(microsecond=0)
    return max(until, after + timedelta(seconds=1)) if after is not None else until


def _metric(relay_url: str, name: str, labels: dict[str, str]) -> float | None:
    """One sample of the relay's /metrics, or None when it cannot be read: no answer, one cut short (a replica
    restarting), or a page that is not the exposition (an ingress's)."""
    try:
        with urllib.request.urlopen(relay_url.rstrip("/") + "/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
    except (OSError, http.client.HTTPException, ValueError):  # ValueError: not UTF-8, or not the exposition
        return None
    return None
