"""`mytpe-relay webhook …`: a source's webhook on MyTPE's side, through MyTPE's configuration API.

status      the URL MyTPE calls and which configured secret its masked one matches (never a secret)
register    point MyTPE at the relay's URL for the source; its new secret goes into the sources file
            (or is printed once, `--print-secret`, for a secret manager); ends by checking MyTPE's
            masked secret against it (relay.ops.register)
rotate      open the rotation window, regenerate, install the new secret first (the old one second),
            check MyTPE's masked secret against it, close the window once the relay verifies with it
            (relay.ops.rotation; every replica given, the file local or a Kubernetes Secret)
unregister  remove the webhook on MyTPE (asks first; `--yes` does not)
reconcile   (new generation) ask MyTPE to redeliver every delivery that failed since a time
endpoints   (new generation) list the trader's endpoints: id, URL, active, events (never a secret)
A call whose answer holds a secret is never retried blindly (relay.mytpe.oneshot). A failure after
MyTPE made a secret, before the file holds it, prints that secret once on stderr: the only copy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import sys
import tempfile
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from relay.mytpe.answers import MytpeApiError
from relay.mytpe.api import MytpeApi
from relay.mytpe.oneshot import Pace
from relay.ops.interrupt import TerminatedBy, as_ctrl_c
from relay.ops.kube import KubeSecret
from relay.ops.register import register
from relay.ops.rotation import Replicas, Target, Waits, rotate
from relay.ops.secret_install import SecretPrinted, reason
from relay.settings import ConfigError, Settings
from relay.sources.config import Source, parse
from relay.sources.remote import api_for, check, expected_url

EXIT_DRIFT = 1
EXIT_API = 3


def load_source(settings: Settings, file: Path | None, name: str) -> tuple[Path, Source]:
    path = file or settings.sources_file
    if path is None:
        raise ConfigError("RELAY_SOURCES_FILE (or --file): the webhook commands work on a sources file")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    source = next((s for s in parse(content, str(path)) if s.name == name), None)
    if source is None:
        raise ConfigError(f"--source: no source named {name!r} in {path}")
    return path, source


async def status(settings: Settings, source: Source, api: MytpeApi) -> int:
    url = expected_url(source, settings)
    drift = await check(source, api, url)
    verdict = "ok" if drift.url_ok else f"DRIFT: expected {url}"
    print(f"source {source.name}: MyTPE calls {drift.url or 'nothing'} ({verdict})")
    if not drift.active:
        print("endpoint: inactive on MyTPE (DRIFT)")
    if drift.secret_ok is None:
        print("secret: not shown by MyTPE's API for this generation, or masked in a shape that cannot be compared")
    elif drift.secret_ok:
        index = drift.secret_index  # from the same read as the verdict: a rotation meanwhile cannot split them
        print(f"secret: MyTPE's masked secret matches configured secret {index}{' (current)' if index == 0 else ''}")
    else:
        print("secret: MyTPE's masked secret matches none of the configured secrets (DRIFT)")
    return EXIT_DRIFT if drift.drifting else 0


async def unregister(source: Source, api: MytpeApi, *, confirm: Callable[[str], bool]) -> int:
    config = source.mytpe
    assert config is not None  # noqa: S101
    if not confirm(f"Remove source {source.name}'s webhook on MyTPE? MyTPE stops delivering to it. [y/N] "):
        print("unchanged")
        return EXIT_DRIFT
    if config.api == "legacy":
        assert config.instance_id is not None  # noqa: S101
        await api.legacy_remove(config.instance_id)
    else:
        assert config.webhook_id is not None  # noqa: S101
        try:
            await api.delete_endpoint(config.webhook_id)
        except MytpeApiError as exc:
            # A 404 from MyTPE itself (a DELETE retried after a 5xx it had applied) means what was asked holds; a
            # gateway's, or a base_url that is not the API's, says nothing: MyTPE's own listing decides, read whole.
            if exc.http_status != 404 or await _still_listed(api, config.webhook_id, exc):
                raise
            print(f"source {source.name}: endpoint {config.webhook_id} is not on MyTPE (already removed)")
            return 0
    print(f"source {source.name}: webhook removed on MyTPE")
    return 0


async def _still_listed(api: MytpeApi, webhook_id: str, refused: MytpeApiError) -> bool:
    try:
        listed = await api.endpoints(strict=True)
    except MytpeApiError as unclear:
        raise MytpeApiError(f"{refused}; whether MyTPE still has it, its listing does not say: {unclear}") from None
    return any(endpoint.id == webhook_id for endpoint in listed)


async def endpoints(source: Source, api: MytpeApi) -> int:
    if source.mytpe is None or source.mytpe.api != "ext":
        raise ConfigError(f"source {source.name}: endpoints needs the new generation's API (api: ext)")
    for endpoint in await api.endpoints():
        mark = " (this source)" if endpoint.id == source.mytpe.webhook_id else ""
        events = ",".join(endpoint.events) or "all events"
        print(f"{endpoint.id} {endpoint.url} {'active' if endpoint.is_active else 'inactive'} {events}{mark}")
    return 0


async def reconcile(source: Source, api: MytpeApi, since: datetime) -> int:
    config = source.mytpe
    if config is None or config.api != "ext" or config.webhook_id is None:
        raise ConfigError(f"source {source.name}: reconcile needs the new generation's API (api: ext, webhook_id)")
    failed = [d for d in await api.deliveries(config.webhook_id) if d.get("status") == "failed"]
    # A failed delivery whose time cannot be read is redelivered too: the relay dedupes, a skipped one is lost.
    undated = sum(1 for d in failed if _time(d.get("created_at")) is None)
    failed = [d for d in failed if (when := _time(d.get("created_at"))) is None or when >= since]
    for delivery in failed:
        await api.redeliver(config.webhook_id, str(delivery["id"]))
    since_text = f"{since.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
    told = f"source {source.name}: asked MyTPE to redeliver {len(failed)} failed delivery(ies) since {since_text}"
    print(told + (f" ({undated} of them with no readable created_at)" if undated else ""))
    return 0


def _time(value: object) -> datetime | None:
    """An RFC 3339 time (one without an offset read as UTC); None when it is not one."""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def add_parser(sub: Any) -> None:
    webhook = sub.add_parser("webhook", help="a source's webhook on MyTPE's side (MyTPE's configuration API)")
    commands = webhook.add_subparsers(dest="webhook_command", required=True)
    for name, help_text in (
        ("status", "the URL MyTPE calls and which configured secret it signs with (exit 1 on drift)"),
        ("register", "point MyTPE at the relay's URL for the source and install the secret it returns"),
        ("rotate", "regenerate the source's secret on MyTPE with nothing lost (window, install, verify)"),
        ("unregister", "remove the source's webhook on MyTPE"),
        ("reconcile", "(new generation) ask MyTPE to redeliver what failed since --since"),
        ("endpoints", "(new generation) list the endpoints MyTPE has for these API credentials"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--source", required=True, help="the source's name in RELAY_SOURCES_FILE")
        command.add_argument("--file", type=Path, help="the sources file to read and write (RELAY_SOURCES_FILE)")
        command.add_argument("--allow-http", action="store_true", help="allow a plain http:// API (a local sandbox)")
        command.set_defaults(run=cmd_webhook)
    commands.choices["register"].add_argument(
        "--print-secret", action="store_true", help="print the new secret once instead of writing it to the file"
    )
    rotate_parser = commands.choices["rotate"]
    rotate_parser.add_argument(
        "--relay-url",
        action="append",
        default=[],
        help="a relay replica to watch (e.g. http://127.0.0.1:8080); repeat it for every replica",
    )
    rotate_parser.add_argument(
        "--window-minutes",
        type=_within(1, 1440, inclusive=True),
        default=15.0,
        help="rotation window length (15; from a minute, the kubelet's sync, to a day)",
    )
    rotate_parser.add_argument(
        "--verify-timeout", type=_within(0, 3600), default=120.0, help="seconds to wait for the new secret"
    )
    rotate_parser.add_argument(
        "--reload-timeout",
        type=_within(0, 3600),
        default=180.0,
        help="seconds for every replica to load a change (180)",
    )
    rotate_parser.add_argument(
        "--kube-secret", help="NAMESPACE/NAME: the sources file is this Kubernetes Secret's key (kubectl)"
    )
    rotate_parser.add_argument("--kube-key", default="sources.yaml", help="the Secret's key (sources.yaml)")
    for name in ("register", "rotate"):
        commands.choices[name].add_argument(
            "--settle-seconds",
            type=_within(0, 3600, inclusive=True),
            default=60.0,
            help="after a call that makes a secret had no answer, how long to watch MyTPE for it (60)",
        )
    commands.choices["unregister"].add_argument("--yes", action="store_true", help="do not ask for confirmation")
    commands.choices["reconcile"].add_argument("--since", required=True, help="RFC 3339 time, e.g. 2026-12-02T10:00Z")


def _within(low: float, high: float, *, inclusive: bool = False) -> Callable[[str], float]:
    """An argument's number: finite, above `low` (or equal, with `inclusive`), at most `high`. A window of 0 or NaN
    minutes would open none (regenerating with no window), and one of a year would answer 503 that long."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (low < value <= high or (inclusive and value == low)):
            raise argparse.ArgumentTypeError(
                f"{text!r}: a number {'from' if inclusive else 'above'} {low:g} to {high:g}"
            )
        return value

    return number


def cmd_webhook(args: argparse.Namespace, env: dict[str, str]) -> int:
    with contextlib.ExitStack() as stack:
        kube = _kube(args)
        file: Path | None = args.file
        if kube is not None:  # a private working copy of the Secret's file, removed at the end
            file = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mytpe-relay-"))) / "sources.yaml"
            file.touch(mode=0o600)
            file.write_bytes(kube.read())
        settings = Settings.from_env({**env, "RELAY_SOURCES_FILE": str(file)} if file else env)
        path, source = load_source(settings, file, args.source)
        api = api_for(source, settings, allow_http=args.allow_http)
        try:
            return asyncio.run(as_ctrl_c(_command(args, settings, path, source, api, kube)))
        except TerminatedBy as exc:  # whatever MyTPE made meanwhile is installed, or printed once, by now
            print(f"mytpe-relay webhook {args.webhook_command}: stopped by {exc}", file=sys.stderr)
            return 128 + exc.signum
        except MytpeApiError as exc:
            print(f"mytpe-relay webhook {args.webhook_command}: {exc}", file=sys.stderr)
            return EXIT_API
        except SecretPrinted:  # its line is on stderr already
            return EXIT_API
        except OSError as exc:  # a write no step expected to fail (e.g. register's webhook_id)
            print(f"mytpe-relay webhook {args.webhook_command}: {reason(exc)}", file=sys.stderr)
            return EXIT_API
    raise AssertionError("unreachable")


def _kube(args: argparse.Namespace) -> KubeSecret | None:
    text = getattr(args, "kube_secret", None)
    if text is None:
        return None
    if args.file is not None:
        raise ConfigError("--kube-secret and --file: give one, the sources file is one or the other")
    if not args.relay_url:
        raise ConfigError(
            "--kube-secret needs --relay-url for every replica: without them nothing tells when the "
            "kubelet has synced the window, and MyTPE would regenerate before any replica serves it"
        )
    return KubeSecret.parse(text, args.kube_key)


def _rotation(args: argparse.Namespace, path: Path, kube: KubeSecret | None) -> tuple[Target, Replicas, Waits]:
    target = Target(path, str(path))
    if kube is not None:
        target = Target(path, str(kube), lambda change: kube.update(path, change))
    waits = Waits(
        window=timedelta(minutes=args.window_minutes),
        reload=args.reload_timeout,
        verify=args.verify_timeout,
        pace=Pace(args.settle_seconds),
    )
    return target, Replicas(tuple(args.relay_url)), waits


def _command(  # noqa: PLR0917 - the command's inputs
    args: argparse.Namespace, settings: Settings, path: Path, source: Source, api: MytpeApi, kube: KubeSecret | None
) -> Coroutine[Any, Any, int]:
    """The coroutine of the subcommand `args` names. Raises ConfigError for a source the command cannot act on,
    before anything changes (a rotate's window, say)."""
    command = args.webhook_command
    config = source.mytpe
    if command in ("rotate", "unregister") and config is not None and config.api == "ext" and not config.webhook_id:
        raise ConfigError(
            f"source {source.name}: {command} needs mytpe.webhook_id on the new generation's API"
            " (`webhook register` writes it; `webhook endpoints` lists them)"
        )
    if command == "status":
        return status(settings, source, api)
    if command == "register":
        return register(settings, path, source, api, print_secret=args.print_secret, pace=Pace(args.settle_seconds))
    if command == "rotate":
        target, replicas, waits = _rotation(args, path, kube)
        return rotate(target, source, api, replicas, waits)
    if command == "unregister":
        return unregister(source, api, confirm=lambda q: args.yes or _ask(q))
    if command == "endpoints":
        return endpoints(source, api)
    return reconcile(source, api, _since(args.since))


def _since(text: str) -> datetime:
    """--since: an RFC 3339 time with its offset; a time without one would be read in whichever zone."""
    try:
        moment: datetime | None = datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", text))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ConfigError(f"--since: {text!r} is not an RFC 3339 time with its offset (e.g. 2026-12-02T10:00Z)")
    return moment


def _ask(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False
