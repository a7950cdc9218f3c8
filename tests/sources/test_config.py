"""The sources file: the minimal form as the issue writes it, the optional fields, one test per kind of error."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest

from relay.settings import ConfigError
from relay.sources.config import BASE_PATH, legacy, parse, snapshot
from tests.helpers import OLD_SECRET, SECRET

MINIMAL = f"""
sources:
  - name: shop        # [a-z0-9][a-z0-9-]{{0,62}}; served at POST /webhooks/mytpe/shop
    secrets:
      - {SECRET}       # every listed secret verifies this source; the first is the current one
""".encode()


def test_the_minimal_form_works_as_written() -> None:
    (shop,) = parse(MINIMAL, "f")
    assert shop.name == "shop"
    assert shop.path == "/webhooks/mytpe/shop"
    assert [s.reveal() for s in shop.secrets] == [SECRET]
    assert shop.keys == (SECRET.encode(),)
    assert shop.instance_id is None and shop.rotation_window_until is None


def test_optional_fields() -> None:
    text = f"""
sources:
  - name: clinic-2
    secrets: [{SECRET}, {OLD_SECRET}]
    instance_id: abc123-def456
    rotation_window_until: 2026-12-02T10:15:00Z
  - name: kiosk
    secrets: ["{SECRET}"]
    instance_id: "012345"
    rotation_window_until: "2026-12-02T11:15:00+01:00"
""".encode()
    clinic, kiosk = parse(text, "f")
    assert clinic.instance_id == "abc123-def456" and kiosk.instance_id == "012345"
    moment = datetime(2026, 12, 2, 10, 15, tzinfo=UTC)
    assert clinic.rotation_window_until == moment == kiosk.rotation_window_until
    assert clinic.rotating(moment.timestamp() - 1) and not clinic.rotating(moment.timestamp())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"sources:\n  - name: a\n   bad: [\n", "not valid YAML at line 3"),
        (b"- a\n- b\n", "expected one top-level key, 'sources:'"),
        (b"sources: []\n", "'sources' must be a non-empty list"),
        (b"sources:\n  - name: Shop\n    secrets: [whsec_abcdefgh12]\n", "sources[0]: name must match"),
        (b"sources:\n  - name: -x\n    secrets: [whsec_abcdefgh12]\n", "sources[0]: name must match"),
        (b"sources:\n  - name: " + b"a" * 64 + b"\n    secrets: [whsec_abcdefgh12]\n", "name must match"),
        (
            b"sources:\n  - {name: a, secrets: [whsec_abcdefgh12]}\n  - {name: a, secrets: [whsec_abcdefgh13]}\n",
            "sources[1]: the name 'a' is used twice",
        ),
        (b"sources:\n  - {name: a, secrets: []}\n", "sources[0] (a): secrets must be a non-empty list"),
        (b"sources:\n  - {name: a, secrets: [hunter2-not-a-secret]}\n", "sources[0] (a): secrets[0] is not a MyTPE"),
        (b"sources:\n  - {name: a, secrets: [whsec_abcdefgh12, whsec_abcdefgh12]}\n", "a secret is listed twice"),
        (b"sources:\n  - {name: a, secrets: [whsec_abcdefgh12], colour: red}\n", "unknown field 'colour'"),
        (b"sources:\n  - {name: a, secrets: [whsec_abcdefgh12], instance_id: ' '}\n", "instance_id must be"),
        (
            b"sources:\n  - {name: a, secrets: [whsec_abcdefgh12], rotation_window_until: soon}\n",
            "rotation_window_until must be an RFC 3339 time",
        ),
        (
            b"sources:\n  - {name: a, secrets: [whsec_abcdefgh12], rotation_window_until: 2026-12-02T10:15:00}\n",
            "needs a time zone",
        ),
        (
            b"sources:\n  - {name: a, secrets: [whsec_abcdefgh12]}\n"
            b"sources:\n  - {name: b, secrets: [whsec_abcdefgh13]}\n",
            "not valid YAML at line 3: the key 'sources' is given twice in one mapping",
        ),
        (
            b"sources:\n  - {name: a, secrets: [whsec_abcdefgh12], rotation_window_until: 2026-02-30T10:00:00Z}\n",
            "not valid YAML: a value it cannot read (ValueError)",
        ),
        (
            b"sources:\n  - {name: a, secrets: [whsec_abcdefgh12], rotation_window_until: 0001-01-01T00:30:00+01:00}\n",
            "rotation_window_until must be an RFC 3339 time",
        ),
    ],
)
def test_each_kind_of_error_is_one_line_naming_the_entry(text: bytes, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(text, "RELAY_SOURCES_FILE s.yaml")
    line = str(raised.value)
    assert message in line
    assert line.startswith("RELAY_SOURCES_FILE s.yaml: ")
    assert "\n" not in line


def test_a_bad_secret_is_never_printed() -> None:
    almost = "whsec_0123456789abcdef!0123"
    with pytest.raises(ConfigError) as raised:
        parse(f"sources:\n  - {{name: a, secrets: ['{almost}']}}\n".encode(), "f")
    assert "0123456789abcdef" not in str(raised.value)


def test_the_name_unknown_is_reserved_for_requests_to_no_source() -> None:
    """Review finding: a source named `unknown` shared its metric series with the requests to no source (404s)
    and internal errors, which are labelled so."""
    text = b"sources:\n  - {name: unknown, secrets: [whsec_abcdefghijkl]}\n"
    with pytest.raises(ConfigError, match="'unknown' is reserved"):
        parse(text, "f")


def test_the_default_name_is_reserved_when_the_environment_defines_it() -> None:
    text = b"sources:\n  - {name: default, secrets: [whsec_abcdefgh12]}\n"
    assert parse(text, "f")[0].path == "/webhooks/mytpe/default"
    with pytest.raises(ConfigError, match="reserved"):
        parse(text, "f", reserved=("default",))


def test_the_legacy_source_is_served_at_the_base_path() -> None:
    default = legacy(parse(MINIMAL, "f")[0].secrets)
    assert default.path == BASE_PATH and default.name == "default"


def test_changed_secrets_are_those_whose_list_differs() -> None:
    b_entry = b"  - {name: b, secrets: [whsec_bbbbbbbb12]}\n"
    a = parse(b"sources:\n  - {name: a, secrets: [whsec_abcdefgh12]}\n" + b_entry, "f")
    b = parse(b"sources:\n  - {name: a, secrets: [whsec_abcdefgh13]}\n" + b_entry, "f")
    c = parse(b"sources:\n  - {name: c, secrets: [whsec_abcdefgh13]}\n", "f")
    before = snapshot(a, generation=1, digest="")
    assert [s.name for s in snapshot(b, generation=2, digest="").changed_secrets(before)] == ["a"]
    assert [s.name for s in snapshot(c, generation=2, digest="").changed_secrets(before)] == ["c"]
    assert snapshot(a, generation=2, digest="").changed_secrets(before) == []


MYTPE = "mytpe: {api: legacy, base_url: 'https://dev.mytpe.app'"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("instance_id", "012345"),  # YAML 1.1 octal: the int 5349
        ("instance_id", "12:30:45"),  # base 60: the int 45045
        ("instance_id", "42"),
        ("instance_id", "0x1F"),
        ("instance_id", "1.50"),
        ("instance_id", "yes"),
        ("instance_id", "2026-01-01"),
        ("mytpe.instance_id", "012345"),
        ("mytpe.webhook_id", "12:30:45"),
        ("mytpe.webhook_id", "1_000"),
    ],
)
def test_an_unquoted_id_that_yaml_reads_as_no_text_is_refused_asking_for_quotes(field: str, value: str) -> None:
    if field == "instance_id":
        entry = f"{{name: a, secrets: [whsec_abcdefgh12], instance_id: {value}}}"
    else:
        entry = f"{{name: a, secrets: [whsec_abcdefgh12], instance_id: 'x', {MYTPE}, {field[6:]}: {value}}}}}"
    with pytest.raises(ConfigError) as raised:
        parse(f"sources:\n  - {entry}\n".encode(), "RELAY_SOURCES_FILE s.yaml")
    line = str(raised.value)
    assert line.startswith(f"RELAY_SOURCES_FILE s.yaml: sources[0] (a): {field}")
    assert "quotes" in line and "\n" not in line
    quoted = entry.replace(f": {value}", f": '{value}'")
    (source,) = parse(f"sources:\n  - {quoted}\n".encode(), "f")  # quoted, it is taken as written
    api = source.mytpe
    assert value in (source.instance_id, api and api.instance_id, api and api.webhook_id)


def test_a_number_for_a_name_is_refused_asking_for_quotes() -> None:
    with pytest.raises(ConfigError, match=r"sources\[0\]: name: .*quotes"):
        parse(b"sources:\n  - {name: 2024, secrets: [whsec_abcdefgh12]}\n", "f")
    assert parse(b"sources:\n  - {name: '2024', secrets: [whsec_abcdefgh12]}\n", "f")[0].name == "2024"


NESTED = {
    "flow": "b'sources: ' + b'[' * 40000 + b']' * 40000",
    "block": "b'sources:\\n  ' + b'- ' * 40000 + b'x\\n'",
    "mappings": "b'sources: ' + b'{a: ' * 40000 + b'1' + b'}' * 40000",
}


@pytest.mark.parametrize("document", NESTED.values(), ids=NESTED.keys())
def test_a_file_nested_deeper_than_any_sources_file_is_one_line_not_a_crash(document: str) -> None:
    """Review finding: libyaml's composer recurses on the C stack once per level, so an 80 KB file nested
    40,000 deep (under the 1 MiB cap) killed the process with a segmentation fault in the reload's thread, on
    every replica at once: no exception to catch, parking lost, then a crash loop. Run apart: a crash here is
    a failed assertion, not a lost test run."""
    script = f"""
import threading
from relay.settings import ConfigError
from relay.sources.config import parse
def run():
    try:
        parse({document}, "F")
    except ConfigError as exc:
        print(exc)
thread = threading.Thread(target=run)  # as the registry parses: in a worker thread, with its smaller stack
thread.start()
thread.join()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout == "F: not valid YAML: collections nested deeper than 64 levels\n"


def test_a_sources_file_nested_to_the_bound_still_parses() -> None:
    nested = "[" * 60 + "]" * 60  # the mapping, its list and a source's key: 64 levels with these 60 and one more
    with pytest.raises(ConfigError, match="secrets"):  # read to the end: refused for what it says, not its depth
        parse(f"sources:\n  - name: shop\n    extra: {nested}\n".encode(), "F")


@pytest.mark.parametrize(
    "text",
    [
        "sources:\n  - {name: SECRET, secrets: [SECRET]}\n",  # pasted as the name
        "sources:\n  - {name: shop, secrets: [SECRET], SECRET: 1}\n",  # as a key
        "sources:\n  - {name: shop, secrets: [SECRET], mytpe: {SECRET: 1}}\n",
        "sources:\n  - {name: shop, secrets: [SECRET], SECRET: 1, SECRET: 2}\n",  # a key given twice
    ],
    ids=["name", "field", "mytpe-field", "twice"],
)
def test_a_secret_pasted_in_the_wrong_place_is_never_quoted_by_the_error(text: str) -> None:
    """Review finding: a whole whsec_ secret pasted into `name:` or as a key was quoted in the error line, which
    the relay logs (`config_reloads_total{result="error"}` and its line) and `check` prints."""
    with pytest.raises(ConfigError) as refused:
        parse(text.replace("SECRET", SECRET).encode(), "F")
    assert SECRET not in str(refused.value) and SECRET[:20] not in str(refused.value)
    assert "not shown" in str(refused.value)


@pytest.mark.parametrize("value", ['""', '" a/b?c "', '"x\\ty"'], ids=["empty", "spaces", "tab"])
@pytest.mark.parametrize("name", ["instance_id", "webhook_id"])
def test_a_mytpe_id_that_is_not_one_is_refused(name: str, value: str) -> None:
    """Review finding: `instance_id: ""` in the mytpe block fell back to the source's silently, and one with
    spaces or a tab was sent in MyTPE's URL paths as it was."""
    block = f'{{api: ext, base_url: "https://m.example", {name}: {value}}}'
    text = f'sources:\n  - {{name: shop, secrets: ["{SECRET}"], mytpe: {block}}}\n'
    with pytest.raises(ConfigError, match=f"mytpe.{name}: 1 to 200 visible ASCII characters"):
        parse(text.encode(), "F")


@pytest.mark.parametrize(
    "url",
    ["https://[::1", "https://h:99999", "https://h:x", "https://", "https://a b", "https://h/p?x=1", "https://u@h"],
)
def test_a_base_url_mytpe_cannot_be_called_at_is_refused_in_one_line(url: str) -> None:
    """Review finding: only the scheme was checked. `https://[::1` loaded, then every API call (the drift check,
    each `webhook` command) failed with a ValueError from urlsplit: a line every period, or a traceback."""
    block = f'{{api: ext, base_url: "{url}", webhook_id: w-1}}'
    text = f'sources:\n  - {{name: shop, secrets: ["{SECRET}"], mytpe: {block}}}\n'
    with pytest.raises(ConfigError, match=r"mytpe.base_url: .*https://") as raised:
        parse(text.encode(), "F")
    assert "\n" not in str(raised.value)


def _laughs(levels: int, field: str = "name") -> str:
    """A source whose `field` holds `levels` anchors of ten aliases each (10**levels values once expanded), in a
    few hundred bytes."""
    lists = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    lists += [f"&a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, levels)]
    value = f"[{', '.join(lists)}]"
    if field == "api":
        return f"sources:\n  - name: shop\n    secrets: [{SECRET}]\n    mytpe: {{api: {value}, instance_id: i-1}}\n"
    return f"sources:\n  - name: {value}\n    secrets: [{SECRET}]\n"


@pytest.mark.parametrize("field", ["name", "api"])
def test_aliases_that_expand_past_any_sources_file_are_one_line_not_a_freeze(field: str) -> None:
    """Review finding: the depth bound counted collections, not aliases; a name (or mytpe.api) of nested aliases, a
    few hundred bytes, was expanded by the error line quoting it (repr): 10**9 values froze the event loop, then
    ended the process out of memory. Six levels here (10**6 values; the error line's repr about 6 MB without the
    bound, so a failure stays cheap)."""
    with pytest.raises(
        ConfigError, match=r"^F: not valid YAML: more than 100,000 values once its aliases are expanded$"
    ):
        parse(_laughs(6, field).encode(), "F")


def test_aliases_a_sources_file_uses_are_read() -> None:
    text = f"sources:\n  - name: shop\n    secrets: &secrets [{SECRET}, {OLD_SECRET}]\n"
    text += "  - name: kiosk\n    secrets: *secrets\n"
    assert [len(source.secrets) for source in parse(text.encode(), "F")] == [2, 2]
