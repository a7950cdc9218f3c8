"""Property-based tests over MyTPE webhooks as MyTPE writes them, then mutated (tests/mytpe_events.py).

Each property decides, for every example, which answer the relay must give, checks it, and reports
the branch it took with `hypothesis.event` (shown by `pytest --hypothesis-show-statistics`).
`test_each_property_reaches_its_branches` draws each property's examples again with fixed seeds (and
without Hypothesis's harvested constants, unlike the tests themselves) and fails when a branch the
property exists for ran in fewer than its stated share of them.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import event as report
from hypothesis import strategies as st
from hypothesis.internal.conjecture import providers
from hypothesis.internal.constants_ast import Constants
from starlette.testclient import TestClient

from relay.errors import HeaderError, SignatureError
from relay.http.app import create_app
from relay.mytpe import signatures
from relay.mytpe.payload import Unusable, parse
from relay.routing import parse_route
from relay.settings import Settings
from tests.conftest import FIGURES, make_settings
from tests.fakes import FakePublisher
from tests.helpers import OLD_SECRET, SECRET, HeaderList, signed_headers
from tests.mytpe_events import EXT_ROUTES, NOW, TOPIC_OF, Event, Request, Signed, events, requests, signed_bodies

EVENT_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}(\.[A-Za-z0-9_\-]{1,64}){1,4}")
"""An event name the relay routes by (`word.word`, up to five words): written here from the contract."""
APP_EXAMPLES = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- the verifier ------------------------------------------------------------------------------


def check_verifier(request: Request, keys: list[str]) -> str:
    """The verifier decides what the request's one change calls for; only a real signature passes."""
    try:
        parsed = signatures.parse_headers(HeaderList(request.headers()))
        index = signatures.verify(parsed, request.body, [k.encode() for k in keys], now=NOW, tolerance=300)
    except (HeaderError, SignatureError) as exc:
        assert request.verdict in {exc.reason, ""}, f"{request.mutation}: {exc.reason}"
        return f"refused: {exc.reason}"
    assert request.verdict == "verified", f"{request.mutation} verified"
    assert keys[index] == request.secret
    expected = signatures.sign(request.secret, parsed.timestamp_text, request.body)
    assert request.signature.strip(" \t").lower() == expected
    return "verified"


@given(request=requests(), keys=st.permutations([SECRET, OLD_SECRET]))
def test_verifier_raises_only_its_own_errors(request: Request, keys: list[str]) -> None:
    report(check_verifier(request, keys))


# --- the parser -----------------------------------------------------------------------------


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A MyTPE body with up to three bytes flipped, inserted or cut, or any bytes."""
    if draw(st.sampled_from([False, False, True])):
        return draw(st.binary(max_size=2048))
    body = draw(events()).body()
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        if not body:
            break
        at = draw(st.integers(0, len(body) - 1))
        edit = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        byte = bytes([draw(st.integers(0, 255))])
        body = {
            "flip": body[:at] + byte + body[at + 1 :],
            "insert": body[:at] + byte + body[at:],
            "delete": body[:at] + body[at + 1 :],
            "cut": body[: max(at, 1)],
        }[edit]
    return body


def check_parser_on_bytes(body: bytes) -> str:
    try:
        webhook = parse(body, "header-id")
    except Unusable as exc:
        assert exc.reason in {"invalid_utf8", "malformed_json", "not_an_object", "missing_event", "missing_data"}
        return f"refused: {exc.reason}"
    whole = json.loads(body)
    assert webhook.data_bytes in body
    assert json.loads(webhook.data_bytes) == whole["data"] == webhook.data
    assert webhook.event == whole["event"]
    return "parsed"


@given(body=mangled())
def test_parser_raises_only_unusable_on_bytes(body: bytes) -> None:
    report(check_parser_on_bytes(body))


@st.composite
def renamed(draw: st.DrawFn) -> Event:
    """A MyTPE event; one in four with any text as its event name."""
    event = draw(events())
    if draw(st.sampled_from([False, False, False, True])):
        event = replace(event, document={**event.document, "event": draw(st.text(max_size=30))})
    return event


def check_data_bytes(event: Event) -> str:
    """The data bytes are the body's own: `5000.00`, `\\/` and `\\u00e9` as MyTPE wrote them."""
    body = event.body()
    name = event.document["event"]
    try:
        webhook = parse(body, "h")
    except Unusable as exc:
        assert exc.reason == "missing_event" and EVENT_NAME.fullmatch(name) is None
        return "refused: missing_event"
    assert EVENT_NAME.fullmatch(name) is not None
    assert (webhook.event, webhook.delivery_id) == (name, event.delivery_id)
    assert webhook.data_bytes == event.data_bytes()
    return "kept data bytes: " + ("PHP escapes (exact parse)" if b"\\" in body else "no escapes (fast parse)")


@given(event=renamed())
def test_parser_on_json_shapes_keeps_data_bytes_exact(event: Event) -> None:
    report(check_data_bytes(event))


# --- the whole app ---------------------------------------------------------------------------

Client = tuple[TestClient, FakePublisher, str]


def app_settings(**overrides: Any) -> Settings:
    """The legacy families by default, and the new generation's routes as docs/configuration.md gives them."""
    routes = tuple(parse_route(entry) for entry in EXT_ROUTES.split(","))
    return make_settings(max_body_bytes=4096, routes=routes, **overrides)


def open_app() -> Generator[Client, None, None]:
    publisher = FakePublisher()
    settings_ = app_settings()
    app = create_app(settings_, publisher=publisher, clock=lambda: float(NOW))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, publisher, settings_.topic_prefix


@pytest.fixture
def app_client() -> Iterator[Client]:
    yield from open_app()


def check_unsigned(app: Client, request: Request) -> str:
    """A request that no secret signed in the window: 4xx with the reason its change calls for, and
    nothing published, not even to the DLQ."""
    client, publisher, _ = app
    before = len(publisher.sent)
    headers = [(k.encode(), v.encode("latin-1")) for k, v in request.headers()]
    oversized = len(request.body) > 4096
    response = client.post("/webhooks/mytpe", content=request.body, headers=headers)
    reason = response.json()["reason"]
    assert response.status_code in {400, 401, 413}, response.text
    if oversized:
        assert reason == "body_too_large"
    else:
        assert request.verdict in {reason, ""}, f"{request.mutation}: {reason}"
    assert len(publisher.sent) == before
    return f"refused: {reason}"


@APP_EXAMPLES
@given(request=requests(verified=False))
def test_no_unsigned_request_is_published_or_answered_500(app_client: Client, request: Request) -> None:
    report(check_unsigned(app_client, request))


def check_kept_once(app: Client, signed: Signed) -> str:
    """A correctly signed body is published once: a MyTPE event on its family's topic, keyed by its
    entity, with its data bytes unchanged; anything else in the DLQ, raw, with the reason it calls for."""
    client, publisher, prefix = app
    before = len(publisher.sent)
    delivery_id = str(uuid.uuid4())  # hypothesis repeats its ids; dedupe would answer `duplicate`
    body = signed.body.replace(signed.event.delivery_id.encode(), delivery_id.encode())
    headers = signed_headers(body, timestamp=NOW, delivery_id=delivery_id)
    response = client.post("/webhooks/mytpe", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert len(publisher.sent) == before + 1
    record, answer = publisher.sent[-1], response.json()
    if signed.reason:
        assert (answer["status"], answer["reason"]) == ("quarantined", signed.reason), signed.mutation
        assert (record.topic, record.value) == (f"{prefix}.dlq", body)
        return "DLQ"
    event = signed.event
    assert answer == {"status": "accepted", "delivery_id": delivery_id}, signed.mutation
    assert (record.topic, record.key) == (f"{prefix}.{TOPIC_OF[event.family]}", event.entity_id.encode())
    cloud_event = orjson.loads(record.value)
    assert (cloud_event["id"], cloud_event["type"]) == (delivery_id, f"app.mytpe.pay.{event.event}")
    assert record.value.endswith(b',"data":' + replace(event, style=_style_of(signed)).data_bytes() + b"}")
    return f"family topic: {event.generation}"


def _style_of(signed: Signed) -> Any:
    return replace(signed.event.style, space=" ") if signed.mutation == "pretty-printed" else signed.event.style


@APP_EXAMPLES
@given(signed=signed_bodies())
def test_every_signed_body_is_kept_exactly_once(app_client: Client, signed: Signed) -> None:
    report(check_kept_once(app_client, signed))


# --- each property reaches the branches it exists for -----------------------------------------

SHARE_EXAMPLES = 300
SHARE_SEEDS = (1, 2, 3, 4)


def branch_counts(strategy: st.SearchStrategy[Any], check: Callable[[Any], str]) -> Counter[str]:
    """The branches `check` took over SHARE_EXAMPLES examples for each of SHARE_SEEDS, drawn without the
    constants Hypothesis harvests from the process's modules (`without_local_constants`): so the counts
    depend on the strategy, the seeds and the versions of Hypothesis and Python, not on what else the
    suite imported. One seed's 300 examples moved a lot from one sample to the next (the verifier's stale
    timestamps: 3, 4, 4 and 18), so the shares are pooled over the seeds; each least share is about half
    the pooled share measured, or less (the comment above PROPERTIES)."""
    counts: Counter[str] = Counter()
    for number in SHARE_SEEDS:

        @seed(number)
        @settings(max_examples=SHARE_EXAMPLES, database=None, phases=[Phase.generate])
        @given(strategy)
        def run(example: Any) -> None:
            counts[check(example)] += 1

        with without_local_constants():
            run()
    return counts


@contextlib.contextmanager
def without_local_constants() -> Iterator[None]:
    """Hypothesis draws some values (integers, bytes and strings at 5%, floats at 15%, half of those from
    the local pool when it has one that fits) from the constants it harvests from the process's non-test
    local modules (`hypothesis.internal.conjecture.providers`, private: the version is pinned in
    requirements/constraints.txt). With them, one seed drew other examples whenever the suite imported
    other modules or a module's constants changed: a CI run of a change that only added bench modules
    drew 4 stale timestamps of 300 where 6 were wanted. Without them, the same examples in every process
    (for the same code and versions). Fails if this Hypothesis no longer reads the pool through that
    hook, rather than going on with the pool in."""
    saved = providers._get_local_constants
    providers._get_local_constants = Constants
    providers.CONSTANTS_CACHE.cache.clear()  # the permitted constants per draw's bounds, local ones included
    try:
        assert not len(providers.HypothesisProvider(None)._local_constants), "the local pool is still read"
        yield
    finally:
        providers._get_local_constants = saved
        providers.CONSTANTS_CACHE.cache.clear()


Check = Callable[..., str]
# Pooled over SHARE_SEEDS (1,200 examples per property, Hypothesis 6.170.15, 2026-12-05), the lowest
# shares against their floors: the verifier's bad signatures 15.2% (floor 7%) and stale timestamps 5.1%
# (2%); the parser's refusals on bytes 40.1% (20%); the unsigned requests' bad signatures 59.6% (30%) and
# stale timestamps 8.0% (3%); the kept bodies' DLQ 37.1% (18%). Every other branch is at more than twice
# its floor.
PROPERTIES: dict[str, tuple[Callable[[], st.SearchStrategy[Any]], Check, bool, dict[str, float]]] = {
    # the property: its strategy, its check, whether the check takes the app, and for each branch it
    # exists for (a prefix of the labels it reports) the least share of examples that branch must run in
    "test_verifier_raises_only_its_own_errors": (
        lambda: st.tuples(requests(), st.permutations([SECRET, OLD_SECRET])),
        lambda example: check_verifier(*example),
        False,
        {"verified": 0.25, "refused: bad_signature": 0.07, "refused: stale_timestamp": 0.02},
    ),
    "test_parser_raises_only_unusable_on_bytes": (
        mangled,
        check_parser_on_bytes,
        False,
        {"parsed": 0.25, "refused": 0.2},
    ),
    "test_parser_on_json_shapes_keeps_data_bytes_exact": (
        renamed,
        check_data_bytes,
        False,
        {"kept data bytes: PHP escapes": 0.3, "kept data bytes: no escapes": 0.1, "refused": 0.03},
    ),
    "test_no_unsigned_request_is_published_or_answered_500": (
        lambda: requests(verified=False),
        check_unsigned,
        True,
        {"refused: bad_signature": 0.3, "refused: stale_timestamp": 0.03, "refused: missing_header": 0.05},
    ),
    "test_every_signed_body_is_kept_exactly_once": (
        signed_bodies,
        check_kept_once,
        True,
        {"family topic: legacy": 0.1, "family topic: ext": 0.1, "DLQ": 0.18},
    ),
}


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_each_property_reaches_its_branches(name: str) -> None:
    strategy, check, takes_app, minimum = PROPERTIES[name]
    if takes_app:
        with contextlib.closing(open_app()) as apps:
            app = next(apps)
            counts = branch_counts(strategy(), lambda example: check(app, example))
    else:
        counts = branch_counts(strategy(), check)
    total = sum(counts.values())
    shares = {branch: sum(n for label, n in counts.items() if label.startswith(branch)) / total for branch in minimum}
    FIGURES.append(f"{name}: " + ", ".join(f"{label} {n}" for label, n in counts.most_common()) + f" (of {total})")
    short = {branch: share for branch, share in shares.items() if share < minimum[branch]}
    assert not short, f"{name}: branches below their share: {short}; all: {dict(counts)}"
