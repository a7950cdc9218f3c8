"""MyTPE's webhook configuration API, both generations, as the relay's commands and drift check call it.

Legacy ("v2"), per MyTPE Pay instance, headers X-API-KEY and X-API-SECRET:
    GET  /api/v2/mytpe-pay/{instance}/webhook                    -> url, has_secret, the secret masked
    PUT  /api/v2/mytpe-pay/{instance}/webhook {"webhook_url": …}  -> the full secret on the first call
    POST /api/v2/mytpe-pay/{instance}/webhook/regenerate-secret   -> a new secret; the old one is dead
    PUT  … {"webhook_url": null}                                   -> no more deliveries
New generation (`/api/ext`), per endpoint: /webhooks, /webhooks/{id}/regenerate-secret,
/webhooks/{id}/deliveries and …/deliveries/{delivery}/redeliver.

Calls time out, are retried with backoff on 5xx, 429, timeouts and refused connections, and fail with
one line for everything else (401, 403, 404, 422 named). The calls whose answer holds a secret MyTPE
shows once (the first legacy PUT, POST /webhooks, both regenerate-secret) are never retried blindly:
after a failure that may have reached MyTPE (a timeout, a 5xx, a connection lost) they raise
OutcomeUnknown, and `relay.mytpe.oneshot` finds out what is true before acting again. Only a refused
connection, an unknown host or a 429 (nothing was done) is retried for them. A redirect (3xx) is never
followed, since the credentials would go with it to wherever it points: it fails with one line naming
its target's origin.
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
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from relay.errors import RelayError
from relay.mytpe.threads import finished, in_thread

GENERATIONS = ("legacy", "ext")
_EXPLAINED = {
    401: "the API key or secret is wrong",
    403: "the API key may not manage this webhook",
    404: "no such instance or webhook",
    422: "MyTPE refused the request",
}


class MytpeApiError(RelayError):
    """A call MyTPE answered with an error, or never answered. One line, no credential in it."""

    status_code = 502

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__("mytpe_api_error", message)
        self.http_status = status

    def __str__(self) -> str:
        return self.detail


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
                    return await finished(in_thread(self._once, method, path, body))
                return await in_thread(self._once, method, path, body)
            except _Retriable as exc:
                if exc.maybe_applied and not blind_retry:
                    raise OutcomeUnknown(f"{method} {path}: {exc}", status=exc.status) from None
                if attempt == self._attempts:
                    raise MytpeApiError(f"{method} {path}: {exc} ({attempt} attempts)", status=exc.status) from None
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
            delay *= 2
        raise AssertionError("unreachable")

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
        for name, value in self._credential_headers().items():
            request.add_header(name, value)
        try:
            with _OPENER.open(request, timeout=self._timeout) as response:
                raw = _answer(response, time.monotonic() + self._timeout)
        except urllib.error.HTTPError as exc:
            raise _refused(method, path, exc) from None
        except http.client.InvalidURL as exc:  # never sent: base_url's port, say
            raise MytpeApiError(f"{method} {path}: not a URL to call ({exc})") from None
        except http.client.HTTPException as exc:  # an answer cut short or unreadable: MyTPE may have acted
            raise _Retriable(f"an answer that cannot be read ({type(exc).__name__})") from None
        except OSError as exc:  # no answer: a timeout, a connection lost or refused, TLS failing while it is read
            raise _no_answer(method, path, exc) from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise MytpeApiError(f"{method} {path}: the answer is not JSON") from None

    # Legacy generation: one webhook per MyTPE Pay instance.

    def _instance(self, instance: str) -> str:
        return f"/api/v2/mytpe-pay/{quote(instance, safe='')}/webhook"

    async def legacy_get(self, instance: str) -> LegacyWebhook:
        data = _data(await self.call("GET", self._instance(instance)))
        return LegacyWebhook(data.get("webhook_url"), bool(data.get("has_secret")), data.get("webhook_secret"))

    async def legacy_set_url(self, instance: str, url: str) -> str | None:
        """Point the instance's webhook at `url`; the full secret when MyTPE made one (the first call)."""
        data = _data(await self.call("PUT", self._instance(instance), {"webhook_url": url}, blind_retry=False))
        return _full_secret(data.get("webhook_secret"))

    async def legacy_regenerate(self, instance: str) -> str:
        answer = await self.call("POST", self._instance(instance) + "/regenerate-secret", blind_retry=False)
        return _regenerated(answer, "webhook_secret")

    async def legacy_remove(self, instance: str) -> None:
        await self.call("PUT", self._instance(instance), {"webhook_url": None})

    # New generation: any number of endpoints.

    async def endpoints(self) -> list[Endpoint]:
        found: list[Endpoint] = []
        for page in range(1, 1000):  # bounded
            items, last = _page(await self.call("GET", f"/webhooks?page={page}"), page)
            found.extend(_endpoint(item) for item in items)
            if not items or page >= last:
                return found
        return found

    async def endpoint(self, webhook_id: str) -> Endpoint:
        return _endpoint(_data(await self.call("GET", f"/webhooks/{quote(webhook_id, safe='')}")))

    async def create_endpoint(self, url: str, events: list[str], description: str | None = None) -> Endpoint:
        body = {"url": url, "events": events, "description": description}
        return _endpoint(_data(await self.call("POST", "/webhooks", body, blind_retry=False)))

    async def regenerate_endpoint(self, webhook_id: str) -> str:
        path = f"/webhooks/{quote(webhook_id, safe='')}/regenerate-secret"
        return _regenerated(await self.call("POST", path, blind_retry=False), "secret")

    async def delete_endpoint(self, webhook_id: str) -> None:
        await self.call("DELETE", f"/webhooks/{quote(webhook_id, safe='')}")

    async def deliveries(self, webhook_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in range(1, 1000):  # bounded
            answer = await self.call("GET", f"/webhooks/{quote(webhook_id, safe='')}/deliveries?page={page}")
            items, last = _page(answer, page)
            found.extend(i for i in items if isinstance(i, dict))
            if not items or page >= last:
                return found
        return found

    async def redeliver(self, webhook_id: str, delivery_id: str) -> None:
        hook, delivery = quote(webhook_id, safe=""), quote(delivery_id, safe="")
        await self.call("POST", f"/webhooks/{hook}/deliveries/{delivery}/redeliver")


class OutcomeUnknown(MytpeApiError):
    """A call that changes something had no answer after it may have reached MyTPE (a timeout, a 5xx,
    a connection lost): MyTPE may have made the change, may make it later, or not at all."""


class _Retriable(Exception):
    def __init__(self, message: str, status: int | None = None, *, maybe_applied: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.maybe_applied = maybe_applied


MAX_ANSWER_BYTES = 1 << 20
"""An answer of MyTPE's larger than this is not read to its end (the drift check calls every few minutes)."""


def _answer(response: http.client.HTTPResponse, deadline: float) -> bytes:
    """The answer's body, within `deadline` (monotonic: the timeout bounds each read, not a body that trickles
    in) and MAX_ANSWER_BYTES. Raises TimeoutError, or _Retriable for one too large (MyTPE may have acted)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(65536):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _Retriable(f"an answer larger than {MAX_ANSWER_BYTES} bytes, not read")
        if time.monotonic() > deadline:
            raise TimeoutError("the answer did not arrive in time")
        chunks.append(chunk)
    if response.length:  # read1 ends at the connection's end without raising as read does: cut short
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return b"".join(chunks)


def _no_answer(method: str, path: str, exc: OSError) -> Exception:
    """A call that got no answer, as `_once` raises it: retriable, and an outcome unknown unless it never left."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ssl.SSLCertVerificationError):  # at the handshake, so never sent: no retry makes it trusted
        return MytpeApiError(f"{method} {path}: MyTPE's TLS certificate is not trusted ({reason.verify_message})")
    unsent = isinstance(reason, (ConnectionRefusedError, socket.gaierror))  # never reached MyTPE
    message = f"no answer ({type(reason).__name__}: {reason})" if str(reason) else "no answer (timed out)"
    return _Retriable(message, maybe_applied=not unsent)


def masked_matches(masked: str | None, secret: str) -> bool:
    """Whether MyTPE's masked secret (`****…sec_a1b2c3`) can be `secret`: its visible tail ends it."""
    return masked is not None and mask_readable(masked) and secret.endswith(masked.lstrip("*"))


def mask_readable(masked: str | None) -> bool:
    """Whether `masked` has the shape MyTPE documents (asterisks, then a visible tail), so that a secret it does
    not match is another secret. Another shape (`whsec_****a1b2`, all asterisks) says nothing either way."""
    visible = (masked or "").lstrip("*")
    return bool(visible) and len(visible) < len(masked or "") and "*" not in visible


def _refused(method: str, path: str, exc: urllib.error.HTTPError) -> Exception:
    """An answer that is not a 2xx, as `_once` raises it; its body read (a 4xx's explains it, if it can) and closed."""
    try:
        raw = exc.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    finally:
        exc.close()
    if 300 <= exc.code < 400:
        return MytpeApiError(f"{method} {path}: {_redirect(exc)}", status=exc.code)
    if exc.code >= 500 or exc.code == 429:  # a 429 is refused before anything is done
        return _Retriable(f"MyTPE answered {exc.code}", exc.code, maybe_applied=exc.code != 429)
    return MytpeApiError(f"{method} {path}: {_explain(exc.code, raw)}", status=exc.code)


def _redirect(exc: urllib.error.HTTPError) -> str:
    where = ""
    with contextlib.suppress(ValueError):  # not a URL (a broken IPv6 host): said without its target
        target, port = urlsplit(exc.headers.get("Location") or ""), ""
        host = target.hostname or ""  # the origin only: a Location's path or userinfo may hold anything
        with contextlib.suppress(ValueError):  # not a port (out of range, not a number): the host alone
            port = f":{target.port}" if target.port else ""
        where = f" to {_one_line(target.scheme)}://{_one_line(host)}{port}" if host else ""
    return (
        f"MyTPE answered {exc.code}, a redirect{where}: not followed (the API credentials would go with it); "
        "check base_url"
    )


def _explain(status: int, raw: bytes) -> str:
    message = ""
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        message = answer["message"][:200]
        errors = answer.get("errors")
        if isinstance(errors, dict):
            shown = list(errors.items())[:5]  # a few fields: one line, however many MyTPE names
            fields = ", ".join(f"{str(name)[:40]}: {'; '.join(map(str, v))[:120]}" for name, v in shown)
            message = f"{message} ({fields})" if fields else message
        message = _one_line(message)
    known = _EXPLAINED.get(status, "refused")
    return f"MyTPE answered {status}: {known}" + (f": {message}" if message else "")


def _page(answer: Any, page: int) -> tuple[list[Any], int]:
    """A list answer's items and its last page (this one when it does not say: a `data` or `meta` of another
    shape, null included, reads as no more pages rather than a TypeError)."""
    items = answer.get("data") if isinstance(answer, dict) else None
    meta = answer.get("meta") if isinstance(answer, dict) else None
    last = meta.get("last_page") if isinstance(meta, dict) else None
    return (items if isinstance(items, list) else []), (last if isinstance(last, int) else page)


def _one_line(text: str) -> str:
    """`text` with its line breaks and other control characters as spaces: an error line stays one line."""
    return "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def _data(answer: Any) -> dict[str, Any]:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        raise MytpeApiError("MyTPE's answer has no `data` object")
    return data


def _regenerated(answer: Any, field: str) -> str:
    """The new secret of a regenerate-secret MyTPE answered 2xx: it did regenerate, so the old one is dead even
    when the answer holds none where its docs put it (another shape, a masked value), which is said so."""
    data = answer.get("data") if isinstance(answer, dict) else None
    secret = _full_secret(data.get(field)) if isinstance(data, dict) else None
    if secret is None:
        raise MytpeApiError(
            f"regenerate-secret: MyTPE answered 2xx, so the old secret no longer verifies, but the answer holds no"
            f" whole secret at data.{field}: take the new one from MyTPE's dashboard into the sources file, or run"
            " rotate again"
        )
    return secret


def _full_secret(value: Any) -> str | None:
    return value if isinstance(value, str) and value.startswith("whsec_") and "*" not in value else None


def _endpoint(item: Any) -> Endpoint:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        raise MytpeApiError("MyTPE's answer holds a webhook without an id")
    events = item.get("events") or []
    return Endpoint(
        id=item["id"],
        url=str(item.get("url") or ""),
        events=tuple(str(e) for e in events),
        is_active=bool(item.get("is_active", True)),
        secret=_full_secret(item.get("secret")),
        updated_at=str(item["updated_at"]) if item.get("updated_at") is not None else None,
    )
