"""MyTPE API client's pure parts: the masked-secret match, one-line errors without secrets, the scheme."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace

import pytest

import relay.mytpe.api as api_module
from relay.metrics import Metrics
from relay.mytpe.answers import AppliedUnread, MytpeApiError, OutcomeUnknown, Retriable, explain
from relay.mytpe.api import Credentials, Endpoint, LegacyWebhook, MytpeApi, _endpoint, _page
from relay.mytpe.masks import mask_readable, masked_matches
from relay.mytpe.oneshot import Pace, create_endpoint
from relay.mytpe.sandbox import mask, new_secret
from relay.mytpe.threads import finished
from relay.ops.secret_install import agrees
from relay.settings import Secret
from relay.sources.config import MytpeApiConfig, Source
from relay.sources.remote import DriftWatch, check

SECRET = "whsec_" + "ab12" * 12


def test_the_documented_mask_matches_its_secret_only() -> None:
    assert masked_matches("************************************sec_a1b2c3", "whsec_a1b2c3")
    assert masked_matches(mask(SECRET), SECRET)
    assert not masked_matches(mask(SECRET), "whsec_" + "cd34" * 12)
    assert not masked_matches(None, SECRET) and not masked_matches("", SECRET)
    assert not masked_matches(SECRET, SECRET)  # an unmasked value is not a mask


def test_the_documented_mask_read_as_the_start_of_a_whole_secret_matches_it_too() -> None:
    """Review finding: the spec's example mask (36 asterisks, then `sec_a1b2c3`) shows characters 2 to 11 of a
    secret of the spec's length, as much as the tail of a short one: read only as a tail, a MyTPE that shows the
    start would mismatch every secret (drift alerting for good, `rotate` regenerating three times). Either
    reading matches; a visible part under 6 characters of randomness still has to be the tail."""
    vector = "whsec_a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4"  # the spec's test vector
    example = "************************************sec_a1b2c3"
    assert masked_matches(example, vector)
    assert not masked_matches(example, "whsec_" + "cd34" * 12)
    assert masked_matches("*" * 42 + vector[:12], vector)  # the start: `whsec_` and 6 characters after it
    assert not masked_matches("*" * 44 + vector[:10], vector)  # `whsec_` and 4: not enough
    assert not masked_matches("*" * 50 + "b2c3", vector)  # 4 random characters, not the tail: not enough


@pytest.mark.parametrize("masked", ["whsec_****" + SECRET[-6:], "*" * 54, "**ab12**" + SECRET[-6:], "****"])
async def test_a_mask_of_another_shape_is_unknown_never_another_secret(masked: str) -> None:
    """Review finding: a mask MyTPE might show in another shape than its docs' (asterisks, then a tail) matched
    no secret, which read as proof MyTPE signs with another: `register` regenerated on every run, and `rotate`
    regenerated three times and gave up. Such a mask says nothing either way (None), so nothing is regenerated
    for it; one in the documented shape still tells a secret from another."""
    assert not mask_readable(masked) and not masked_matches(masked, SECRET)
    source = Source("shop", (Secret(SECRET),), mytpe=MytpeApiConfig("legacy", "https://m.example", "i-1"))

    class Api:
        async def legacy_get(self, instance: str) -> LegacyWebhook:
            return LegacyWebhook("https://h.example/webhooks/mytpe/shop", True, masked)

    assert await agrees(Api(), source, SECRET) is None  # type: ignore[arg-type]
    assert await agrees(Api(), source, None) is None  # type: ignore[arg-type]

    class Documented(Api):
        async def legacy_get(self, instance: str) -> LegacyWebhook:
            return LegacyWebhook("https://h.example/webhooks/mytpe/shop", True, mask("whsec_" + "cd34" * 12))

    assert await agrees(Documented(), source, SECRET) is False  # type: ignore[arg-type]
    # Review of this: the drift check (the relay's gauge and alert, `webhook status`) still called it a drift.
    drift = await check(source, Api(), "https://h.example/webhooks/mytpe/shop")  # type: ignore[arg-type]
    assert drift.secret_ok is None and not drift.drifting
    drift = await check(source, Documented(), "https://h.example/webhooks/mytpe/shop")  # type: ignore[arg-type]
    assert drift.secret_ok is False and drift.drifting


@pytest.mark.parametrize(
    ("held", "same"),
    [
        ("HTTPS://H.Example:443/webhooks/mytpe/shop", True),  # MyTPE may keep a URL another way than it was given
        ("https://h.example/webhooks/mytpe/shop/", False),  # another path: the relay serves no trailing slash
        ("https://h.example/webhooks/mytpe/kiosk", False),
        (None, False),
    ],
)
async def test_the_drift_check_compares_places_not_spellings(held: str | None, same: bool) -> None:
    """Review finding: the drift check compared MyTPE's URL with the relay's as text: a MyTPE that lower-cases the
    host or writes the default port would hold the URL drift alert on for good. A trailing slash is still a drift:
    the relay does not serve that path."""
    source = Source("shop", (Secret(SECRET),), mytpe=MytpeApiConfig("legacy", "https://m.example", "i-1"))

    class Api:
        async def legacy_get(self, instance: str) -> LegacyWebhook:
            return LegacyWebhook(held, True, mask(SECRET))

        async def endpoint(self, webhook_id: str) -> Endpoint:
            return Endpoint("w-1", held or "", (), True)

    drift = await check(source, Api(), "https://h.example/webhooks/mytpe/shop")  # type: ignore[arg-type]
    assert drift.url_ok is same and drift.secret_ok is True
    ext = Source("shop", (Secret(SECRET),), mytpe=MytpeApiConfig("ext", "https://m.example", webhook_id="w-1"))
    drift = await check(ext, Api(), "https://h.example/webhooks/mytpe/shop")  # type: ignore[arg-type]
    assert drift.url_ok is same


def test_sandbox_secrets_have_the_documented_shape() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) == 54 and int(secret[6:], 16) >= 0
    assert new_secret() != secret
    assert mask(secret).endswith(secret[-10:]) and set(mask(secret)[:-10]) == {"*"}


@pytest.mark.parametrize(
    ("status", "body", "line"),
    [
        (
            401,
            b'{"message":"Unauthenticated."}',
            "MyTPE answered 401: the API key or secret is wrong: Unauthenticated.",
        ),
        (404, b"not json", "MyTPE answered 404: no such instance or webhook"),
        (
            422,
            b'{"message":"invalid","errors":{"webhook_url":["must be https"]}}',
            "MyTPE answered 422: MyTPE refused the request: invalid (webhook_url: must be https)",
        ),
        (403, b"{}", "MyTPE answered 403: the API key may not manage this webhook"),
        (  # review finding: a message's line breaks, and any number of fields, broke the one line
            422,
            b'{"message":"bad\\nrequest","errors":{"a":["x\\ny"],"b":[1],"c":[],"d":[],"e":[],"f":[],"g":[]}}',
            "MyTPE answered 422: MyTPE refused the request: bad request (a: x y, b: 1, c: , d: , e: )",
        ),
        (422, b"[" * 100_000, "MyTPE answered 422: MyTPE refused the request"),  # nested past the parser
        (  # review of that: fields of another shape than a list, and Unicode's own line breaks
            422,
            b'{"message":"bad\\u2028request\\u0085","errors":{"url":5,"b":null,"c":"text"}}',
            "MyTPE answered 422: MyTPE refused the request: bad request  (url: 5, b: None, c: text)",
        ),
    ],
)
def test_errors_are_one_line(status: int, body: bytes, line: str) -> None:
    assert explain(status, body) == line


def test_plain_http_is_refused_unless_allowed() -> None:
    credentials = Credentials(lambda: "k", lambda: "s")
    with pytest.raises(MytpeApiError, match="https:// only"):
        MytpeApi("http://mytpe.example", credentials)
    assert MytpeApi("http://127.0.0.1:8090", credentials, allow_http=True).base_url == "http://127.0.0.1:8090"
    assert "k" not in repr(credentials) and "s'" not in repr(credentials)


def test_an_endpoint_keeps_its_secret_only_when_it_is_whole() -> None:
    item = {"id": "e-1", "url": "https://h/x", "events": ["transaction.paid"], "is_active": True}
    assert _endpoint({**item, "secret": SECRET}).secret == SECRET
    assert _endpoint({**item, "secret": mask(SECRET)}).secret is None
    with pytest.raises(MytpeApiError):
        _endpoint({"url": "https://h/x"})


async def _ends(after: float, *, answer: str = "", error: Exception | None = None) -> str:
    await asyncio.sleep(after)
    if error is not None:
        raise error
    return answer


@pytest.mark.parametrize("fails", [False, True], ids=["answered", "failed"])
async def test_a_call_cancelled_meanwhile_keeps_its_answer_and_the_cancellation_goes_on(
    fails: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: when the call then failed (an outcome unknown), its error replaced the cancellation:
    `webhook rotate` took it as a failed regenerate, watched MyTPE and regenerated again, after Ctrl-C. It now
    stops, and says that MyTPE may have acted (else nothing would: the command exits 130 on the cancellation)."""
    error = Retriable("no answer (timed out)")  # as `_once` raises it: it may have reached MyTPE
    got: list[str] = []

    async def command() -> None:  # as `webhook rotate` awaits it
        got.append(await finished(_ends(0.1, answer="whsec_once", error=error if fails else None)))
        await asyncio.sleep(5)  # its next wait: the cancellation lands here

    task = asyncio.create_task(command())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert got == ([] if fails else ["whsec_once"])  # the answer first: the command holds the secret
    said = [r.getMessage() for r in caplog.records if "stopped as asked" in r.getMessage()]
    assert said == (
        ["stopped as asked; no answer (timed out), and MyTPE may have acted (`webhook status` shows it)"]
        if fails
        else []
    )


@pytest.mark.parametrize(
    "error",
    [
        AppliedUnread("POST /webhooks/w-1/regenerate-secret: MyTPE answered 200 with no JSON"),
        MytpeApiError("303", status=303),
        OutcomeUnknown("POST /webhooks: no answer (timed out)", status=None),
    ],
    ids=["2xx-unreadable", "redirect", "outcome-unknown"],
)
async def test_a_call_cancelled_meanwhile_says_mytpe_acted_when_it_answered_2xx_or_a_redirect(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: after a cancellation (SIGTERM, Ctrl-C) only a Retriable's end was said. A 2xx that cannot be
    read (MyTPE acted: a secret regenerated, the old one dead) and a redirect (a gateway's 303 after a POST it
    applied) ended in silence, exit 143: nobody learnt that MyTPE now signs with a secret no one holds."""

    async def command() -> None:
        await finished(_ends(0.1, error=error))

    task = asyncio.create_task(command())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    said = [r.getMessage() for r in caplog.records if "stopped as asked" in r.getMessage()]
    assert said == [f"stopped as asked; {error}, and MyTPE may have acted (`webhook status` shows it)"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"data": [1, 2], "meta": {"last_page": 3}}, ([1, 2], True)),
        ({"data": None, "meta": {"last_page": 3}}, ([], True)),
        ({"data": [1], "meta": {"last_page": None}}, ([1], False)),
        ({"data": [1], "meta": None}, ([1], False)),
        ({"data": {"id": "w-1"}}, ([], False)),
        (None, ([], False)),
    ],
    ids=["paged", "data-null", "last-page-null", "meta-null", "data-an-object", "no-answer"],
)
def test_a_list_answer_of_any_shape_reads_as_pages_not_a_type_error(
    answer: object, expected: tuple[list[int], bool]
) -> None:
    """Review finding: `"data": null` or `"last_page": null` in a list answer was a TypeError traceback."""
    assert _page(answer, 2) == expected


async def test_a_cancellation_landing_as_a_call_ends_is_never_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: the call's bound was asyncio.wait_for, which in 3.11 drops a cancellation landing in the
    pass after the call ended. With SIGTERM cancelling once only (relay/ops/interrupt.py), that one stop was lost
    and `rotate` went on to regenerate. The bound is asyncio.timeout now, which passes it on."""
    api = MytpeApi("https://m.example", Credentials(lambda: "k", lambda: "s"), attempts=1)
    task = asyncio.current_task()
    assert task is not None

    async def answered(function: object, *args: object, name: str = "") -> object:
        asyncio.get_running_loop().call_soon(task.cancel)  # the signal's cancellation, a pass after the answer
        return {"data": {}}

    monkeypatch.setattr(api_module, "in_thread", answered)
    with pytest.raises(asyncio.CancelledError):
        await api.call("GET", "/webhooks/w-1")
        await asyncio.sleep(0)  # the command's next wait: the stop lands here
    task.uncancel()


def test_a_mask_that_cannot_be_compared_is_said_once_while_it_lasts(caplog: pytest.LogCaptureFixture) -> None:
    """Review finding: an unreadable mask reads as no drift (the gauge at 0), so if MyTPE changed its mask for
    good the secret's alert would stay silent, with nothing saying the secret is no longer checked."""
    watch = DriftWatch(None, None, None)  # type: ignore[arg-type]  # _unknown reads none of them
    source = Source("shop", (Secret(SECRET),), mytpe=MytpeApiConfig("legacy", "https://m.example", "i-1"))
    for secret_ok in (None, None, True, None, False):
        watch._unknown(source, secret_ok)
    said = [r for r in caplog.records if "cannot be compared" in r.getMessage()]
    assert len(said) == 2  # once, then again once it came back after a compared read
    ext = Source("kiosk", (Secret(SECRET),), mytpe=MytpeApiConfig("ext", "https://m.example", None, "w-1"))
    watch._unknown(ext, None)  # the new generation shows no secret at all: nothing to say
    assert len([r for r in caplog.records if "cannot be compared" in r.getMessage()]) == 2
    watch._unknown(source, None)  # unreadable again, then the source removed from the file, then back
    watch._registry = SimpleNamespace(current=SimpleNamespace(by_path={}))  # type: ignore[assignment]
    watch._settings = SimpleNamespace(public_url="https://h.example")  # type: ignore[assignment]
    watch._metrics = Metrics()
    watch._tasks["shop"] = SimpleNamespace(cancel=lambda: None)  # type: ignore[assignment]
    watch.follow()  # review finding: the name stayed, so the source back with such a mask was never said again
    watch._unknown(source, None)
    assert len([r for r in caplog.records if "cannot be compared" in r.getMessage()]) == 4


@pytest.mark.parametrize(
    "answer",
    [{"data": None, "meta": {"last_page": 3}}, {"data": [1], "meta": None}, {}, None],
    ids=["data-null", "no-last-page", "an-empty-object", "no-answer"],
)
def test_a_listing_that_must_decide_refuses_what_it_cannot_read(answer: object) -> None:
    """Review finding: `unregister` takes a 404 to its DELETE as done when MyTPE's listing lacks the endpoint;
    a listing read leniently (a gateway's `{}`, a page with no `last_page` while the endpoint is on the next)
    said 'already removed' while MyTPE kept delivering. Read strictly, such a listing is an error."""
    with pytest.raises(MytpeApiError, match="cannot be read as a whole"):
        _page(answer, 1, strict=True)
    assert _page({"data": [], "meta": None}, 1, strict=True) == ([], False)  # an empty listing says all it has to
    assert _page({"data": [1], "last_page": 3, "current_page": 2}, 2, strict=True) == ([1], True)  # Laravel's plain
    with pytest.raises(MytpeApiError, match="cannot be read as a whole"):  # another page than the one asked for
        _page({"data": [1], "meta": {"last_page": 2, "current_page": 1}}, 2, strict=True)


async def test_a_listing_whose_pages_repeat_is_refused_when_it_must_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of the above: a gateway or a cache that drops `?page=` answers the first page every time; read
    strictly, an endpoint on the second page was never seen, and `unregister` said 'already removed'."""
    api = MytpeApi("https://mytpe.example/api/ext", Credentials(lambda: "k", lambda: "s"))
    first = {"data": [{"id": "w-1", "url": "https://r.example/w", "events": [], "is_active": True}]}

    async def page_one_always(method: str, path: str, body: object = None, **_: object) -> object:
        return {**first, "meta": {"last_page": 2}}

    monkeypatch.setattr(api, "call", page_one_always)
    assert [e.id for e in await api.endpoints()] == ["w-1"]  # read leniently, as `endpoints` lists them: once
    with pytest.raises(MytpeApiError, match="cannot be read as a whole"):
        await api.endpoints(strict=True)


def _paged(pages: Mapping[int, object]) -> MytpeApi:
    """A client whose GETs answer `pages` by the `?page=` asked for."""
    api = MytpeApi("https://mytpe.example/api/ext", Credentials(lambda: "k", lambda: "s"))

    async def answer(method: str, path: str, body: object = None, **_: object) -> object:
        return pages[int(path.rsplit("?page=", 1)[1])]

    api.call = answer  # type: ignore[method-assign]
    return api


def _failed(ids: range) -> list[dict[str, object]]:
    return [{"id": f"d-{n}", "status": "failed"} for n in ids]


async def test_the_failed_deliveries_reconcile_redelivers_are_read_as_a_whole() -> None:
    """Review finding: `reconcile` redelivers what MyTPE lists as failed; its listing was read leniently, so a page
    without its last page (a paging shape with `meta: {current_page, per_page}` only) ended it at page 1, and the
    command said it had asked for every failed delivery while those on later pages, payments MyTPE had given up
    on, were never asked for. A delivery listed without an id could not be asked for either (a KeyError)."""
    simple = {"current_page": 1, "per_page": 15}  # a full page: the next one is read
    pages: dict[int, object] = {1: {"data": _failed(range(15)), "meta": simple}, 2: {"data": _failed(range(15, 30))}}
    assert len(await _paged(pages).deliveries("w")) == 30
    linked = {
        1: {"data": _failed(range(2)), "links": {"next": "…?page=2"}},
        2: {"data": _failed(range(2, 3)), "links": {"next": None}},
    }
    assert len(await _paged(linked).deliveries("w")) == 3  # a simple paginator's link to the next page
    # Review of the above: a listing MyTPE adds to while reconcile reads it, newest first, pushes an item onto the
    # next page; that was an error, as was a listing without paging at all (the spec says GET /webhooks is paged).
    growing = {
        1: {"data": _failed(range(1, 3)), "meta": {"last_page": 2}},
        2: {"data": _failed(range(2, 4)), "meta": {"last_page": 2}},
    }
    assert [d["id"] for d in await _paged(growing).deliveries("w")] == ["d-1", "d-2", "d-3"]
    assert len(await _paged({1: {"data": _failed(range(40))}}).deliveries("w")) == 40  # no paging: whole
    with pytest.raises(MytpeApiError, match="cannot be read as a whole"):  # a page of no item not listed before
        await _paged(
            {
                1: {"data": _failed(range(3)), "meta": {"per_page": 3}},
                2: {"data": _failed(range(3)), "meta": {"per_page": 3}},
            }
        ).deliveries("w")
    with pytest.raises(MytpeApiError, match="cannot be read as a whole"):  # `?page=` dropped on the way
        await _paged(
            {
                1: {"data": _failed(range(2)), "meta": {"last_page": 2}},
                2: {"data": _failed(range(2)), "meta": {"last_page": 2}},
            }
        ).deliveries("w")
    with pytest.raises(MytpeApiError, match="without an id"):
        await _paged({1: {"data": [{"status": "failed"}], "meta": {"last_page": 1}}}).deliveries("w")
    whole = _paged(
        {1: {"data": _failed(range(2)), "meta": {"last_page": 2}}, 2: {"data": _failed(range(2, 3)), "last_page": 2}}
    )
    assert [d["id"] for d in await whole.deliveries("w")] == ["d-0", "d-1", "d-2"]
    assert await _paged({1: {"data": [], "meta": None}}).deliveries("w") == []  # none failed: all there is to say


async def test_register_after_a_lost_answer_reads_the_endpoints_as_a_whole() -> None:
    """Review finding: after a lost answer to POST /webhooks, `register` looks for the endpoint it may have made
    before making one; read leniently, a listing whose first page lacked its last page hid an endpoint on the
    second, and a second endpoint was made, signing with a secret the source would then not hold for the first."""
    url = "https://relay.example/webhooks/mytpe"
    other = {"id": "w-1", "url": "https://elsewhere.example/", "events": [], "is_active": True}
    api = _paged({1: {"data": [other], "meta": {"current_page": 1}}, 2: {"data": [{**other, "id": "w-2", "url": url}]}})
    with pytest.raises(MytpeApiError, match="cannot be read as a whole"):
        await create_endpoint(api, url, "relay", pace=Pace(settle=0.1, poll=0.01), say=lambda line: None)


async def test_a_listing_paged_in_a_way_not_read_is_not_taken_as_whole() -> None:
    """Review of 0f3589b: a deliveries answer without the paging read here (last_page, a next link, per_page) was
    taken as the whole listing; Fractal's `meta.pagination`, a bare `meta.total` or a cursor are paging too, and
    reconcile said it had asked for every failed delivery after reading the first page. Only `data` alone is."""
    for meta in ({"pagination": {"current_page": 1, "total_pages": 2}}, {"total": 60}):
        with pytest.raises(MytpeApiError, match="cannot be read as a whole"):
            await _paged({1: {"data": _failed(range(25)), "meta": meta}}).deliveries("w")
    with pytest.raises(MytpeApiError, match="cannot be read as a whole"):
        await _paged({1: {"data": _failed(range(25)), "has_more": True}}).deliveries("w")
    whole = {"success": True, "message": "ok", "data": _failed(range(25))}
    assert len(await _paged({1: whole}).deliveries("w")) == 25


async def test_a_listing_that_ignores_its_page_ends_instead_of_running_to_the_bound() -> None:
    """Review of 0f3589b: followed by its next link, a cursor paginator that ignores `?page=` answered its first
    page every time: `webhook endpoints` made 10,000 calls and listed each endpoint 10,000 times. Leniently, a page
    of nothing new ends the listing; strictly, it is an error, and so is a growing one mostly listed before."""
    calls = 0
    first = {
        "data": [{"id": f"w-{n}", "url": "https://r.example/", "events": []} for n in (1, 2)],
        "links": {"next": "?c=x"},
    }

    class Counting(dict[int, object]):
        def __getitem__(self, page: int) -> object:
            nonlocal calls
            calls += 1
            return first

    api = _paged(Counting())
    assert [e.id for e in await api.endpoints()] == ["w-1", "w-2"] and calls == 2
    with pytest.raises(MytpeApiError, match="listed twice"):
        await api.endpoints(strict=True)
    # Review of this: a burst of deliveries between two reads pushed most of a page onto the next; that was an
    # error too. Only a page of nothing new is, and the later copy of a delivery is the one kept (its status).
    burst = {
        1: {"data": _failed(range(1, 5)), "links": {"next": "?page=2"}},
        2: {
            "data": [*_failed(range(2, 4)), {"id": "d-4", "status": "succeeded"}, *_failed(range(5, 6))],
            "links": {"next": "?page=3"},
        },
        3: {"data": _failed(range(0, 1)), "links": {"next": None}},
    }
    read = await _paged(burst).deliveries("w")
    assert sorted(d["id"] for d in read) == ["d-0", "d-1", "d-2", "d-3", "d-4", "d-5"]
    assert [d["status"] for d in read if d["id"] == "d-4"] == ["succeeded"]


async def test_an_empty_page_that_says_more_follow_does_not_end_a_strict_listing() -> None:
    """Review: a strict listing stopped at an empty page even when its last page (or next link) said more
    followed: reconcile asked for nothing and said it was done; register missed an endpoint and made another."""
    pages = {
        1: {"data": [], "meta": {"current_page": 1, "last_page": 2}},
        2: {"data": _failed(range(3)), "meta": {"current_page": 2, "last_page": 2}},
    }
    assert len(await _paged(pages).deliveries("w")) == 3


def test_an_endpoint_whose_events_are_of_another_shape_is_read_with_none() -> None:
    """Review: `"events": 5` (or true) in one listed endpoint was a TypeError, a traceback for the whole listing."""
    assert _endpoint({"id": "w-1", "url": "https://r.example/", "events": 5}).events == ()


async def test_a_listing_stops_at_its_page_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented bound (PAGES): a listing that always says more follow is read that many pages, then refused
    when a decision rests on it (`reconcile`'s deliveries; exit 3), or taken as read leniently (`endpoints`)."""
    assert api_module.PAGES == 10_000  # docs/commands.md names it
    monkeypatch.setattr(api_module, "PAGES", 3)
    asked: list[int] = []

    class Endless(dict[int, object]):
        def __getitem__(self, page: int) -> object:
            asked.append(page)
            items = [{"id": f"w-{page}", "url": "https://r.example/", "events": [], "status": "failed"}]
            return {"data": items, "meta": {"current_page": page, "last_page": 10**9}}

    with pytest.raises(MytpeApiError, match="more than 3 pages"):
        await _paged(Endless()).deliveries("w")
    assert asked == [1, 2, 3]
    assert [e.id for e in await _paged(Endless()).endpoints()] == ["w-1", "w-2", "w-3"]
    assert asked == [1, 2, 3] * 2
