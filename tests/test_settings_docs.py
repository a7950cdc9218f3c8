"""docs/configuration.md and `check`'s report are read from the settings' declarations (relay/settings/)."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from relay.settings import KafkaSecurity, Settings, report, variables
from relay.settings import __main__ as settings_main
from relay.settings.__main__ import main
from relay.settings.declare import GROUP, SPEC, specs
from relay.settings.docs import BEGIN, DOCUMENT, END, render, tables
from relay.settings.parsers import shown_url

ROOT = Path(__file__).resolve().parent.parent
SECRETS = "whsec_0123456789abcdef0123456789abcdef0123456789abcdef"


def test_the_documented_variables_are_the_declared_ones() -> None:
    """`python -m relay.settings --write` regenerates the tables; this fails until it has run."""
    document = (ROOT / DOCUMENT).read_text(encoding="utf-8")
    assert document == render(document), "run .venv/bin/python -m relay.settings --write"
    documented = {name for name in variables(Settings) if f"`{name}`" in document.partition(END)[0]}
    assert documented == set(variables(Settings))


def test_a_stale_table_is_caught() -> None:
    document = (ROOT / DOCUMENT).read_text(encoding="utf-8")
    stale = document.replace("| `RELAY_PORT` | listen port |", "| `RELAY_PORT` | the port |")
    assert stale != document and render(stale) != stale
    with pytest.raises(ValueError, match="markers"):
        render(document.replace(BEGIN, ""))


@pytest.mark.parametrize("cls", [Settings, KafkaSecurity])
def test_every_field_is_a_declared_setting(cls: type) -> None:
    """A field added without `setting(...)` would be read from no variable and documented nowhere."""
    undeclared = [f.name for f in dataclasses.fields(cls) if SPEC not in f.metadata and GROUP not in f.metadata]
    assert undeclared == []
    names = [spec.env for spec in specs(cls)]
    assert len(names) == len(set(names)) and all(name.startswith("RELAY_") for name in names)


def test_the_generator_prints_the_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main([]) == 0
    assert out.getvalue() == (ROOT / DOCUMENT).read_text(encoding="utf-8")
    assert tables() in out.getvalue()


def test_checks_report_names_what_differs_and_never_shows_a_secret() -> None:
    settings = Settings.from_env(
        {
            "RELAY_MYTPE_SECRETS": SECRETS,
            "RELAY_PORT": "9000",
            "RELAY_DEDUPE_URL": "redis://:hunter2@redis:6379/0",
            "RELAY_FAMILIES": "transaction,pay_link,kyc",
            "RELAY_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "RELAY_KAFKA_SASL_USERNAME": "relay",
            "RELAY_KAFKA_SASL_PASSWORD": "pass word",
        }
    )
    line = report(settings)
    assert line == (
        "config: set: RELAY_MYTPE_SECRETS=(set), RELAY_KAFKA_SECURITY_PROTOCOL=SASL_SSL,"
        " RELAY_KAFKA_SASL_MECHANISM=SCRAM-SHA-512, RELAY_KAFKA_SASL_USERNAME=(set), RELAY_KAFKA_SASL_PASSWORD=(set),"
        " RELAY_PORT=9000, RELAY_DEDUPE_URL=(set), RELAY_FAMILIES=transaction,pay_link,kyc"
    )
    assert "hunter2" not in line and "pass word" not in line and "0123456789" not in line


def test_checks_report_never_shows_credentials_in_the_public_url() -> None:
    # RELAY_PUBLIC_URL accepts userinfo (parsers.public_url); `check` prints every non-default setting, and
    # docs/configuration.md promises secrets never appear in `check`. (Found by review, issue 22.)
    settings = Settings.from_env(
        {"RELAY_MYTPE_SECRETS": SECRETS, "RELAY_PUBLIC_URL": "https://relay:hunter2@hooks.example.com/in"}
    )
    line = report(settings)
    assert "hunter2" not in line
    assert "RELAY_PUBLIC_URL=https://relay:***@hooks.example.com/in" in line, line


def test_a_url_is_shown_without_its_password_or_query() -> None:
    assert shown_url("https://relay:hunter2@hooks.example.com:8443/in?token=abc#x") == (
        "https://relay:***@hooks.example.com:8443/in"
    )
    assert shown_url("https://hooks.example.com/in?token=abc") == "https://hooks.example.com/in"
    assert shown_url("https://relay@hooks.example.com") == "https://relay@hooks.example.com"


def test_checks_report_names_the_file_variable_and_hides_the_sasl_user(tmp_path: Path) -> None:
    # The SASL user is Confluent Cloud's API key (docs/configuration.md); a key read from `…_FILE` is named so.
    key = tmp_path / "key"
    key.write_text("k3y-in-a-file\n", encoding="utf-8")
    settings = Settings.from_env(
        {
            "RELAY_MYTPE_SECRETS": SECRETS,
            "RELAY_MYTPE_API_KEY_FILE": str(key),
            "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "RELAY_KAFKA_SASL_MECHANISM": "PLAIN",
            "RELAY_KAFKA_SASL_USERNAME": "CONFLUENTAPIKEY",
            "RELAY_KAFKA_SASL_PASSWORD": "pw",
        }
    )
    line = report(settings)
    assert "RELAY_MYTPE_API_KEY_FILE=(set)" in line and "RELAY_MYTPE_API_KEY=" not in line, line
    assert "RELAY_KAFKA_SASL_USERNAME=(set)" in line and "CONFLUENTAPIKEY" not in line, line
    assert "k3y-in-a-file" not in line


def test_checks_report_shows_routes_as_the_variable_is_written() -> None:
    # Was Python reprs: `RELAY_ROUTES=Route(family='payment_link', …)`. (Found by review, issue 22.)
    written = "payment_link=pay_link,trader=kyc@trader.ref"
    settings = Settings.from_env({"RELAY_MYTPE_SECRETS": SECRETS, "RELAY_ROUTES": written})
    line = report(settings)
    assert f"RELAY_ROUTES={written}" in line, line


def test_the_generator_run_elsewhere_still_finds_the_document(tmp_path: Path) -> None:
    # DOCUMENT was relative to the working directory: run elsewhere, a FileNotFoundError traceback. (Review, issue 22.)
    run = subprocess.run(
        [sys.executable, "-m", "relay.settings"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert "Traceback" not in run.stderr, run.stderr[-300:]
    assert run.returncode == 0 and run.stdout == (ROOT / DOCUMENT).read_text(encoding="utf-8")


def test_the_generator_without_the_document_says_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed package has no docs/: one line and exit 2."""
    monkeypatch.setattr(settings_main, "DOCUMENT", tmp_path / "docs" / "configuration.md")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "configuration.md" in err and "repository" in err, err
