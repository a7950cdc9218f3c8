"""MyTPE's webhook configuration API, both generations, as the relay's commands and drift check call it.

Legacy ("v2"), per MyTPE Pay instance, headers X-API-KEY and X-API-SECRET:
    GET  /api/v2/mytpe-pay/{instance}/webhook                    -> url, has_secret, the secret masked
    PUT  /api/v2/mytpe-pay/{instance}/webhook {"webhook_url": …}  -> the full secret on the first call
    POST /api/v2/mytpe-pay/{instance}/webhook/regenerate-secret   -> a new secret; the old one is dead
    PUT  … {"webhook_url": null}                                   -> no more deliveries
New generation (`/api/ext`), per endpoint: /webhooks, /webhooks/{id} (GET, PATCH, DELETE),
/webhooks/{id}/regenerate-secret, /webhooks/{id}/deliveries and …/deliveries/{delivery}/redeliver.

Calls time out, are retried with backoff on 5xx, 429, timeouts and refused connections, and fail with
one line for everything else (401, 403, 404, 422 named). The calls whose answer holds a secret MyTPE
shows once (the first legacy PUT, POST /webhooks, both regenerate-secret) are never retried blindly:
after a failure that may have reached MyTPE (a timeout, a 5xx, a connection lost) they raise
OutcomeUnknown, and `relay.mytpe.oneshot` finds out what is true before acting again. Only a refused
connection, an unknown host or a 429 (nothing was done) is retried for them. A redirect (3xx) is never
followed, since the credentials would go with it to wherever it points: it fails with one line naming
its target's origin, and for those calls it is an OutcomeUnknown too (a gateway may answer 303 to a
POST it applied).
Neither the API credentials nor a secret ever appear in an error, a log line or a repr. Plain http://
is refused unless `allow_http` (a sandbox).
Standard library HTTP in a daemon thread per call (never waited for at exit): a few calls a minute need no
client dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from relay.mytpe.answers import (
    AppliedUnread,
    MytpeApiError,
    OutcomeUnknown,
    Retriable,
    applied,
    full_secret,
    no_answer,
    read_answer,
    refused,
    regenerated,
)
from relay.mytpe.threads import finished, in_thread

GENERATIONS = ("legacy", "ext")


@dataclass(frozen=True)
class Credentials:
    """The API key and secret, read when needed (files may be rotated under a running relay)."""

    key: Callable[[], str] = field(repr=False)
    secret: Callable[[], str] = field(repr=False)


@dataclass(frozen=True)
class LegacyWebhook:
    url: str | None
    has_secret: bool
    masked_secret: str | None


@dataclass(frozen=True)
class Endpoint:
    """A new-generation webhook endpoint (its secret only when just created or regenerated)."""

    id: str
    url: str
    events: tuple[str, ...]
    is_active: bool
    secret: str | None = field(default=None, repr=False)
    updated_at: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib would copy X-API-KEY and X-API-SECRET to wherever it points. Declined before
    urllib parses the Location (a broken one raised its ValueError out of the call): the default error handler
    then raises the 3xx as an HTTPError."""

    def http_error_302(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: http.client.HTTPMessage
    ) -> None:
        return None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_OPENER = urllib.request.build_opener(_NoRedirect)


PAGES = 10_000
"""The most pages a listing is read to (25 items each in the sandbox: 250,000 deliveries); past it, strictly,
an error rather than a listing said whole."""


class MytpeApi:
    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.5,
        allow_http: bool = False,
    ) -> None:
        scheme = urlsplit(base_url).scheme
        if scheme != "https" and not (scheme == "http" and allow_http):
            raise MytpeApiError(f"{base_url}: MyTPE's API is called over https:// only (--allow-http for a sandbox)")
        self.base_url = base_url.rstrip("/")
        self._credentials = credentials
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, blind_retry: bool = True
    ) -> Any:
        """The decoded JSON answer (None for an empty one). Raises MytpeApiError.

        With `blind_retry=False` (a call whose answer holds a one-time secret), a failure after the
        request may have reached MyTPE is not retried: it raises OutcomeUnknown at once.
        """
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                if not blind_retry:
                    return await finished(self._exchange(method, path, body))
                return await self._exchange(method, path, body)
            except MytpeApiError as exc:
                if blind_retry or not 300 <= (exc.http_status or 0) < 400:
                    raise
                # A redirect after the call reached MyTPE, or a gateway in front of it (a 303 after a POST it
                # applied): whether it acted is not known, as after a timeout.
                raise OutcomeUnknown(str(exc), status=exc.http_status) from None
            except Retriable as exc:
                if exc.maybe_applied and not blind_retry:
                    raise OutcomeUnknown(f"{method} {path}: {exc}", status=exc.status) from None
                if attempt == self._attempts:
                    raise MytpeApiError(f"{method} {path}: {exc} ({attempt} attempts)", status=exc.status) from None
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
            delay *= 2
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """`_once` in a thread of its own, bounded whole at twice the timeout: the timeout bounds each wait on the
        socket, so a status line, headers or chunks trickling in would hold the call for as long as they trickle.
        Past the bound, no answer (the thread's is dropped)."""
        try:  # asyncio.timeout, not wait_for: in 3.11 wait_for drops a cancellation landing as the call ends
            async with asyncio.timeout(2 * self._timeout):
                return await in_thread(self._once, method, path, body)
        except TimeoutError:
            raise Retriable(f"no whole answer within {2 * self._timeout:g}s") from None

    def _credential_headers(self) -> dict[str, str]:
        """The credentials as headers; MytpeApiError naming which is unusable, never quoting it."""
        headers = {}
        for header, name, read in (
            ("X-API-KEY", "key", self._credentials.key),
            ("X-API-SECRET", "secret", self._credentials.secret),
        ):
            try:
                value = read()
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise MytpeApiError(f"cannot read the MyTPE API {name}: {reason}") from None
            except UnicodeError:
                raise MytpeApiError(f"the MyTPE API {name} is not UTF-8 text") from None
            if not value or not all("!" <= c <= "~" for c in value):
                raise MytpeApiError(
                    f"the MyTPE API {name} is empty or holds a space, a line break or a non-ASCII character "
                    "(one line of visible ASCII expected)"
                )
            headers[header] = value
        return headers

    def _once(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)  # noqa: S310 - scheme checked
        request.add_header("Accept", "application/json")
        request.add_header("Content-Type", "application/json")
        credentials = self._credential_headers()
        for name, value in credentials.items():
            request.add_header(name, value)
        try:
            with _OPENER.open(request, timeout=self._timeout) as response:
                raw, status = read_answer(response), response.status
        except urllib.error.HTTPError as exc:
            raise refused(method, path, exc, hide=credentials.values()) from None
        except http.client.InvalidURL as exc:  # never sent: base_url's port, say
            raise MytpeApiError(f"{method} {path}: not a URL to call ({exc})") from None
        except http.client.HTTPException as exc:  # an answer cut short or unreadable: MyTPE may have acted
            raise Retriable(f"an answer that cannot be read ({type(exc).__name__})") from None
        except OSError as exc:  # no answer: a timeout, a connection lost or refused, TLS failing while it is read
            raise no_answer(method, path, exc) from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # a 2xx (any other status raised above): MyTPE acted
            raise AppliedUnread(f"{method} {path}: the answer is not JSON", status=status) from None

    # Legacy generation: one webhook per MyTPE Pay instance.

    def _instance(self, instance: str) -> str:
        return f"/api/v2/mytpe-pay/{quote(instance, safe='')}/webhook"

    async def legacy_get(self, instance: str) -> LegacyWebhook:
        data = _data(await self.call("GET", self._instance(instance)))
        url, masked = data.get("webhook_url"), data.get("webhook_secret")  # a text each, or nothing to compare
        texts = (url if isinstance(url, str) else None, masked if isinstance(masked, str) else None)
        return LegacyWebhook(texts[0], bool(data.get("has_secret")), texts[1])

    async def legacy_set_url(self, instance: str, url: str) -> str | None:
        """Point the instance's webhook at `url`; the full secret when MyTPE made one (the first call)."""
        answer = await applied(self.call("PUT", self._instance(instance), {"webhook_url": url}, blind_retry=False))
        if answer is None:  # 2xx, nothing readable: the URL is set; a secret made with it is lost
            raise MytpeApiError(f"PUT {self._instance(instance)}: {_UNREAD}; run `webhook register` again")
        return full_secret(_data(answer).get("webhook_secret"))

    async def legacy_regenerate(self, instance: str) -> str:
        path = self._instance(instance) + "/regenerate-secret"
        return regenerated(await applied(self.call("POST", path, blind_retry=False)), "webhook_secret")

    async def legacy_remove(self, instance: str) -> None:
        await self.call("PUT", self._instance(instance), {"webhook_url": None})

    # New generation: any number of endpoints.

    async def endpoints(self, *, strict: bool = False) -> list[Endpoint]:
        """Every endpoint MyTPE lists. `strict` (a decision rests on what is absent): a page without its `data` list,
        or, holding items, with no way to tell whether more follow (`_page`), another page than the one asked for,
        an endpoint listed twice, or more pages than read, is an error rather than the end of the listing."""
        return [_endpoint(item) for item in await self._listing("/webhooks", "an endpoint", strict=strict)]

    async def _listing(self, path: str, what: str, *, strict: bool, growing: bool = False) -> list[Any]:
        """Every item of the listing at `path`, each once (its last copy), page after page (`endpoints` says what
        `strict` refuses; leniently, an empty page or one of nothing new ends it; strictly, an empty page that
        says more follow does not). `growing` (a listing MyTPE adds to while it is read, newest first, pushing
        an item onto the next page): an item listed again is taken once, its later copy, and only a page of
        nothing new is an error (`?page=` dropped on the way); an answer with `data` alone is whole. At most PAGES
        pages."""
        found: dict[str, Any] = {}
        for page in range(1, PAGES + 1):
            items, more = _page(await self.call("GET", f"{path}?page={page}"), page, strict=strict, paged=not growing)
            listed = [_id(item, what, page) if strict else _key(item) for item in items]
            new = {ident for ident in listed if ident not in found}
            if strict and len(new) < len(items) and not (growing and new):  # `?page=` dropped on the way
                raise _unread(page, f"{what} listed twice")
            if items and not new:  # leniently: the same page again, read as the end
                return list(found.values())
            found.update(zip(listed, items, strict=True))  # a later copy is the newer one (its status)
            if not more or (not items and not strict):
                return list(found.values())
        if strict:
            raise _unread(PAGES, f"more than {PAGES} pages")
        return list(found.values())

    async def endpoint(self, webhook_id: str) -> Endpoint:
        return _endpoint(_data(await self.call("GET", f"/webhooks/{quote(webhook_id, safe='')}")))

    async def create_endpoint(self, url: str, events: list[str], description: str | None = None) -> Endpoint:
        body = {"url": url, "events": events, "description": description}
        return _made(await applied(self.call("POST", "/webhooks", body, blind_retry=False)))

    async def update_endpoint(self, webhook_id: str, **fields: Any) -> None:
        """PATCH the endpoint's `fields` (url, is_active, events): setting them twice is setting them once. Its
        answer is not read (a 204, or another shape): `endpoint` reads what MyTPE holds."""
        with contextlib.suppress(AppliedUnread):  # a 2xx: applied, whatever its answer says
            await self.call("PATCH", f"/webhooks/{quote(webhook_id, safe='')}", fields)

    async def regenerate_endpoint(self, webhook_id: str) -> str:
        path = f"/webhooks/{quote(webhook_id, safe='')}/regenerate-secret"
        return regenerated(await applied(self.call("POST", path, blind_retry=False)), "secret")

    async def delete_endpoint(self, webhook_id: str) -> None:
        await self.call("DELETE", f"/webhooks/{quote(webhook_id, safe='')}")

    async def deliveries(self, webhook_id: str) -> list[dict[str, Any]]:
        """Every delivery MyTPE lists for the endpoint, read strictly (`endpoints`): `reconcile` redelivers what is
        listed failed, so a page it could not read would be payments never asked for; each has its id. MyTPE adds
        deliveries while they are read (`_listing`'s `growing`). MyTPE documents no order, so the whole
        listing is read, whatever `reconcile --since` asks for."""
        path = f"/webhooks/{quote(webhook_id, safe='')}/deliveries"
        return await self._listing(path, "a delivery", strict=True, growing=True)

    async def redeliver(self, webhook_id: str, delivery_id: str) -> None:
        hook, delivery = quote(webhook_id, safe=""), quote(delivery_id, safe="")
        await self.call("POST", f"/webhooks/{hook}/deliveries/{delivery}/redeliver")


def _page(answer: Any, page: int, *, strict: bool = False, paged: bool = True) -> tuple[list[Any], bool]:
    """A list answer's items, and whether more pages follow: its last page (from `meta` or beside `data`), else a
    link to the next page (`links.next`, `next_page_url`: a simple paginator), else a full page (`per_page`
    items). Leniently, an answer of another shape (null included) reads as no more pages rather than a
    TypeError. `strict`: no `data` list, another page than the one asked for, or, holding items, no way to tell
    whether more follow, is an error; unless not `paged` and the answer holds `data` alone (beside `success` and
    `message`): then it is whole. Any other member (`meta`, `links`, a cursor) may be paging this does not read."""
    answer = answer if isinstance(answer, dict) else {}
    items, meta = answer.get("data"), answer.get("meta")
    paging = meta if isinstance(meta, dict) else answer
    found = items if isinstance(items, list) else []
    more = _more(answer, paging, page, len(found))
    if strict:
        current = paging.get("current_page", page)
        unpaged = not paged and set(answer) <= {"data", "success", "message"}
        if not isinstance(items, list) or current != page or (found and more is None and not unpaged):
            raise _unread(page, "no `data` list, no last page, or another page than the one asked for")
    return found, bool(more)


def _more(answer: dict[str, Any], paging: dict[str, Any], page: int, count: int) -> bool | None:
    """Whether a page after `page` holds more; None when the answer does not say."""
    last = paging.get("last_page")
    if isinstance(last, int) and not isinstance(last, bool):
        return page < last
    links = answer.get("links")
    for holder, key in ((links, "next"), (paging, "next_page_url"), (answer, "next_page_url")):
        if isinstance(holder, dict) and key in holder:
            return bool(holder[key])
    size = paging.get("per_page")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return count >= size
    return None


def _ident(item: Any) -> str | None:
    """The id of an item MyTPE answered: a text or a whole number, as MyTPE may write either; None without one."""
    ident = item.get("id") if isinstance(item, dict) else None
    return None if isinstance(ident, bool) or not isinstance(ident, str | int) else str(ident)


def _id(item: Any, what: str, page: int) -> str:
    """The id of a listed item, or an error: a listing read strictly tells its items apart by it."""
    ident = _ident(item)
    if ident is None:
        raise _unread(page, f"{what} without an id")
    return ident


def _key(item: Any) -> str:
    """An item's id to tell pages apart, leniently: its id, or the whole item's text for one without an id."""
    ident = _ident(item)
    return repr(item) if ident is None else ident


def _unread(page: int, why: str) -> MytpeApiError:
    return MytpeApiError(f"MyTPE's listing (page {page}) cannot be read as a whole: {why}")


_UNREAD = "MyTPE answered 2xx with nothing readable: the URL is set, and a secret made with it (the first call) lost"


def _made(answer: Any) -> Endpoint:
    """The endpoint a POST /webhooks answered 2xx made (None: an answer that could not be read)."""
    made = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(made, dict) or _ident(made) is None:  # made, most likely: its secret cannot be tied to it
        raise MytpeApiError(
            "POST /webhooks: MyTPE answered 2xx without the endpoint's id, so its secret is not kept; run"
            " `webhook register` again: it adopts the endpoint MyTPE lists for the URL and makes its secret again"
        )
    return _endpoint(made)


def _data(answer: Any) -> dict[str, Any]:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        raise MytpeApiError("MyTPE's answer has no `data` object")
    return data


def _endpoint(item: Any) -> Endpoint:
    ident = _ident(item)  # a uuid in the docs; a whole number read too
    if ident is None:
        raise MytpeApiError("MyTPE's answer holds a webhook without an id")
    events = item.get("events")
    events = events if isinstance(events, list) else []  # another shape: read as none, not a TypeError
    return Endpoint(
        id=ident,
        url=str(item.get("url") or ""),
        events=tuple(str(e) for e in events),
        is_active=bool(item.get("is_active", True)),
        secret=full_secret(item.get("secret")),
        updated_at=str(item["updated_at"]) if item.get("updated_at") is not None else None,
    )
