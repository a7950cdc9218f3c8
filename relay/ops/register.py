"""`mytpe-relay webhook register`: point MyTPE at the relay's URL for a source and hold the secret it signs with.

Legacy: the instance's URL set (`point_legacy`), and MyTPE's secret installed, or, when MyTPE kept the one it
had, compared with the source's by its mask (regenerated once if it is not one of them; said, exit 1, when the
mask cannot be compared). New generation: the source's endpoint (`webhook_id`) pointed back at the URL and
activated if it exists (its secret kept), else one adopted or made for the URL (relay.mytpe.oneshot).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

from relay.mytpe.answers import MytpeApiError, same_url, url_place
from relay.mytpe.api import Endpoint, MytpeApi
from relay.mytpe.oneshot import (
    Pace,
    create_endpoint,
    point_legacy,
    regenerate_endpoint,
    regenerate_legacy,
    say_others,
)
from relay.ops.rotation import EXIT_DRIFT
from relay.ops.secret_install import agrees, install, only_copy, say
from relay.settings import ConfigError, Settings
from relay.sources.config import BASE_PATH, Source, parse
from relay.sources.editor import edit
from relay.sources.remote import expected_url


async def register(
    settings: Settings, path: Path, source: Source, api: MytpeApi, *, print_secret: bool, pace: Pace
) -> int:
    url = expected_url(source, settings)
    config = source.mytpe
    assert config is not None  # noqa: S101 - api_for checked it
    kept: bool | None = None  # legacy: whether the secret MyTPE kept is one of the source's (None: not known)
    active = True  # new generation: whether the endpoint is active on MyTPE
    if config.api == "legacy":
        assert config.instance_id is not None  # noqa: S101
        secret = await point_legacy(api, config.instance_id, url, pace=pace, say=say)
        webhook_id = None
        if secret is None:
            kept = await agrees(api, source, None)
        if kept is False:
            say("MyTPE signs with a secret this source does not hold (made in a lost answer?): regenerating it")
            secret = await regenerate_legacy(api, config.instance_id, pace=pace, say=say)
    else:
        secret, webhook_id, active = await _register_endpoint(api, source, url, pace, _others(settings, path, source))
    with only_copy(secret, str(path)):  # nothing between MyTPE's answer and this: the secret is kept first
        print(f"source {source.name}: MyTPE now calls {url}")
        new_id = webhook_id if webhook_id is not None and webhook_id != config.webhook_id else None
        _written(path, source.name, secret if not print_secret else None, new_id)
        if secret is not None and print_secret:
            print(f"secret (shown once, store it now): {secret}", flush=True)  # before MyTPE is asked more
    if config.api != "legacy" and webhook_id is not None:  # after the install: a failure here loses no secret
        active = active or await _activate(api, webhook_id)
        say_others(await _listed_or_none(api), webhook_id, url, say)
    if not active:
        print(f"endpoint {webhook_id} is inactive on MyTPE: it delivers nothing until activated", file=sys.stderr)
        return EXIT_DRIFT
    if secret is None and config.api == "legacy":
        if kept is None:  # a mask of another shape: nothing says the source holds the secret MyTPE signs with
            print(_KEPT_UNKNOWN, file=sys.stderr)
            return EXIT_DRIFT
        print("MyTPE kept the secret it had, one of the source's")
    elif secret is None:
        print("MyTPE already has this source's endpoint: its secret is unchanged (`webhook rotate` makes a new one)")
    return await _confirm(api, source, secret)


def _written(path: Path, name: str, secret: str | None, webhook_id: str | None) -> None:
    """MyTPE's new secret (its first: it replaces any placeholder) and the endpoint's new id, in one write: a file
    naming the endpoint without its secret would read as unchanged to a second `register`."""
    if secret is not None:
        install(path, name, secret, keep=0, webhook_id=webhook_id)
        print(f"secret written to {path} as the source's only secret")
    elif webhook_id is not None:
        edit(path, name, lambda entry: entry.setdefault("mytpe", {}).update(webhook_id=webhook_id))
    if webhook_id is not None:
        print(f"webhook_id {webhook_id} written to {path}")


_KEPT_UNKNOWN = (
    "secret: MyTPE's secret for the instance (the one it had, or one made in a lost answer) is masked in a shape"
    " that cannot be compared: whether the source holds it is not known (deliveries it does not verify are"
    " parked); `webhook rotate` makes one it holds"
)


async def _register_endpoint(
    api: MytpeApi, source: Source, url: str, pace: Pace, others: Others
) -> tuple[str | None, str, bool]:
    """register, new generation: the source's endpoint, if MyTPE has it, pointed back at `url` and active (its
    secret kept, and read back to be sure); else one adopted for the URL (its secret, lost in an earlier answer,
    made again) or made. The secret to install (None: unchanged), the endpoint's id, and whether it is active: an
    adopted one is activated once its new secret is installed (`_activate`), so that none of its deliveries is
    signed with a secret lost meanwhile. `others`: the other sources, whose endpoints are never moved or adopted."""
    config = source.mytpe
    assert config is not None  # noqa: S101 - api_for checked it
    former = await _current(api, config.webhook_id)  # asked first: no wait between a secret and its install
    if former is not None:
        await _point_back(api, former, url, others)
        return None, former.id, True
    description = f"mytpe-relay source {source.name}"
    endpoint = await create_endpoint(api, url, description, pace=pace, say=say, prefer=config.webhook_id)
    if endpoint.id in others.ids:  # adopted (a made one's id is new): another source's, which would share it
        raise MytpeApiError(
            f"endpoint {endpoint.id} calls this source's URL, but it is source {others.ids[endpoint.id]}'s"
            " webhook_id: nothing changed; point it back with `webhook register` for that source, or remove it there"
        )
    if endpoint.id == config.webhook_id:  # looked up by id, 404 (a gateway's?); listed: the source's, kept
        say(f"the source's endpoint {endpoint.id} is listed though MyTPE answered 404 for it: kept, its secret too")
        return None, endpoint.id, endpoint.is_active
    if endpoint.secret is not None:  # made
        return endpoint.secret, endpoint.id, endpoint.is_active
    return await regenerate_endpoint(api, endpoint.id, pace=pace, say=say), endpoint.id, endpoint.is_active


async def _activate(api: MytpeApi, webhook_id: str) -> bool:
    """Activate the endpoint, read back to be sure; whether it is active (a failure is said, not raised)."""
    try:
        await api.update_endpoint(webhook_id, is_active=True)
        active = (await api.endpoint(webhook_id)).is_active
    except MytpeApiError as exc:
        say(f"endpoint {webhook_id} is inactive on MyTPE, and activating it failed ({exc})")
        return False
    say(f"endpoint {webhook_id} was inactive on MyTPE: {'activated' if active else 'still inactive after the PATCH'}")
    return active


class Others(NamedTuple):
    """The relay's other sources, whose endpoints `register` never takes: their URLs, and their webhook_ids (to
    the source's name)."""

    urls: list[str]
    ids: dict[str, str]


def _others(settings: Settings, path: Path, source: Source) -> Others:
    """The relay's other sources (the file's, and /webhooks/mytpe with RELAY_MYTPE_SECRETS). A source of the file
    sharing this one's webhook_id is refused, nothing changed: only one can be that endpoint's."""
    sources = [s for s in parse(path.read_bytes(), str(path)) if s.name != source.name]
    ids = {s.mytpe.webhook_id: s.name for s in sources if s.mytpe is not None and s.mytpe.webhook_id is not None}
    webhook_id = source.mytpe.webhook_id if source.mytpe is not None else None
    if webhook_id is not None and webhook_id in ids:
        raise ConfigError(f"{path}: sources {source.name} and {ids[webhook_id]} share webhook_id {webhook_id}")
    urls = [expected_url(s, settings) for s in sources]
    return Others(urls + ([f"{settings.public_url}{BASE_PATH}"] if settings.secrets else []), ids)


async def _point_back(api: MytpeApi, former: Endpoint, url: str, others: Others) -> None:
    """The source's endpoint calls `url`, active. One that calls another source's URL is left as it is: its
    webhook_id is most likely that source's, copied, whose deliveries would move here, unverifiable."""
    if former.url == url and former.is_active:
        return
    if any(_same(former.url, other) for other in others.urls):
        raise MytpeApiError(
            f"endpoint {former.id} calls {former.url}, another source's URL: is the source's webhook_id that source's"
            " endpoint? Nothing changed"
        )
    await api.update_endpoint(former.id, url=url, is_active=True)  # idempotent: retried as any read
    now = await api.endpoint(former.id)
    if not same_url(now.url, url) or not now.is_active:  # the host in another case, say: one place
        held = f"{now.url or 'no URL'}, {'active' if now.is_active else 'inactive'}"
        raise MytpeApiError(f"endpoint {former.id}: MyTPE holds {held} after the PATCH, not {url}, active")
    was = f"{former.url or 'nothing'}{'' if former.is_active else ', inactive'}"
    say(f"the source's endpoint {former.id} called {was}: pointed back at the URL, active, its secret kept")


def _same(one: str, other: str) -> bool:
    """Whether two URLs name one place: `url_place`'s, a trailing slash or not, any query."""
    mine, theirs = url_place(one), url_place(other)
    return mine[:3] == theirs[:3] and mine[3].rstrip("/") == theirs[3].rstrip("/")


async def _listed_or_none(api: MytpeApi) -> list[Endpoint]:
    """MyTPE's endpoints, to say the others for the URL; none when they cannot be listed (said)."""
    try:
        return await api.endpoints()
    except MytpeApiError as exc:
        say(f"MyTPE's endpoints could not be listed to look for others for the URL ({exc})")
        return []


async def _current(api: MytpeApi, webhook_id: str | None) -> Endpoint | None:
    """MyTPE's endpoint `webhook_id` (the source's, which signs with a secret it holds); None if it has none."""
    if webhook_id is None:
        return None
    try:
        return await api.endpoint(webhook_id)
    except MytpeApiError as exc:
        if exc.http_status == 404:
            return None
        raise


async def _confirm(api: MytpeApi, source: Source, secret: str | None) -> int:
    """register's last step: MyTPE signs with the secret installed (or printed)."""
    agreed = await agrees(api, source, secret)
    if agreed is None:
        print(
            "secret: MyTPE shows no secret to compare (this generation, or a mask of another shape); deliveries"
            " verifying are the check"
        )
        return 0
    if agreed:
        print("secret: MyTPE's masked secret matches the installed one")
        return 0
    print("secret: MyTPE's masked secret matches none installed (DRIFT): run `webhook rotate`", file=sys.stderr)
    return EXIT_DRIFT
