"""`mytpe-relay webhook …`: a source's webhook on MyTPE's side, through MyTPE's configuration API.

status      the URL MyTPE calls and which configured secret its masked one matches (never a secret)
register    point MyTPE at the relay's URL for the source; its new secret goes into the sources file
            (or is printed once, `--print-secret`, for a secret manager)
rotate      open the rotation window, regenerate, install the new secret first (the old one second),
            close the window once the relay verifies with the new one
unregister  remove the webhook on MyTPE (asks first; `--yes` does not)
reconcile   (new generation) ask MyTPE to redeliver every delivery that failed since a time
endpoints   (new generation) list the trader's endpoints: id, URL, active, events (never a secret)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from relay.mytpe.api import MytpeApi, MytpeApiError, masked_matches
from relay.settings import ConfigError, Settings
from relay.sources.config import Source, parse
from relay.sources.editor import edit, install_secret, set_window
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
        print("secret: not shown by MyTPE's API for this generation")
    elif drift.secret_ok:
        assert source.mytpe is not None and source.mytpe.instance_id is not None  # noqa: S101
        masked = (await api.legacy_get(source.mytpe.instance_id)).masked_secret
        index = next(i for i, s in enumerate(source.secrets) if masked_matches(masked, s.reveal()))
        print(f"secret: MyTPE's masked secret matches configured secret {index}{' (current)' if index == 0 else ''}")
    else:
        print("secret: MyTPE's masked secret matches none of the configured secrets (DRIFT)")
    return EXIT_DRIFT if drift.drifting else 0


async def register(settings: Settings, path: Path, source: Source, api: MytpeApi, *, print_secret: bool) -> int:
    url = expected_url(source, settings)
    config = source.mytpe
    assert config is not None  # noqa: S101 - api_for checked it
    if config.api == "legacy":
        assert config.instance_id is not None  # noqa: S101
        secret = await api.legacy_set_url(config.instance_id, url)
        webhook_id = None
    else:
        endpoint = await api.create_endpoint(url, [], description=f"mytpe-relay source {source.name}")
        secret, webhook_id = endpoint.secret, endpoint.id
    print(f"source {source.name}: MyTPE now calls {url}")
    if webhook_id is not None:
        edit(path, source.name, lambda entry: entry.setdefault("mytpe", {}).update(webhook_id=webhook_id))
        print(f"webhook_id {webhook_id} written to {path}")
    if secret is None:
        print("MyTPE kept the secret it had; `webhook status` tells whether it is one of the source's")
        return 0
    if print_secret:
        print(f"secret (shown once, store it now): {secret}")
        return 0
    edit(path, source.name, install_secret(secret, keep=0))  # MyTPE's first secret replaces any placeholder
    print(f"secret written to {path} as the source's only secret")
    return 0


async def rotate(
    path: Path, source: Source, api: MytpeApi, *, window: timedelta, relay_url: str | None, verify_timeout: float
) -> int:
    config = source.mytpe
    assert config is not None  # noqa: S101
    generation = _metric(relay_url, "mytpe_relay_config_generation", {})
    edit(path, source.name, set_window(datetime.now(UTC) + window))
    print(f"1. rotation window open until {window} from now (a bad signature gets 503, and is parked)")
    await _reloaded(relay_url, generation, 30.0)
    if config.api == "legacy":
        assert config.instance_id is not None  # noqa: S101
        secret = await api.legacy_regenerate(config.instance_id)
    else:
        assert config.webhook_id is not None  # noqa: S101
        secret = await api.regenerate_endpoint(config.webhook_id)
    print("2. secret regenerated on MyTPE (the old one no longer signs)")
    try:
        generation = _metric(relay_url, "mytpe_relay_config_generation", {})
        edit(path, source.name, install_secret(secret))
    except (OSError, ConfigError) as exc:  # the only copy of the new secret: never lose it
        print(f"could not write {path}: {exc}; install this secret by hand: {secret}", file=sys.stderr)
        return EXIT_API
    print(f"3. new secret installed first in {path}, the previous one kept second for late retries")
    if relay_url is None:
        print("4. no --relay-url: the window closes by itself at its end")
        return 0
    await _reloaded(relay_url, generation, 30.0)
    labels = {"source": source.name, "secret_index": "0"}
    before = _metric(relay_url, "mytpe_relay_secret_matches_total", labels) or 0.0
    deadline = time.monotonic() + verify_timeout
    while (_metric(relay_url, "mytpe_relay_secret_matches_total", labels) or 0.0) <= before:
        if time.monotonic() > deadline:
            print(f"4. nothing verified with the new secret within {verify_timeout:g}s; the window closes by itself")
            return EXIT_DRIFT
        await asyncio.sleep(0.5)
    edit(path, source.name, set_window(None))
    print("4. the relay verifies with the new secret: rotation window closed")
    return 0


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
        await api.delete_endpoint(config.webhook_id)
    print(f"source {source.name}: webhook removed on MyTPE")
    return 0


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
    failed = [
        d
        for d in await api.deliveries(config.webhook_id)
        if d.get("status") == "failed" and _time(d.get("created_at")) >= since
    ]
    for delivery in failed:
        await api.redeliver(config.webhook_id, str(delivery["id"]))
    since_text = f"{since:%Y-%m-%dT%H:%M:%SZ}"
    print(f"source {source.name}: asked MyTPE to redeliver {len(failed)} failed delivery(ies) since {since_text}")
    return 0


def _time(value: object) -> datetime:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def _metric(relay_url: str | None, name: str, labels: dict[str, str]) -> float | None:
    """One sample of the relay's /metrics, or None when there is no relay to ask."""
    if relay_url is None:
        return None
    try:
        with urllib.request.urlopen(relay_url.rstrip("/") + "/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def _reloaded(relay_url: str | None, generation: float | None, timeout: float) -> None:
    """Wait (bounded) until the relay serves a newer generation of its sources than `generation`."""
    if relay_url is None or generation is None:
        return
    deadline = time.monotonic() + timeout
    while (_metric(relay_url, "mytpe_relay_config_generation", {}) or 0.0) <= generation:
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


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
        "--relay-url", help="the relay to watch (e.g. http://127.0.0.1:8080) to close the window"
    )
    rotate_parser.add_argument("--window-minutes", type=float, default=15.0, help="rotation window length (15)")
    rotate_parser.add_argument("--verify-timeout", type=float, default=120.0, help="seconds to wait for the new secret")
    commands.choices["unregister"].add_argument("--yes", action="store_true", help="do not ask for confirmation")
    commands.choices["reconcile"].add_argument("--since", required=True, help="RFC 3339 time, e.g. 2026-12-02T10:00Z")


def cmd_webhook(args: argparse.Namespace, env: dict[str, str]) -> int:
    settings = Settings.from_env({**env, "RELAY_SOURCES_FILE": str(args.file)} if args.file else env)
    path, source = load_source(settings, args.file, args.source)
    api = api_for(source, settings, allow_http=args.allow_http)
    try:
        return asyncio.run(_command(args, settings, path, source, api))
    except MytpeApiError as exc:
        print(f"mytpe-relay webhook {args.webhook_command}: {exc}", file=sys.stderr)
        return EXIT_API


def _command(
    args: argparse.Namespace, settings: Settings, path: Path, source: Source, api: MytpeApi
) -> Coroutine[Any, Any, int]:
    """The coroutine of the subcommand `args` names."""
    command = args.webhook_command
    if command == "status":
        return status(settings, source, api)
    if command == "register":
        return register(settings, path, source, api, print_secret=args.print_secret)
    if command == "rotate":
        window = timedelta(minutes=args.window_minutes)
        return rotate(path, source, api, window=window, relay_url=args.relay_url, verify_timeout=args.verify_timeout)
    if command == "unregister":
        return unregister(source, api, confirm=lambda q: args.yes or _ask(q))
    if command == "endpoints":
        return endpoints(source, api)
    since = _time(args.since)
    if since == datetime.min.replace(tzinfo=UTC):
        raise ConfigError(f"--since: {args.since!r} is not an RFC 3339 time")
    return reconcile(source, api, since)


def _ask(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False
