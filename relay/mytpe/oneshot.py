"""MyTPE's calls whose answer holds a secret it shows once, made so that no secret is lost unnoticed and
no endpoint is made twice.

Such a call is never retried blindly (`MytpeApi` raises OutcomeUnknown when a request may have reached
MyTPE without an answer). MyTPE is asked what is true first, then one deliberate call is made:
- regenerate: read what a regeneration changes (legacy: the masked secret; new generation: the
  endpoint's `updated_at`, which the docs do not promise, so the final check is the relay verifying)
  until it differs from before the call, for at most `settle` seconds, since a request may be applied
  late. Then regenerate once more: that answer's secret is the one to install;
- the legacy PUT of the URL: read the configuration until it shows the URL (at most `settle`); if it
  does, the call was made, and the caller compares MyTPE's masked secret with its own;
- create: list the endpoints by URL until one appears (at most `settle`), and adopt it.
At most ROUNDS deliberate calls, then a one-line error. A request applied later than `settle` after
its last attempt is not seen here. Legacy: the commands' final check and the relay's drift check see
it (MyTPE's masked secret). New generation: MyTPE shows no secret, so nothing here or in the drift
check sees it; deliveries then get 401 `bad_signature` once the window is closed (a regeneration) or
a second endpoint exists for the URL (a create; `webhook endpoints` lists it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from relay.mytpe.answers import MytpeApiError, OutcomeUnknown, same_url
from relay.mytpe.api import Endpoint, LegacyWebhook, MytpeApi

ROUNDS = 3
T = TypeVar("T")
Say = Callable[[str], None]


@dataclass(frozen=True)
class Pace:
    """How long to watch MyTPE for a request applied late, and how often to look."""

    settle: float = 60.0
    poll: float = 1.0


async def regenerate_legacy(api: MytpeApi, instance: str, *, pace: Pace, say: Say) -> str:
    """A new secret for the instance, held by the caller and nobody else."""

    async def mark() -> object:
        return (await api.legacy_get(instance)).masked_secret

    return await _regenerate(lambda: api.legacy_regenerate(instance), mark, pace, say)


async def regenerate_endpoint(api: MytpeApi, webhook_id: str, *, pace: Pace, say: Say) -> str:
    async def mark() -> object:
        return (await api.endpoint(webhook_id)).updated_at

    return await _regenerate(lambda: api.regenerate_endpoint(webhook_id), mark, pace, say)


async def _regenerate(
    call: Callable[[], Awaitable[str]], mark: Callable[[], Awaitable[object]], pace: Pace, say: Say
) -> str:
    before = await mark()
    lost_at: datetime | None = None
    last = ""
    for _ in range(ROUNDS):
        sent = datetime.now(UTC) - CLOCKS  # MyTPE may have acted as soon as the request reached it
        try:
            secret = await call()
        except OutcomeUnknown as exc:
            lost_at, last = lost_at or sent, str(exc)
            say(f"{exc}: MyTPE may have made a secret whose answer is lost; asking MyTPE before acting")
        else:
            if lost_at is not None:
                say(_LOST_SINCE.format(since=f"{lost_at:%Y-%m-%dT%H:%M:%SZ}"))
            return secret
        try:
            now = await _watch(mark, _differs(before), pace)
        except MytpeApiError as exc:  # MyTPE cannot be asked after a lost answer: say what may have happened
            since = f"{lost_at:%Y-%m-%dT%H:%M:%SZ}"
            raise MytpeApiError(
                f"{exc}; asked after a regenerate-secret whose answer was lost ({last}): MyTPE may sign with a secret"
                f" nobody holds: run rotate again; once a secret is installed, {_RECONCILE.format(since=since)}"
            ) from None
        if now != before:
            say("MyTPE made a new secret, its answer lost: regenerating once more, to hold the secret it signs with")
        else:
            say(f"MyTPE shows no new secret after {pace.settle:g}s: regenerating once more")
        before = now
    raise MytpeApiError(
        f"regenerate-secret: no usable answer {ROUNDS} times (the last: {last}); MyTPE may sign with a secret nobody"
        " holds"
    )


CLOCKS = timedelta(minutes=5)
"""Taken off the time a lost call was sent, for `reconcile --since`: MyTPE's clock against this machine's. A
delivery redelivered that did not need it is harmless (the relay dedupes); one left out is lost."""
_RECONCILE = (
    "`webhook reconcile --since {since}` asks MyTPE to redeliver them (new generation; legacy: MyTPE's dashboard)"
)
_LOST_SINCE = (
    "deliveries MyTPE signed from {since} until this secret is installed may carry the lost one, which nobody"
    " holds: they are parked, and lost once MyTPE's retries end; once it is installed, " + _RECONCILE
)


async def point_legacy(api: MytpeApi, instance: str, url: str, *, pace: Pace, say: Say) -> str | None:
    """MyTPE calls `url` for the instance. The secret when MyTPE made one and its answer came; else None
    (MyTPE kept the one it had, or its answer was lost: the caller compares the masked secret)."""
    for _ in range(ROUNDS):
        try:
            return await api.legacy_set_url(instance, url)
        except OutcomeUnknown as exc:
            say(f"{exc}: asking MyTPE whether it calls the URL now")
        hook: LegacyWebhook = await _watch(lambda: api.legacy_get(instance), lambda h: same_url(h.url, url), pace)
        if same_url(hook.url, url):
            return None
        say(f"MyTPE still does not call the URL after {pace.settle:g}s: setting it once more")
    raise MytpeApiError(f"PUT webhook_url: no answer {ROUNDS} times; `webhook status` tells what MyTPE has")


async def create_endpoint(
    api: MytpeApi, url: str, description: str, *, pace: Pace, say: Say, prefer: str | None = None
) -> Endpoint:
    """The endpoint for `url`: an existing one adopted (no secret then), else a new one (with its secret).
    Of several for `url`, the one whose id is `prefer` (the source's webhook_id); without it, several
    is an error naming them all: adopting the wrong one would drop the secret the right one signs with."""

    async def listed() -> list[Endpoint]:
        return [e for e in await api.endpoints(strict=True) if same_url(e.url, url)]  # absent, one is made: read whole

    for _ in range(ROUNDS):
        found = await listed()
        if found:
            return _adopt(found, url, prefer, say)
        try:
            return await api.create_endpoint(url, [], description=description)
        except OutcomeUnknown as exc:
            say(f"{exc}: listing MyTPE's endpoints for the URL before acting")
        await _watch(listed, bool, pace)
    raise MytpeApiError(f"POST /webhooks: no answer {ROUNDS} times; `webhook endpoints` lists what MyTPE has")


def _adopt(found: list[Endpoint], url: str, prefer: str | None, say: Say) -> Endpoint:
    chosen = next((e for e in found if e.id == prefer), None)
    if chosen is None and len(found) > 1:
        ids = ", ".join(e.id for e in found)
        raise MytpeApiError(
            f"MyTPE has {len(found)} endpoints for {url} ({ids}) and none is the source's webhook_id: "
            "set webhook_id to the one that signs with the source's secret, or delete the others"
        )
    chosen = chosen or found[0]
    say(f"MyTPE has endpoint {chosen.id} for {url}: adopting it")
    say_others(found, chosen.id, url, say)
    return chosen


def say_others(listed: list[Endpoint], chosen: str, url: str, say: Say) -> None:
    """Say MyTPE's other endpoints for `url`: each delivers a copy, signed with a secret the source does not hold."""
    others = [e.id for e in listed if same_url(e.url, url) and e.id != chosen]
    if others:
        say(
            f"MyTPE also has endpoint(s) {', '.join(others)} for {url}, signing with secrets this source does not "
            "hold (their deliveries get 401): delete them on MyTPE"
        )


def _differs(before: object) -> Callable[[object], bool]:
    return lambda value: value != before


async def _watch(read: Callable[[], Awaitable[T]], done: Callable[[T], bool], pace: Pace) -> T:
    """Read until `done` holds or `pace.settle` has passed; the last value read."""
    deadline = time.monotonic() + pace.settle
    while True:
        value = await read()
        if done(value) or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(pace.poll)
