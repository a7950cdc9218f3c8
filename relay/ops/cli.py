"""`mytpe-relay`: serve, send, verify, tail, replay, check. Each subcommand returns an exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging.config
import os
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette

from relay import __version__, tracing
from relay.errors import RelayError, StartupError
from relay.http.app import create_app
from relay.http.server import RelayServer, server_config, tune_gc, unsupported_uvicorn
from relay.kafka.connection import KafkaUnreachable
from relay.kafka.durability import Wanted
from relay.kafka.publisher import probe
from relay.logs import build_log_config
from relay.mytpe import samples, signatures
from relay.ops import sandbox, spool, webhook
from relay.ops.captured import Captured
from relay.ops.check import check
from relay.ops.interrupt import TerminatedBy, as_ctrl_c
from relay.ops.replay import ANY_AGE, run_replay
from relay.ops.tail import tail
from relay.ops.topics import apply_topics
from relay.settings import ConfigError, KafkaTarget, Settings, merged_env
from relay.sources.config import BASE_PATH, parse
from relay.tracing import TracingConfig

if TYPE_CHECKING:
    from relay.tracing.otel import Tracer

EXIT_NOT_READY = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3
DEFAULT_URL = "http://127.0.0.1:8080/webhooks/mytpe"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environ = dict(os.environ if env is None else env)
    try:
        code: int = args.run(args, environ)
    except ConfigError as exc:
        print(f"mytpe-relay: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mytpe-relay tail | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mytpe-relay", description="MyTPE Pay webhooks into Kafka.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the webhook ingress")
    serve.add_argument("--host", help="listen address (RELAY_HOST)")
    serve.add_argument("--port", type=int, help="listen port (RELAY_PORT)")
    serve.set_defaults(run=cmd_serve)

    send = sub.add_parser("send", help="sign and POST a realistic MyTPE webhook (local testing)")
    send.add_argument("event", choices=[*samples.EVENTS, "all"], metavar="EVENT", help="event type, or 'all'")
    send.add_argument("--url", default=DEFAULT_URL)
    send.add_argument(
        "--source", help="post to /webhooks/mytpe/SOURCE, signed with its current secret (RELAY_SOURCES_FILE)"
    )
    send.add_argument("--secret", help="signing secret (default: the source's, else the first of RELAY_MYTPE_SECRETS)")
    send.add_argument("--count", type=int, default=1, help="deliveries per event type")
    send.add_argument("--delivery-id", help="reuse this delivery id (to exercise dedupe)")
    send.add_argument("--timestamp", type=int, help="signed Unix time (default: now)")
    send.set_defaults(run=cmd_send)

    verify = sub.add_parser("verify", help="check the signature of a captured request body")
    verify.add_argument("--secret", required=True)
    verify.add_argument("--timestamp", required=True, help="the X-MytpePay-Timestamp value")
    verify.add_argument("--signature", required=True, help="the X-MytpePay-Signature value")
    verify.add_argument("--window", type=int, help="also apply a replay window of this many seconds")
    verify.add_argument("file", type=Path, help="the raw body, byte for byte ('-' for stdin)")
    verify.set_defaults(run=cmd_verify)

    tail = sub.add_parser("tail", help="consume and pretty-print relayed events")
    tail.add_argument("topics", nargs="*", metavar="TOPIC", help="default: every relay topic and the DLQ")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max", type=int, help="exit after this many records")
    tail.add_argument("--timeout", type=float, help="exit after this many seconds")
    tail.set_defaults(run=cmd_tail)

    replay = sub.add_parser("replay", help="re-inject DLQ records or captured signed requests, idempotently")
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", type=Path, help="captured requests, JSON Lines (docs/consumers.md#replay)")
    source.add_argument("--from-dlq", action="store_true", help="re-route what the DLQ holds now")
    replay.add_argument("--dry-run", action="store_true", help="verify and route only: publish nothing")
    replay.add_argument("--progress", choices=("auto", "always", "never"), default="auto", help="bar on stderr")
    replay.set_defaults(run=cmd_replay)

    topics = sub.add_parser("topics", help="the relay's Kafka topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    topics_apply = topics_sub.add_parser("apply", help="create missing topics durable; raise what is below")
    topics_apply.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
    topics_apply.add_argument("--partitions", type=int, help="RELAY_TOPIC_PARTITIONS (default 6)")
    topics_apply.add_argument("--replication-factor", type=int, help="RELAY_TOPIC_REPLICATION_FACTOR (default 3)")
    topics_apply.add_argument("--min-insync-replicas", type=int, help="RELAY_TOPIC_MIN_INSYNC_REPLICAS (default 2)")
    topics_apply.add_argument("--allow-lower", action="store_true", help="also lower min.insync.replicas")
    topics_apply.set_defaults(run=cmd_topics_apply)

    check = sub.add_parser("check", help="configuration and connectivity check; exit 0 when ready")
    check.set_defaults(run=cmd_check)

    webhook.add_parser(sub)
    sandbox.add_parser(sub)
    spool.add_parser(sub)
    return parser


def cmd_serve(args: argparse.Namespace, env: dict[str, str]) -> int:
    unsupported = unsupported_uvicorn()
    if unsupported is not None:
        print(f"mytpe-relay: cannot start: {unsupported}", file=sys.stderr)
        return EXIT_STARTUP
    overrides = {"RELAY_HOST": args.host, "RELAY_PORT": str(args.port) if args.port else None}
    settings = Settings.from_env({**env, **{k: v for k, v in overrides.items() if v}})
    log_config = build_log_config(settings.log_level, settings.log_format)
    tracing_config = TracingConfig.from_env(env)
    tracer = tracing.start(tracing_config)  # configured without the otel extra: exit 2, like any bad setting
    if tracer is not None:
        tracer.watch_logs(log_config)
    logging.config.dictConfig(log_config)
    try:
        return _serve(settings, log_config, tracer, tracing_config)
    finally:
        if tracer is not None:
            tracer.shutdown()  # what the exporter still holds, for at most 5 s


def _serve(settings: Settings, log_config: dict[str, Any], tracer: Tracer | None, traced: TracingConfig) -> int:
    app = create_app(settings, tracer=tracer)  # reads the sources file: a bad one is exit 2 before any connection
    logging.getLogger("relay").info("%s", traced.describe())  # after: a refused configuration stays one line
    problem = asyncio.run(_probe_kafka(settings))
    if problem is not None and not (settings.spool_dir is not None and isinstance(problem, KafkaUnreachable)):
        print(f"mytpe-relay: cannot start: {problem}", file=sys.stderr)
        return EXIT_STARTUP
    config = server_config(app, settings, log_config=log_config)
    server = RelayServer(config, on_stopping=lambda: _mark_stopping(app), delay=settings.shutdown_delay_seconds)
    tune_gc()
    # uvicorn drains on SIGTERM, then re-raises the signal into the previous handler; a no-op there
    # turns a completed graceful shutdown into exit 0 instead of death by signal.
    previous = signal.signal(signal.SIGTERM, _drained)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when the lifespan's startup failed; the reason is one line, below
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        reason = getattr(app.state, "startup_error", "the server did not start (see the log)")
        print(f"mytpe-relay: cannot start: {reason}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


def _drained(signum: int, frame: FrameType | None) -> None:
    return None


def _mark_stopping(app: Starlette) -> None:
    app.state.stopping = True


async def _probe_kafka(settings: Settings) -> StartupError | None:
    """None when Kafka answers a metadata request within the startup bound, else why not. A relay with a
    spool starts when Kafka is only unreachable (KafkaUnreachable): the spool takes the records."""
    try:
        await probe(settings, metadata_timeout=2.0)
    except StartupError as exc:
        return exc
    return None


def cmd_send(args: argparse.Namespace, env: dict[str, str]) -> int:
    url, secret = args.url, args.secret
    if args.source:
        url, current = _source_target(args.url, args.source, merged_env(env))
        secret = secret or current
    secret = secret or next((s.strip() for s in env.get("RELAY_MYTPE_SECRETS", "").split(",") if s.strip()), "")
    if not secret:
        print(
            "mytpe-relay send: give --secret, --source with RELAY_SOURCES_FILE, or RELAY_MYTPE_SECRETS", file=sys.stderr
        )
        return EXIT_CONFIG
    events = samples.EVENTS if args.event == "all" else (args.event,)
    failures = 0
    for event in events:
        for _ in range(max(args.count, 0)):
            delivery_id = args.delivery_id or str(uuid.uuid4())
            body = samples.build(event, delivery_id=delivery_id)
            status, text = post_webhook(
                url, secret, body, event=event, delivery_id=delivery_id, timestamp=args.timestamp
            )
            failures += not 200 <= status < 300
            print(f"{status} {event} {delivery_id} {text}")
    return 0 if failures == 0 else EXIT_NOT_READY


def _source_target(url: str, name: str, env: Mapping[str, str]) -> tuple[str, str]:
    """The source's URL (`url`'s base path + /NAME) and its current secret, from RELAY_SOURCES_FILE."""
    file = env.get("RELAY_SOURCES_FILE")
    if not file:
        raise ConfigError("RELAY_SOURCES_FILE: needed by --source (the file names the source's secrets)")
    path = Path(file)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"RELAY_SOURCES_FILE {path}: cannot read: {exc.strerror}") from None
    source = next((s for s in parse(content, f"RELAY_SOURCES_FILE {path}") if s.name == name), None)
    if source is None:
        raise ConfigError(f"--source: no source named {name!r} in {path}")
    base = url[: -len(BASE_PATH)] if url.endswith(BASE_PATH) else url.rstrip("/")
    return base + source.path, source.secrets[0].reveal()


def post_webhook(
    url: str, secret: str, body: bytes, *, event: str, delivery_id: str, timestamp: int | None = None
) -> tuple[int, str]:
    """POST `body` signed as MyTPE signs it; returns the status and the response body."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own relay
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "MytpePay-Webhook/1.0",
            "X-MytpePay-Signature": signatures.sign(secret, stamp, body),
            "X-MytpePay-Timestamp": stamp,
            "X-MytpePay-Event": event,
            "X-MytpePay-Delivery-Id": delivery_id,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, f"connection failed: {getattr(exc, 'reason', exc)}"


def cmd_verify(args: argparse.Namespace, env: dict[str, str]) -> int:
    body = sys.stdin.buffer.read() if str(args.file) == "-" else args.file.read_bytes()
    headers = Captured(
        "cli",
        {signatures.SIGNATURE: args.signature, signatures.TIMESTAMP: args.timestamp, signatures.DELIVERY_ID: "cli"},
    )
    try:
        parsed = signatures.parse_headers(headers)
        window = args.window if args.window is not None else ANY_AGE
        signatures.verify(parsed, body, [args.secret.encode()], now=time.time(), tolerance=window)
    except RelayError as exc:
        print(f"invalid: {exc.reason} ({exc.detail})" if exc.detail else f"invalid: {exc.reason}")
        return 1
    print(f"valid: {len(body)} bytes signed at {parsed.timestamp} ({int(time.time()) - parsed.timestamp}s ago)")
    return 0


def cmd_tail(args: argparse.Namespace, env: dict[str, str]) -> int:
    target = KafkaTarget.from_env(env)
    topics = args.topics or target.topics()
    try:
        return asyncio.run(
            tail(
                target.bootstrap_servers,
                topics,
                security=target.security,
                from_beginning=args.from_beginning,
                limit=args.max,
                timeout=args.timeout,
            )
        )
    except StartupError as exc:
        print(f"mytpe-relay tail: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP


def stopped_line(stopped: str) -> str:
    """Where a replay stopped, and what to do: a record the DLQ refused too stops every rerun there."""
    if stopped.endswith(":kafka_refused"):
        return f"replay: stopped at {stopped}; the DLQ refused it too: raise its max.message.bytes, then run it again"
    return f"replay: stopped at {stopped}; run it again to resume (replays are idempotent)"


def cmd_replay(args: argparse.Namespace, env: dict[str, str]) -> int:
    settings = Settings.from_env(env)
    if args.file is not None and not args.file.is_file():
        why = "not a regular file" if args.file.exists() else "no such file"  # a directory, a FIFO
        print(f"mytpe-relay replay: {args.file}: {why}", file=sys.stderr)
        return EXIT_CONFIG
    if settings.dedupe_in_memory and not args.dry_run:
        print(
            "mytpe-relay replay: RELAY_DEDUPE_URL is memory://, so only repeats within this run are skipped;"
            " point it at the relay's Redis to skip what was already relayed",
            file=sys.stderr,
        )
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    tracer = tracing.start(TracingConfig.from_env(env))
    try:
        run = run_replay(settings, args.file, dry_run=args.dry_run, show_progress=show, tracer=tracer)
        report = asyncio.run(as_ctrl_c(run))  # a deleted Job's SIGTERM: flushed and committed, as after Ctrl-C
    except StartupError as exc:
        print(f"mytpe-relay replay: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except TerminatedBy as exc:
        with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
            print(
                f"mytpe-relay replay: stopped by {exc}; run it again to resume (replays are idempotent)",
                file=sys.stderr,
            )
        return 128 + exc.signum
    finally:
        if tracer is not None:
            tracer.shutdown()
    source = str(args.file) if args.file is not None else settings.router().dlq
    tally = ", ".join(f"{name} {count}" for name, count in sorted(report.counts.items())) or "nothing to do"
    print(f"replay: {report.processed} entr{'y' if report.processed == 1 else 'ies'} from {source}: {tally}")
    for problem in report.problems:
        print(f"  {problem}")
    if report.stopped:
        print(stopped_line(report.stopped))
    return 0 if report.complete else EXIT_NOT_READY


def cmd_topics_apply(args: argparse.Namespace, env: dict[str, str]) -> int:
    overrides = {
        "RELAY_TOPIC_PARTITIONS": args.partitions,
        "RELAY_TOPIC_REPLICATION_FACTOR": args.replication_factor,
        "RELAY_TOPIC_MIN_INSYNC_REPLICAS": args.min_insync_replicas,
    }
    settings = Settings.from_env({**env, **{k: str(v) for k, v in overrides.items() if v is not None}})
    wanted = Wanted(
        partitions=settings.topic_partitions,
        replication_factor=settings.topic_replication_factor,
        min_insync_replicas=settings.topic_min_insync_replicas,
    )
    try:
        asyncio.run(apply_topics(settings, wanted, dry_run=args.dry_run, allow_lower=args.allow_lower))
    except StartupError as exc:
        print(f"mytpe-relay topics: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


def cmd_check(args: argparse.Namespace, env: dict[str, str]) -> int:
    settings = Settings.from_env(env)
    tracing_config = TracingConfig.from_env(env)
    tracer = tracing.start(tracing_config)  # the extra missing: exit 2, as `serve` would
    if tracer is not None:
        tracer.shutdown()
    return 0 if asyncio.run(check(settings, tracing=tracing_config)) else EXIT_NOT_READY
