"""The webhook commands' pure parts: reconcile's times."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from relay.mytpe.answers import MytpeApiError
from relay.mytpe.api import Credentials, Endpoint, LegacyWebhook, MytpeApi
from relay.mytpe.oneshot import Pace
from relay.ops.cli import EXIT_CONFIG, _parser, main
from relay.ops.register import Others, _register_endpoint, register
from relay.ops.secret_install import SecretPrinted
from relay.ops.webhook import _since, reconcile, unregister
from relay.settings import ConfigError, Secret
from relay.sources import editor
from relay.sources.config import MytpeApiConfig, Source, parse

SINCE = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2026-12-02T10:00", "yesterday", "", "2026-12-02"])
def test_since_without_an_offset_or_not_a_time_is_one_line(text: str) -> None:
    """Review finding: a --since without an offset compared a naive time with MyTPE's aware ones: a TypeError
    traceback. It is refused with one line: read in whichever zone, it could skip a failed delivery."""
    with pytest.raises(ConfigError, match="with its offset"):
        _since(text)


def test_since_with_its_offset() -> None:
    assert _since("2026-12-02T10:00Z") == SINCE
    assert _since("2026-12-02T11:00+01:00") == SINCE


async def test_a_failed_delivery_whose_time_cannot_be_read_is_redelivered_not_skipped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review finding: a failed delivery with no created_at (or one without an offset) was skipped, or was a
    TypeError traceback, and the command said it had redelivered everything since --since. Redelivering one too
    many is harmless (the relay dedupes); one skipped is a payment MyTPE gave up on."""
    asked: list[str] = []

    class Api:
        async def deliveries(self, webhook_id: str, **_: Any) -> list[dict[str, Any]]:
            return [
                {"id": "undated", "status": "failed"},
                {"id": "naive-before", "status": "failed", "created_at": "2026-12-02T09:00:00"},
                {"id": "naive-after", "status": "failed", "created_at": "2026-12-02T10:30:00"},
                {"id": "before", "status": "failed", "created_at": "2026-12-02T09:59:59Z"},
                {"id": "after", "status": "failed", "created_at": "2026-12-02T11:30:00+01:00"},
                {"id": "fine", "status": "succeeded", "created_at": "2026-12-02T11:00:00Z"},
            ]

        async def redeliver(self, webhook_id: str, delivery_id: str) -> None:
            asked.append(delivery_id)

    block = MytpeApiConfig("ext", "https://m.example", None, "w-1")
    source = Source("shop", (Secret("whsec_" + "ab" * 24),), mytpe=block)
    assert await reconcile(source, Api(), SINCE) == 0  # type: ignore[arg-type]
    assert asked == ["undated", "naive-after", "after"]  # a time without an offset read as UTC
    assert capsys.readouterr().out == (
        "source shop: asked MyTPE to redeliver 3 failed delivery(ies) since 2026-12-02T10:00:00Z"
        " (1 of them with no readable created_at)\n"
    )
    await reconcile(source, Api(), _since("2026-12-02T11:00+01:00"))  # type: ignore[arg-type]
    assert "since 2026-12-02T10:00:00Z" in capsys.readouterr().out  # said in UTC, as its Z says


@pytest.mark.parametrize("text", ["0", "0.5", "-1", "nan", "inf", "1e9", "fifteen"])
def test_a_rotation_window_of_no_length_or_of_years_is_refused(text: str) -> None:
    """Review finding: --window-minutes took 0, NaN or a year: a window that opens nothing (the secret
    regenerated with none), or one that answers bad signatures 503 for a year."""
    with pytest.raises(SystemExit) as refused:
        _parser().parse_args(["webhook", "rotate", "--source", "shop", "--window-minutes", text])
    assert refused.value.code == 2
    assert (
        _parser().parse_args(["webhook", "rotate", "--source", "shop", "--window-minutes", "15"]).window_minutes == 15
    )


SIGNALLED = """
import asyncio, os, signal, sys, time
from relay.mytpe.threads import finished, in_thread
from relay.ops.interrupt import TerminatedBy, as_ctrl_c

got = []
signum = signal.Signals[sys.argv[1]]

def slow():
    time.sleep(1.5)  # MyTPE making the secret: well after both signals, even on a loaded machine
    return "whsec_new"

async def command():
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, os.kill, os.getpid(), signum)
    loop.call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)  # a second one: a supervisor escalating
    got.append(await finished(in_thread(slow)))
    return 0  # no wait after the call: its passed-on cancellation lands on none

try:
    print("done", asyncio.run(as_ctrl_c(command())), got)
except TerminatedBy as exc:
    print("stopped by", exc, got)
"""


@pytest.mark.parametrize(
    ("signum", "ignored", "said"),
    [
        ("SIGTERM", False, "stopped by SIGTERM ['whsec_new']"),
        ("SIGHUP", False, "stopped by SIGHUP ['whsec_new']"),
        ("SIGHUP", True, "stopped by SIGTERM ['whsec_new']"),  # under nohup: the SIGHUP stays ignored
        ("SIGINT", False, "stopped by SIGTERM ['whsec_new']"),  # Ctrl-C, then a SIGTERM: a CI job cancelled
    ],
)
def test_signals_stop_a_command_once_and_the_secret_of_its_call_in_flight_is_kept(
    signum: str, ignored: bool, said: str
) -> None:
    """Review findings: a second SIGTERM (a supervisor escalating, a closed terminal signalling twice) cancelled
    again, and `finished` then abandoned the call: the secret MyTPE made was held by nobody; a command that ended
    right after such a call ended cancelled, a CancelledError traceback; and under nohup a SIGHUP stopped it.
    Review of the fix: a SIGTERM after Ctrl-C (asyncio's own cancellation) was a second cancellation too."""

    def preexec() -> None:
        if ignored:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    done = subprocess.run(
        [sys.executable, "-c", SIGNALLED, signum],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=preexec,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout.strip() == said, done.stdout + done.stderr[-800:]


@pytest.mark.parametrize(
    ("status", "listed", "ends"),
    [(404, [], 0), (404, ["w-1"], None), (500, [], None), (404, None, None)],
    ids=["gone", "a-404-not-mytpes", "failing", "a-listing-unread"],
)
async def test_unregister_of_an_endpoint_mytpe_no_longer_has_is_done_not_an_error(
    status: int, listed: list[str] | None, ends: int | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review finding: a DELETE retried after a 5xx that MyTPE had applied met a 404, and `unregister` ended
    with exit 3, 'no such webhook', though what it was asked to do held. Review of the fix: a gateway's 404, or
    a base_url that is not the API's, is a 404 too, while the endpoint still delivers; MyTPE's listing decides."""

    class Api:
        async def delete_endpoint(self, webhook_id: str) -> None:
            raise MytpeApiError(f"DELETE /webhooks/{webhook_id}: MyTPE answered {status}", status=status)

        async def endpoints(self, *, strict: bool = False) -> list[SimpleNamespace]:
            assert strict, "a listing read leniently cannot say the endpoint is gone"
            if listed is None:
                raise MytpeApiError("MyTPE's listing (page 1) cannot be read as a whole")
            return [SimpleNamespace(id=webhook_id) for webhook_id in listed]

    block = MytpeApiConfig("ext", "https://m.example", None, "w-1")
    source = Source("shop", (Secret("whsec_" + "ab" * 24),), mytpe=block)
    if ends is None:
        with pytest.raises(MytpeApiError) as failed:
            await unregister(source, Api(), confirm=lambda question: True)  # type: ignore[arg-type]
        assert f"MyTPE answered {status}" in str(failed.value)
        assert ("its listing does not say" in str(failed.value)) is (listed is None)
        return
    assert await unregister(source, Api(), confirm=lambda question: True) == ends  # type: ignore[arg-type]
    assert capsys.readouterr().out == "source shop: endpoint w-1 is not on MyTPE (already removed)\n"


@pytest.mark.parametrize(
    ("masked", "ends"), [("****" + "ab" * 2, 0), ("whsec_****abab", 1)], ids=["ours", "unreadable"]
)
async def test_legacy_register_says_the_kept_secret_is_the_sources_only_when_its_mask_says_so(
    masked: str, ends: int, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    """Review finding: when MyTPE kept the secret it had (its PUT answer holds none: the first answer lost, or the
    instance had a URL already), `register` printed 'MyTPE kept the secret it had, one of the source's' and ended 0
    whether or not the mask could be compared. With a mask of another shape nothing says the source holds it: its
    deliveries may all be parked, never verified. That is said, and the command ends non-zero."""

    class Api:
        async def legacy_set_url(self, instance: str, url: str) -> None:
            return None  # MyTPE kept its secret

        async def legacy_get(self, instance: str) -> LegacyWebhook:
            return LegacyWebhook("https://relay.example/webhooks/mytpe/shop", True, masked)

    block = MytpeApiConfig("legacy", "https://m.example", "i-1", None)
    source = Source("shop", (Secret("whsec_" + "ab" * 24),), mytpe=block)
    settings = SimpleNamespace(public_url="https://relay.example")
    pace = Pace(settle=0.1, poll=0.01)
    path = tmp_path / "sources.yaml"
    done = await register(settings, path, source, Api(), print_secret=False, pace=pace)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert done == ends
    assert ("one of the source's" in out) is (ends == 0)
    assert ("cannot be compared" in err) is (ends == 1), err


URL = "https://relay.example/webhooks/mytpe/shop"
NONE = Others([], {})


class EndpointApi:
    """MyTPE's new-generation calls `register` makes, recorded in order; `patched` is the URL a PATCH leaves."""

    def __init__(self, *, former: Endpoint | None, listed: list[Endpoint], patched: str = URL) -> None:
        self.former, self.listed, self.patched = former, listed, patched
        self.calls: list[tuple[str, str]] = []

    async def endpoint(self, webhook_id: str) -> Endpoint:
        self.calls.append(("GET", webhook_id))
        known = [e for e in [self.former, *self.listed] if e is not None and e.id == webhook_id]
        if not known:
            raise MytpeApiError("MyTPE answered 404", status=404)
        return known[0]

    async def update_endpoint(self, webhook_id: str, **fields: Any) -> None:
        self.calls.append(("PATCH", webhook_id))
        if self.former is not None and webhook_id == self.former.id:
            self.former = replace(self.former, url=self.patched, is_active=bool(fields.get("is_active")))

    async def endpoints(self, *, strict: bool = False) -> list[Endpoint]:
        self.calls.append(("LIST", ""))
        return self.listed

    async def regenerate_endpoint(self, webhook_id: str) -> str:
        self.calls.append(("REGENERATE", webhook_id))
        return "whsec_" + "cd" * 24

    async def create_endpoint(self, *args: Any, **kwargs: Any) -> Endpoint:
        raise AssertionError("a second endpoint made")


def _ext_source(webhook_id: str | None) -> Source:
    return Source(
        "shop", (Secret("whsec_" + "ab" * 24),), mytpe=MytpeApiConfig("ext", "https://m.example", None, webhook_id)
    )


async def test_register_keeps_the_sources_endpoint_and_says_so_when_mytpe_holds_another_url() -> None:
    """Review of 9fe66cf: after the PATCH, `register` looked the endpoint up again by exact URL in the listing, so
    a URL MyTPE stored otherwise (a trailing slash) or a listing behind the PATCH made a second endpoint. The
    source's endpoint is read back by id: as asked, it is kept; otherwise that is an error naming it."""
    pace = Pace(settle=0.1, poll=0.01)
    former = Endpoint("w-1", "https://elsewhere.example/", (), False, None, None)
    api = EndpointApi(former=former, listed=[])
    assert await _register_endpoint(api, _ext_source("w-1"), URL, pace, NONE) == (None, "w-1", True)  # type: ignore[arg-type]
    assert [c[0] for c in api.calls] == ["GET", "PATCH", "GET"]  # nothing listed, nothing made
    normalised = EndpointApi(former=former, listed=[], patched=URL + "/")
    with pytest.raises(MytpeApiError, match=f"endpoint w-1: MyTPE holds {URL}/, active after the PATCH"):
        await _register_endpoint(normalised, _ext_source("w-1"), URL, pace, NONE)  # type: ignore[arg-type]
    # review: a host kept in another case (or the default port written) is the same place, as the drift check reads it
    cased = EndpointApi(
        former=former, listed=[], patched=URL.replace("https://relay.example", "https://RELAY.example:443")
    )
    assert await _register_endpoint(cased, _ext_source("w-1"), URL, pace, NONE) == (None, "w-1", True)  # type: ignore[arg-type]


class Hidden(EndpointApi):
    """MyTPE answering 404 for an endpoint by id (a gateway's) while it lists it."""

    async def endpoint(self, webhook_id: str) -> Endpoint:
        self.calls.append(("GET", webhook_id))
        raise MytpeApiError("MyTPE answered 404", status=404)


async def _registered(
    api: EndpointApi,
    tmp_path: Any,
    webhook_id: str | None,
    *other: str,
    clinic_id: str | None = None,
    default: bool = False,
) -> int:
    """`register` for source shop (new generation) in a sources file of its own, with `other` sources beside (the
    new generation's too, with `clinic_id` as their webhook_id, when given)."""
    file = tmp_path / "sources.yaml"
    block = f"{{api: ext, base_url: 'https://m.example', webhook_id: {webhook_id or 'null'}}}"
    theirs = f", mytpe: {{api: ext, base_url: 'https://m.example', webhook_id: {clinic_id}}}" if clinic_id else ""
    extra = "".join(f"  - {{name: {name}, secrets: [{'whsec_' + 'ef' * 24}]{theirs}}}\n" for name in other)
    file.write_text(f"sources:\n  - {{name: shop, secrets: [{'whsec_' + 'ab' * 24}], mytpe: {block}}}\n{extra}")
    settings = SimpleNamespace(public_url="https://relay.example", secrets=("whsec_" + "12" * 24,) if default else ())
    source = next(s for s in parse(file.read_bytes(), "f") if s.name == "shop")
    pace = Pace(settle=0.1, poll=0.01)
    return await register(settings, file, source, api, print_secret=False, pace=pace)  # type: ignore[arg-type]


async def test_an_adopted_inactive_endpoint_is_activated_once_its_new_secret_is_installed(tmp_path: Any) -> None:
    """Review of 9fe66cf: an adopted endpoint found inactive was activated before its secret (lost in an earlier
    answer) was made again, so its deliveries in between were signed with a secret nobody holds; review of the fix:
    activated after the regeneration but before the install, a failed or cancelled PATCH lost the new secret."""
    file = tmp_path / "sources.yaml"

    class Checking(EndpointApi):
        async def update_endpoint(self, webhook_id: str, **fields: Any) -> None:
            assert "whsec_" + "cd" * 24 in file.read_text(), "activated before the new secret was installed"
            await super().update_endpoint(webhook_id, **fields)
            self.listed = [replace(e, is_active=True) for e in self.listed]

    api = Checking(former=None, listed=[Endpoint("w-9", URL, (), False, None, "2026-12-06T00:00:00Z")])
    assert await _registered(api, tmp_path, None) == 0
    assert [c[0] for c in api.calls if c[0] != "GET"] == ["LIST", "REGENERATE", "PATCH", "LIST"]


async def test_register_says_so_of_what_it_keeps_leaves_or_finds_beside_the_sources_endpoint(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review of 33408f5 and its fix: (1) MyTPE's other endpoints for the URL were no longer named (each delivers
    a copy, 401 and parked); (2) an endpoint calling another source's URL, or one whose webhook_id another source
    of the file holds too, was moved here: that source's deliveries stopped, and these were unverifiable; (3) a
    404 by id for an endpoint MyTPE lists made register regenerate it without a window; (4) an endpoint left
    inactive (its activation failed) ended register 0, and that failure lost the new secret."""
    api = EndpointApi(
        former=Endpoint("w-1", URL, (), True, None, None), listed=[Endpoint("w-2", URL, (), True, None, None)]
    )
    assert await _registered(api, tmp_path, "w-1") == 0
    assert "MyTPE also has endpoint(s) w-2 for" in capsys.readouterr().out  # (1)
    clinic = Endpoint("w-1", "https://RELAY.example:443/webhooks/mytpe/clinic/", (), True, None, None)
    elsewhere = EndpointApi(former=clinic, listed=[])
    with pytest.raises(MytpeApiError, match="another source's URL"):  # (2), written otherwise
        await _registered(elsewhere, tmp_path, "w-1", "clinic")
    assert [c[0] for c in elsewhere.calls] == ["GET"]
    shared = EndpointApi(former=clinic, listed=[])
    with pytest.raises(ConfigError, match="sources shop and clinic share webhook_id w-1"):  # (2), before any call
        await _registered(shared, tmp_path, "w-1", "clinic", clinic_id="w-1")
    assert shared.calls == []
    hidden = Hidden(former=None, listed=[Endpoint("w-1", URL, (), True, None, None)])
    assert await _registered(hidden, tmp_path, "w-1") == 0
    assert [c[0] for c in hidden.calls] == ["GET", "LIST", "LIST"]  # (3): kept, not regenerated

    class Refusing(EndpointApi):
        async def update_endpoint(self, webhook_id: str, **fields: Any) -> None:
            raise MytpeApiError("PATCH /webhooks/w-9: MyTPE answered 503 (4 attempts)")

    refusing = Refusing(former=None, listed=[Endpoint("w-9", URL, (), False, None, None)])
    assert await _registered(refusing, tmp_path, None) == 1  # (4)
    assert "whsec_" + "cd" * 24 in (tmp_path / "sources.yaml").read_text()
    out, err = capsys.readouterr()
    assert "activating it failed" in out and "inactive on MyTPE: it delivers nothing" in err


async def test_the_sources_own_url_written_otherwise_is_pointed_back_not_refused() -> None:
    """Review of 75ed874: its check refused any endpoint calling a path of this relay, the source's own URL with a
    trailing slash too (typed in MyTPE's dashboard), and the old path of a renamed source; and it let through
    another source's URL written with another case or port. Another source's URL, compared as one place, is."""
    pace = Pace(settle=0.1, poll=0.01)
    for written in (URL + "/", "https://relay.example/webhooks/mytpe/old-name"):
        api = EndpointApi(former=Endpoint("w-1", written, (), True, None, None), listed=[])
        clinic = [URL.replace("shop", "clinic")]
        kept = await _register_endpoint(api, _ext_source("w-1"), URL, pace, Others(clinic, {}))  # type: ignore[arg-type]
        assert kept == (None, "w-1", True)
        assert "PATCH" in [c[0] for c in api.calls]


async def test_register_neither_adopts_nor_moves_the_endpoint_of_another_source(tmp_path: Any) -> None:
    """Review of f94cb3e: an endpoint listed for this source's URL whose id another source of the file holds (its
    URL changed in the dashboard, or copied) was adopted, regenerated, and its id written here too: the two sources
    then shared it, and a `rotate` of the other regenerated this one's live endpoint. And the default source's
    URL (/webhooks/mytpe, RELAY_MYTPE_SECRETS) was not counted as another source's."""
    taken = EndpointApi(former=None, listed=[Endpoint("w-9", URL, (), True, None, None)])
    with pytest.raises(MytpeApiError, match="it is source clinic's webhook_id: nothing changed"):
        await _registered(taken, tmp_path, None, "clinic", clinic_id="w-9")
    assert "REGENERATE" not in [c[0] for c in taken.calls]
    default = EndpointApi(
        former=Endpoint("w-1", "https://relay.example/webhooks/mytpe", (), True, None, None), listed=[]
    )
    with pytest.raises(MytpeApiError, match="another source's URL"):
        await _registered(default, tmp_path, "w-1", default=True)
    assert "PATCH" not in [c[0] for c in default.calls]


@pytest.mark.parametrize("failure", [TypeError("events"), asyncio.CancelledError()], ids=["type-error", "cancelled"])
async def test_a_made_endpoints_secret_is_installed_before_the_listing_that_follows(
    tmp_path: Any, failure: BaseException
) -> None:
    """Review of 00ae095: a new endpoint's secret waited, in memory only, behind a listing of MyTPE's endpoints:
    a SIGTERM (a cancellation) or a listed endpoint of another shape lost it."""

    class Making(EndpointApi):
        async def create_endpoint(self, *args: Any, **kwargs: Any) -> Endpoint:
            return Endpoint("w-5", URL, (), True, "whsec_" + "cd" * 24, None)

        async def endpoints(self, *, strict: bool = False) -> list[Endpoint]:
            if not strict:
                raise failure
            return []

    with pytest.raises(type(failure)):
        await _registered(Making(former=None, listed=[]), tmp_path, None)
    assert "whsec_" + "cd" * 24 in (tmp_path / "sources.yaml").read_text()


@pytest.mark.parametrize("full_at", [1, 2, 3, 4])
async def test_a_made_endpoints_id_is_never_written_without_its_secret(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, full_at: int
) -> None:
    """Review finding: the new endpoint's id and its secret were two writes. When the second failed (a full disk, the
    lock's timeout, a kill between them), the file named the new endpoint with the placeholder secret, and a second
    `register` found that endpoint, said its secret was unchanged and exited 0: every delivery was then refused
    and parked. The two are one write now: both, or neither (and a second run makes the endpoint's secret again).
    The disk fills at the run's `full_at`-th file write (each edit writes the file's `.previous` copy, then it)."""
    secret = "whsec_" + "cd" * 24

    class Making(EndpointApi):
        async def create_endpoint(self, *args: Any, **kwargs: Any) -> Endpoint:
            return Endpoint("w-5", URL, (), True, secret, None)

    real, writes = editor._write, []

    def filling(*args: Any, **kwargs: Any) -> None:
        writes.append(1)
        if len(writes) >= full_at:
            raise OSError(28, "No space left on device")
        real(*args, **kwargs)

    monkeypatch.setattr(editor, "_write", filling)
    with contextlib.suppress(SecretPrinted):  # the secret printed once on stderr, exit 3
        await _registered(Making(former=None, listed=[]), tmp_path, None)
    text = (tmp_path / "sources.yaml").read_text()
    assert ("w-5" in text) == (secret in text), text


def test_register_for_two_sources_sharing_a_webhook_id_is_a_configuration_error_exit_2(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/commands.md: two sources of the file with one webhook_id are exit 2, one line, before MyTPE is asked
    anything (its base URL here resolves nowhere: a call would be exit 3)."""
    file = tmp_path / "sources.yaml"
    block = "{api: ext, base_url: 'https://mytpe.invalid', webhook_id: w-1}"
    file.write_text(
        f"sources:\n  - {{name: shop, secrets: [{'whsec_' + 'ab' * 24}], mytpe: {block}}}\n"
        f"  - {{name: clinic, secrets: [{'whsec_' + 'ef' * 24}], mytpe: {block}}}\n"
    )
    env = {"RELAY_MYTPE_API_KEY": "k", "RELAY_MYTPE_API_SECRET": "s", "RELAY_PUBLIC_URL": "https://relay.example"}
    before = file.read_bytes()
    assert main(["webhook", "register", "--source", "shop", "--file", str(file)], env) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sources shop and clinic share webhook_id w-1" in err, err
    assert file.read_bytes() == before


async def test_register_after_a_2xx_without_an_id_says_to_run_again_and_the_rerun_keeps_a_secret(
    tmp_path: Any,
) -> None:
    """Review (left by the last note): a 2xx `POST /webhooks` whose answer had no id failed with "a webhook without
    an id", and nothing said that MyTPE had most likely made an endpoint signing with a secret nobody holds. The
    line says to run register again; run again, it adopts that endpoint and makes its secret again, installed."""
    made: list[dict[str, Any]] = []
    new = "whsec_" + "9e" * 24

    async def mytpe(method: str, path: str, body: Any = None, **_: Any) -> Any:
        if method == "GET" and path.startswith("/webhooks?page="):
            return {"data": made, "meta": {"last_page": 1}}
        if method == "POST" and path == "/webhooks":
            made.append({"id": "w-9", "url": body["url"], "events": [], "is_active": True})
            return {"data": {"url": body["url"], "secret": "whsec_" + "11" * 24}}  # no id
        if method == "POST" and path == "/webhooks/w-9/regenerate-secret":
            return {"data": {"secret": new}}
        if method == "GET" and path == "/webhooks/w-9":  # regenerate_endpoint reads it first
            return {"data": made[0]}
        raise AssertionError(f"{method} {path}")

    file = tmp_path / "sources.yaml"
    file.write_text(
        f"sources:\n  - {{name: shop, secrets: [{'whsec_' + 'ab' * 24}], mytpe: {{api: ext, base_url: 'https://m.example'}}}}\n"
    )
    settings = SimpleNamespace(public_url="https://relay.example", secrets=())
    api = MytpeApi("https://m.example", Credentials(lambda: "k", lambda: "s"))
    api.call = mytpe  # type: ignore[method-assign]

    async def run() -> int:
        source = next(s for s in parse(file.read_bytes(), "f") if s.name == "shop")
        pace = Pace(settle=0.1, poll=0.01)
        return await register(settings, file, source, api, print_secret=False, pace=pace)  # type: ignore[arg-type]

    with pytest.raises(MytpeApiError, match=r"without the endpoint's id.*run `webhook register` again"):
        await run()
    assert await run() == 0
    entry = parse(file.read_bytes(), "f")[0]
    assert [s.reveal() for s in entry.secrets] == [new] and entry.mytpe is not None and entry.mytpe.webhook_id == "w-9"
    assert len(made) == 1
