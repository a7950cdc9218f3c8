"""`mytpe-relay sandbox`: a local MyTPE Pay (relay.mytpe.sandbox) for your own loop, on uvicorn."""

from __future__ import annotations

import argparse
import signal
from typing import Any

import uvicorn

from relay.mytpe.sandbox import Sandbox
from relay.mytpe.sandbox_api import create_sandbox_app


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("sandbox", help="a local MyTPE Pay: its management API, and signed deliveries")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--instance", action="append", default=[], help="a legacy MyTPE Pay instance id (repeatable)")
    parser.add_argument("--api-key", default="sandbox-key", help="the X-API-KEY it accepts")
    parser.add_argument("--api-secret", default="sandbox-secret", help="the X-API-SECRET it accepts")
    parser.add_argument("--attempts", type=int, default=3, help="tries per delivery (MyTPE: 3)")
    parser.add_argument("--backoff", type=float, default=4.0, help="seconds before the second try, doubling")
    parser.set_defaults(run=cmd_sandbox)


def cmd_sandbox(args: argparse.Namespace, env: dict[str, str]) -> int:
    sandbox = Sandbox(api_key=args.api_key, api_secret=args.api_secret, attempts=args.attempts, backoff=args.backoff)
    for instance in args.instance or ["abc123-def456"]:
        sandbox.add_instance(instance)
    base = f"http://{args.host}:{args.port}"
    print(f"MyTPE sandbox: legacy API {base}/api/v2, new generation {base}/api/ext, control {base}/sandbox/…")
    print(f"instances: {', '.join(sandbox.instances)}; API key {args.api_key!r} (a sandbox's, not a secret)")
    # uvicorn stops on SIGTERM, then re-raises it into the previous handler: a no-op there makes a clean
    # stop exit 0 instead of dying by the signal (as `serve` does).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.run(create_sandbox_app(sandbox), host=args.host, port=args.port, log_level="warning")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
