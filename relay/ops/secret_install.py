"""The operator's side of a secret MyTPE shows once: made without blind retries (relay.mytpe.oneshot),
installed first in the source's list and read back, compared with MyTPE's masked secret, and printed
once on stderr if anything fails before the sources file holds it (it is then the only copy)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from relay.mytpe.answers import MytpeApiError
from relay.mytpe.api import MytpeApi
from relay.mytpe.masks import mask_readable, masked_matches
from relay.mytpe.oneshot import Pace, regenerate_endpoint, regenerate_legacy
from relay.settings import ConfigError
from relay.sources.config import Source, parse
from relay.sources.editor import edit, set_window


async def regenerate(api: MytpeApi, source: Source, pace: Pace) -> str:
    config = source.mytpe
    assert config is not None  # noqa: S101
    if config.api == "legacy":
        assert config.instance_id is not None  # noqa: S101
        return await regenerate_legacy(api, config.instance_id, pace=pace, say=say)
    assert config.webhook_id is not None  # noqa: S101
    return await regenerate_endpoint(api, config.webhook_id, pace=pace, say=say)


async def agrees(api: MytpeApi, source: Source, secret: str | None) -> bool | None:
    """Whether MyTPE's masked secret ends like `secret` (None: like one of the source's); None when
    MyTPE shows no secret to compare (the new generation, or a mask in a shape its docs do not give)."""
    config = source.mytpe
    if config is None or config.api != "legacy" or config.instance_id is None:
        return None
    hook = await api.legacy_get(config.instance_id)
    if hook.has_secret and not mask_readable(hook.masked_secret):
        return None  # unknown, not another secret: never a reason to regenerate
    held = [secret] if secret is not None else [s.reveal() for s in source.secrets]
    return hook.has_secret and any(masked_matches(hook.masked_secret, s) for s in held)


def say(note: str) -> None:
    print(f"  {note}")


class SecretPrinted(Exception):
    """A failure after MyTPE made a secret the file does not hold: the secret is printed on stderr."""


@contextlib.contextmanager
def only_copy(secret: str | None, where: str) -> Iterator[None]:
    """Any failure inside prints `secret` once on stderr (MyTPE made it; this is the only copy)."""
    try:
        yield
    except BaseException as exc:
        if secret is None:
            raise
        print(
            f"mytpe-relay webhook: MyTPE signs with a new secret that {where} does not hold ({reason(exc)}): "
            f"it is the only copy, install it by hand: {secret}",
            file=sys.stderr,
        )
        if isinstance(exc, Exception):
            raise SecretPrinted from None
        raise


def reason(exc: BaseException) -> str:
    """One line for why a write failed, never a file's content."""
    if isinstance(exc, OSError):
        return f"cannot write: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, (ConfigError, MytpeApiError)):
        return str(exc)
    return type(exc).__name__  # a YAML error's text may quote the file, secrets and all


def install(
    path: Path,
    name: str,
    secret: str,
    *,
    keep: int,
    drop: str | None = None,
    window: datetime | None = None,
    webhook_id: str | None = None,
) -> None:
    """`secret` first in the source's list, then `keep` of the others (not `drop`), the rotation window's end set
    to `window` and the MyTPE endpoint's id to `webhook_id` when given, in one write; read back to be sure."""

    def change(entry: dict[str, Any]) -> None:
        others = [s for s in entry.get("secrets") or [] if s not in (secret, drop)]
        entry["secrets"] = [secret, *others[:keep]]
        if window is not None:
            set_window(window)(entry)
        if webhook_id is not None:  # with its secret: never the one without the other
            entry.setdefault("mytpe", {}).update(webhook_id=webhook_id)

    edit(path, name, change)
    written = next((s for s in parse(path.read_bytes(), str(path)) if s.name == name), None)
    if written is None or not written.secrets or written.secrets[0].reveal() != secret:
        raise ConfigError(f"{path}: the new secret is not first in source {name} after writing")
    if webhook_id is not None and (written.mytpe is None or written.mytpe.webhook_id != webhook_id):
        raise ConfigError(f"{path}: source {name} does not name endpoint {webhook_id} after writing")
