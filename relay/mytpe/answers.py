"""How a call to MyTPE's API is read, and how one that fails is told: its answer within bounds, its errors
one line each, with no credential in them (the Location of a redirect: its origin only). For `relay.mytpe.api`."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import unicodedata
import urllib.error
from collections.abc import Awaitable, Iterable
from typing import Any
from urllib.parse import urlsplit

from relay.errors import RelayError

EXPLAINED = {
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

    @property
    def maybe_applied(self) -> bool:
        """Whether MyTPE may have acted: a redirect (a gateway's 303 after a POST it applied) may say it did."""
        return 300 <= (self.http_status or 0) < 400


class OutcomeUnknown(MytpeApiError):
    """A call that changes something had no answer after it may have reached MyTPE (a timeout, a 5xx,
    a connection lost): MyTPE may have made the change, may make it later, or not at all."""

    @property
    def maybe_applied(self) -> bool:
        return True


class AppliedUnread(MytpeApiError):
    """MyTPE answered 2xx, so it acted, with an answer that cannot be read (not JSON: a gateway's page, say)."""

    @property
    def maybe_applied(self) -> bool:
        return True


class Retriable(Exception):
    def __init__(self, message: str, status: int | None = None, *, maybe_applied: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.maybe_applied = maybe_applied


MAX_ANSWER_BYTES = 1 << 20
"""An answer of MyTPE's larger than this is not read to its end (the drift check calls every few minutes)."""


def read_answer(response: http.client.HTTPResponse) -> bytes:
    """The answer's body, at most MAX_ANSWER_BYTES of it (its time is the call's bound: `MytpeApi._exchange`).
    Raises Retriable for one too large (MyTPE may have acted)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(65536):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise Retriable(f"an answer larger than {MAX_ANSWER_BYTES} bytes, not read")
        chunks.append(chunk)
    if response.length:  # read1 ends at the connection's end without raising as read does: cut short
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return b"".join(chunks)


def no_answer(method: str, path: str, exc: OSError) -> Exception:
    """A call that got no answer, as the client's `_once` raises it: retriable, and an outcome unknown unless
    it never left."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ssl.SSLCertVerificationError):  # at the handshake, so never sent: no retry makes it trusted
        return MytpeApiError(f"{method} {path}: MyTPE's TLS certificate is not trusted ({reason.verify_message})")
    unsent = isinstance(reason, (ConnectionRefusedError, socket.gaierror))  # never reached MyTPE
    message = f"no answer ({type(reason).__name__}: {reason})" if str(reason) else "no answer (timed out)"
    return Retriable(message, maybe_applied=not unsent)


def refused(method: str, path: str, exc: urllib.error.HTTPError, *, hide: Iterable[str] = ()) -> Exception:
    """An answer that is not a 2xx, as the client's `_once` raises it; its body read (a 4xx's explains it, if
    it can, with any of `hide`, the API credentials, shown as [hidden] should MyTPE echo one) and closed."""
    try:
        raw = exc.read(65536)  # an explanation is short; its time is the call's bound
    except (OSError, http.client.HTTPException):
        raw = b""
    finally:
        exc.close()
    if 300 <= exc.code < 400:
        return MytpeApiError(f"{method} {path}: {_redirect(exc)}", status=exc.code)
    if exc.code >= 500 or exc.code == 429:  # a 429 is refused before anything is done
        return Retriable(f"MyTPE answered {exc.code}", exc.code, maybe_applied=exc.code != 429)
    return MytpeApiError(f"{method} {path}: {explain(exc.code, raw, hide=tuple(hide))}", status=exc.code)


def _redirect(exc: urllib.error.HTTPError) -> str:
    where = ""
    with contextlib.suppress(ValueError):  # not a URL (a broken IPv6 host): said without its target
        target, port = urlsplit(exc.headers.get("Location") or ""), ""
        host = target.hostname or ""  # the origin only: a Location's path or userinfo may hold anything
        with contextlib.suppress(ValueError):  # not a port (out of range, not a number): the host alone
            port = f":{target.port}" if target.port else ""
        where = f" to {one_line(target.scheme)}://{one_line(host)}{port}" if host else ""
    return (
        f"MyTPE answered {exc.code}, a redirect{where}: not followed (the API credentials would go with it); "
        "check base_url"
    )


def explain(status: int, raw: bytes, *, hide: tuple[str, ...] = ()) -> str:
    """MyTPE's refusal as one line: its message and a few fields, each cut short, with any of `hide` (the
    credentials sent) shown as [hidden], the cut included: never a credential, nor its first characters."""
    message = ""
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        message = _cut(answer["message"], 200, hide)
        errors = answer.get("errors")
        if isinstance(errors, dict):
            shown = list(errors.items())[:5]  # a few fields: one line, however many MyTPE names
            fields = ", ".join(f"{_cut(str(name), 40, hide)}: {_cut(_listed(v), 120, hide)}" for name, v in shown)
            message = f"{message} ({fields})" if fields else message
        message = one_line(message)
    known = EXPLAINED.get(status, "refused")
    return f"MyTPE answered {status}: {known}" + (f": {message}" if message else "")


def _cut(text: str, limit: int, hide: tuple[str, ...]) -> str:
    """`text` with each of `hide` as [hidden], cut at `limit`; a cut ending in the first characters of one of them
    (4 or more) ends in [hidden] instead."""
    for secret in hide:
        text = text.replace(secret, "[hidden]")
    text = text[:limit]
    for secret in hide:
        start = next((len(text) - n for n in range(len(secret) - 1, 3, -1) if text.endswith(secret[:n])), None)
        if start is not None:
            text = text[:start] + "[hidden]"
    return text


def one_line(text: str) -> str:
    """`text` with its line breaks (Unicode's too: U+2028, U+0085) and other control characters as spaces: an
    error line stays one line."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)


def _listed(value: object) -> str:
    """A field's errors as MyTPE lists them (a list of texts); anything else, as it is."""
    return "; ".join(map(str, value)) if isinstance(value, list) else str(value)


async def applied(call: Awaitable[Any]) -> Any:
    """`call`'s answer (one holding a one-time secret); answered 2xx but unreadable, None: MyTPE acted all the same,
    which `regenerated` then says (the old secret is dead)."""
    try:
        return await call
    except AppliedUnread:
        return None


def regenerated(answer: Any, field: str) -> str:
    """The new secret of a regenerate-secret MyTPE answered 2xx: it did regenerate, so the old one is dead even
    when the answer holds none where its docs put it (another shape, a masked value, a page that is not JSON),
    which is said so."""
    data = answer.get("data") if isinstance(answer, dict) else None
    secret = full_secret(data.get(field)) if isinstance(data, dict) else None
    if secret is None:
        raise MytpeApiError(
            f"regenerate-secret: MyTPE answered 2xx, so the old secret no longer verifies, but the answer holds no"
            f" whole secret at data.{field}: take the new one from MyTPE's dashboard into the sources file, or run"
            " rotate again"
        )
    return secret


def full_secret(value: Any) -> str | None:
    """`value` when it is a whole secret (`whsec_`, nothing masked)."""
    return value if isinstance(value, str) and value.startswith("whsec_") and "*" not in value else None


def same_url(one: str | None, other: str) -> bool:
    """Whether MyTPE's URL `one` calls the relay where `other` does: the same `url_place` (the path and query
    exactly: a trailing slash is another path, which the relay does not serve). No URL (None) is none."""
    return one is not None and url_place(one) == url_place(other)


def url_place(url: str) -> tuple[str, str, int | None, str, str]:
    """Where `url` points: its scheme and host in lower case, its port (the scheme's default when not written),
    path and query; a text that is not a URL, or whose port is not one, as written."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme.lower())
    except ValueError:
        return url, "", None, "", ""
    return parts.scheme.lower(), (parts.hostname or "").lower(), port, parts.path, parts.query
