"""The sources file (`RELAY_SOURCES_FILE`): parsed and checked whole into an immutable snapshot.

    sources:
      - name: shop                 # [a-z0-9][a-z0-9-]{0,62}; served at POST /webhooks/mytpe/shop
        secrets: [whsec_NEW, whsec_OLD]   # every one verifies; the first is the current one
        instance_id: abc123-def456 # optional: a body's data.instance.id must be this (401 wrong_instance)
                                   # an id YAML reads as a number is refused: "012345" needs its quotes
        rotation_window_until: 2026-12-02T10:15:00Z  # optional: a bad signature gets 503 until then

A file is taken whole or not at all: any error names the file, the entry and the field, never a secret.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import yaml

from relay.settings import ConfigError, Secret

BASE_PATH = "/webhooks/mytpe"
DEFAULT = "default"
"""The name of the source `RELAY_MYTPE_SECRETS` defines, served at `BASE_PATH` itself."""
NO_SOURCE = "unknown"
"""The metrics' `source` label of a request to no source (and of an internal error): no source may be so named."""
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SECRET = re.compile(r"whsec_[A-Za-z0-9_\-]{8,200}")
_FIELDS = ("name", "secrets", "instance_id", "rotation_window_until", "mytpe")
_API_FIELDS = ("api", "base_url", "instance_id", "webhook_id", "api_key_file", "api_secret_file", "allow_http")
_MOMENT = "rotation_window_until must be an RFC 3339 time, like 2026-12-02T10:15:00Z"
_INSTANCE = re.compile(r"[\x21-\x7e]{1,200}")


@dataclass(frozen=True, slots=True)
class MytpeApiConfig:
    """How to reach MyTPE's management API for one source (the `mytpe:` block)."""

    api: str
    """`legacy` (one webhook per MyTPE Pay instance) or `ext` (the new generation's endpoints)."""
    base_url: str
    instance_id: str | None = None
    webhook_id: str | None = None
    api_key_file: str | None = None
    api_secret_file: str | None = None
    allow_http: bool = False


@dataclass(frozen=True, slots=True)
class Source:
    """One MyTPE endpoint: the path it is served at and the secrets that verify it."""

    name: str
    secrets: tuple[Secret, ...]
    instance_id: str | None = None
    rotation_window_until: datetime | None = None
    mytpe: MytpeApiConfig | None = None
    path: str = ""
    keys: tuple[bytes, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", f"{BASE_PATH}/{self.name}")
        object.__setattr__(self, "keys", tuple(secret.reveal().encode("utf-8") for secret in self.secrets))

    def rotating(self, now: float) -> bool:
        """True while the rotation window is open: a bad signature is then answered 503, not 401."""
        until = self.rotation_window_until
        return until is not None and now < until.timestamp()

    def secrets_digest(self) -> str:
        """A digest of the secret list, to tell a change without keeping or printing the values."""
        return hashlib.sha256(b"\n".join(self.keys)).hexdigest()


@dataclass(frozen=True, slots=True)
class SourceSet:
    """Every source served, by path: the one lookup a request makes."""

    by_path: Mapping[str, Source]
    generation: int = 1
    digest: str = ""

    def names(self) -> list[str]:
        return sorted(source.name for source in self.by_path.values())

    def by_name(self, name: str) -> Source | None:
        return next((source for source in self.by_path.values() if source.name == name), None)

    def changed_secrets(self, previous: SourceSet) -> list[Source]:
        """The sources whose secret list differs from `previous` (new sources included)."""
        changed = []
        for path, source in self.by_path.items():
            before = previous.by_path.get(path)
            if before is None or before.keys != source.keys:
                changed.append(source)
        return changed


def legacy(secrets: Sequence[Secret]) -> Source:
    """`RELAY_MYTPE_SECRETS`: the source served at /webhooks/mytpe, as before sources existed."""
    return Source(DEFAULT, tuple(secrets), path=BASE_PATH)


def load(text: bytes, where: str) -> Any:
    """A sources file's YAML document (the safe loader; a key given twice in one mapping is refused: YAML's
    loader keeps the last, so a second `sources:` block dropped every source above it). Raises ConfigError with
    one line naming `where`: a value YAML itself cannot make (a day that does not exist, an integer of
    thousands of digits, `!!bool maybe`) included, which raised ValueError, OverflowError or KeyError before."""
    try:
        _within_bounds(text, where)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except ConfigError:  # nested too deep
        raise
    except Exception as exc:  # YAML's own making of a value: ValueError, OverflowError, and a tag's KeyError...
        raise ConfigError(f"{where}: not valid YAML: a value it cannot read ({type(exc).__name__})") from None


MAX_DEPTH = 64
"""Collections nested in collections a sources file may hold (one has 5). libyaml's composer recurses on the C
stack once per level: a file of 80 KB nested 40,000 deep (`[[[…` or `- - - …`) crashed the process."""


MAX_VALUES = 100_000
"""Values (scalars and collections) a sources file may hold with its aliases expanded (200 sources take about
5,000). YAML shares an aliased value, but an error line quoting it, or the editor's copy, expands it: nine
levels of ten aliases each (`a: &a [x, x, ...]`, `b: &b [*a, *a, ...]`, ...), a few hundred bytes, expand to
a billion, which froze the event loop and then ended the process out of memory."""


def _within_bounds(text: bytes, where: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH, or of more than MAX_VALUES values once its aliases are
    expanded, read as parser events (libyaml's parser keeps its own stack: it does not recurse) before anything
    composes it."""
    values = 0
    anchored: dict[str, int] = {}  # an anchor's value: how many values it holds, expanded
    started: list[tuple[str | None, int]] = []  # each open collection: its anchor, the values before it
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            values += anchored.get(event.anchor or "", 1)
        elif isinstance(event, yaml.ScalarEvent):
            values += 1
            if event.anchor is not None:
                anchored[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            started.append((event.anchor, values))
            values += 1
            if len(started) > MAX_DEPTH:
                raise ConfigError(f"{where}: not valid YAML: collections nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before = started.pop()
            if anchor is not None:
                anchored[anchor] = values - before
        if values > MAX_VALUES:
            raise ConfigError(f"{where}: not valid YAML: more than {MAX_VALUES:,} values once its aliases are expanded")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, refusing a mapping that gives one key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    problem = f"the key {_shown(key.value)} is given twice in one mapping"
                    raise yaml.constructor.ConstructorError(None, None, problem, key.start_mark)
                seen.add(key.value)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def parse(text: bytes, where: str, *, reserved: Sequence[str] = ()) -> list[Source]:
    """The sources of a file's content. Raises ConfigError with one line naming `where` and the problem."""
    document = load(text, where)
    if not isinstance(document, dict) or set(document) != {"sources"}:
        raise ConfigError(f"{where}: expected one top-level key, 'sources:', holding a list")
    entries = document["sources"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: 'sources' must be a non-empty list")
    sources: list[Source] = []
    for index, entry in enumerate(entries):
        source = _source(entry, f"{where}: sources[{index}]")
        if source.name in reserved:
            raise ConfigError(f"{where}: sources[{index}]: the name {source.name!r} is reserved (RELAY_MYTPE_SECRETS)")
        if source.name == NO_SOURCE:
            raise ConfigError(f"{where}: sources[{index}]: the name {NO_SOURCE!r} is reserved (requests to no source)")
        if any(other.name == source.name for other in sources):
            raise ConfigError(f"{where}: sources[{index}]: the name {source.name!r} is used twice")
        sources.append(source)
    return sources


def _source(entry: Any, at: str) -> Source:
    if not isinstance(entry, dict):
        raise ConfigError(f"{at}: expected a mapping with name and secrets")
    unknown = sorted(str(key) for key in entry if key not in _FIELDS)
    if unknown:
        raise ConfigError(f"{at}: unknown field {_shown(unknown[0])} (known: {', '.join(_FIELDS)})")
    name = entry.get("name")
    _quoted(name, f"{at}: name")
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise ConfigError(f"{at}: name must match {NAME.pattern}, got {_shown(name)}")
    at = f"{at} ({name})"
    secrets = entry.get("secrets")
    if not isinstance(secrets, list) or not secrets:
        raise ConfigError(f"{at}: secrets must be a non-empty list")
    for number, secret in enumerate(secrets):
        if not isinstance(secret, str) or _SECRET.fullmatch(secret) is None:
            # never the value: it may be a real secret with a typo
            raise ConfigError(f"{at}: secrets[{number}] is not a MyTPE secret (whsec_ followed by letters and digits)")
    if len(set(secrets)) != len(secrets):
        raise ConfigError(f"{at}: a secret is listed twice")
    instance_id = _instance(entry.get("instance_id"), at)
    return Source(
        name,
        tuple(Secret(secret) for secret in secrets),
        instance_id=instance_id,
        rotation_window_until=_moment(entry.get("rotation_window_until"), at),
        mytpe=_api(entry.get("mytpe"), f"{at}: mytpe", instance_id),
    )


def _api(block: Any, at: str, instance_id: str | None) -> MytpeApiConfig | None:
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ConfigError(f"{at}: expected a mapping (api, base_url, …)")
    unknown = sorted(str(key) for key in block if key not in _API_FIELDS)
    if unknown:
        raise ConfigError(f"{at}: unknown field {_shown(unknown[0])} (known: {', '.join(_API_FIELDS)})")
    api, base_url = block.get("api", "legacy"), block.get("base_url")
    if api not in ("legacy", "ext"):
        raise ConfigError(f"{at}.api: legacy or ext, got {_shown(api)}")
    if not _callable_url(base_url):
        raise ConfigError(f"{at}.base_url: an https:// URL is required: a host, a port and a path at most")
    texts = {name: block.get(name) for name in ("instance_id", "webhook_id", "api_key_file", "api_secret_file")}
    _quoted(texts["instance_id"], f"{at}.instance_id")
    _quoted(texts["webhook_id"], f"{at}.webhook_id")
    bad = next((name for name, value in texts.items() if value is not None and not isinstance(value, str)), None)
    if bad:
        raise ConfigError(f"{at}.{bad}: expected text")
    for name in ("instance_id", "webhook_id"):  # sent in MyTPE's URL paths: "" would fall back, a space mislead
        value = texts[name]
        if isinstance(value, str) and _INSTANCE.fullmatch(value) is None:
            raise ConfigError(f"{at}.{name}: 1 to 200 visible ASCII characters, got {_shown(value)}")
    config = MytpeApiConfig(
        api=api,
        base_url=base_url,
        instance_id=texts["instance_id"] or instance_id,
        webhook_id=texts["webhook_id"],
        api_key_file=texts["api_key_file"],
        api_secret_file=texts["api_secret_file"],
        allow_http=block.get("allow_http") is True,
    )
    if api == "legacy" and config.instance_id is None:
        raise ConfigError(f"{at}: the legacy API needs instance_id (here or on the source)")
    if base_url.startswith("http://") and not config.allow_http:
        raise ConfigError(f"{at}.base_url: http:// only with allow_http: true (a local sandbox)")
    return config


def _instance(value: Any, at: str) -> str | None:
    if value is None:
        return None
    _quoted(value, f"{at}: instance_id")
    if not isinstance(value, str) or _INSTANCE.fullmatch(value) is None:
        raise ConfigError(f"{at}: instance_id must be 1-200 visible ASCII characters")
    return value


def _quoted(value: Any, at: str) -> None:
    """Refuse an id YAML did not read as text: unquoted, 012345 reads as 5349 and 12:30:45 as 45045."""
    if value is None or isinstance(value, str | list | dict):
        return
    kind = {"bool": "true/false", "date": "a date", "datetime": "a time"}.get(type(value).__name__, "a number")
    raise ConfigError(f"{at}: YAML read this id as {kind}, which changes ids (012345 reads as 5349); put it in quotes")


def _moment(value: Any, at: str) -> datetime | None:
    """YAML reads an unquoted timestamp as a datetime; a quoted one arrives as text. Both are accepted."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{at}: {_MOMENT}") from None
    if not isinstance(value, datetime):
        raise ConfigError(f"{at}: {_MOMENT}")
    if value.tzinfo is None:
        raise ConfigError(f"{at}: rotation_window_until needs a time zone (Z for UTC)")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # an offset that takes it out of the years datetime has (0001-01-01T00:00:00+01:00)
        raise ConfigError(f"{at}: {_MOMENT}") from None


def _callable_url(value: object) -> TypeGuard[str]:
    """`value` is a URL MyTPE's API can be called at: http(s), a host, a valid port, no user, query or fragment
    (the client appends paths to it), nothing blank or unprintable. urlsplit refused some only at each call."""
    if not isinstance(value, str) or not value.startswith(("https://", "http://")) or "?" in value or "#" in value:
        return False
    if any(c.isspace() or not c.isprintable() for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - read for its ValueError: a port out of range, or not a number
    except ValueError:
        return False
    return bool(parts.hostname) and "@" not in parts.netloc


def _shown(value: Any) -> str:
    """`value` as an error line quotes it: cut at 70 characters, and never a secret pasted in the wrong place."""
    text = repr(value)
    if "whsec_" in text:
        return "a value holding whsec_ (a secret? not shown)"
    return text if len(text) <= 70 else text[:67] + "..."


def snapshot(sources: Sequence[Source], *, generation: int, digest: str) -> SourceSet:
    return SourceSet({source.path: source for source in sources}, generation=generation, digest=digest)
