"""Reloading the sources file: a valid change applies whole, an invalid one changes nothing, and says so."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from relay.metrics import Metrics
from relay.settings import ConfigError, Secret
from relay.sources.config import Source, SourceSet, legacy
from relay.sources.registry import MAX_BYTES, SourceRegistry

A = "whsec_" + "a" * 48
B = "whsec_" + "b" * 48


def write(path: Path, *sources: tuple[str, str]) -> None:
    lines = ["sources:"] + [f"  - {{name: {name}, secrets: [{secret}]}}" for name, secret in sources]
    path.write_text("\n".join(lines) + "\n")


def exposed(metrics: Metrics, line: str) -> bool:
    return line in generate_latest(metrics.registry).decode()


async def settled(registry: SourceRegistry) -> bool:
    """Two polls, as the watch makes them a poll apart: a change applies once two reads agree. True if applied."""
    first = await registry.poll()
    return await registry.poll() or first


def test_start_refuses_no_source_and_an_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RELAY_SOURCES_FILE or RELAY_MYTPE_SECRETS"):
        SourceRegistry(default=None, file=None, metrics=Metrics())
    with pytest.raises(ConfigError, match="cannot read"):
        SourceRegistry(default=None, file=tmp_path / "absent.yaml", metrics=Metrics())
    (tmp_path / "s.yaml").write_text("sources: 3\n")
    with pytest.raises(ConfigError, match="non-empty list"):
        SourceRegistry(default=None, file=tmp_path / "s.yaml", metrics=Metrics())
    (tmp_path / "s.yaml").write_text("sources:\n  - {name: a, secrets: [whsec_abcdefgh12], instance_id: 012345}\n")
    with pytest.raises(ConfigError, match=r"instance_id: .* put it in quotes"):
        SourceRegistry(default=None, file=tmp_path / "s.yaml", metrics=Metrics())


async def test_a_valid_change_applies_and_tells_the_listeners(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    write(file, ("shop", A), ("kiosk", A))
    metrics = Metrics()
    registry = SourceRegistry(default=legacy([Secret(B)]), file=file, metrics=metrics)
    seen: list[tuple[int, list[str]]] = []

    def listener(current: SourceSet, changed: list[Source]) -> None:
        seen.append((current.generation, [s.name for s in changed]))

    registry.on_change(listener)
    assert registry.current.names() == ["default", "kiosk", "shop"]
    assert await settled(registry) is False  # unchanged content: nothing to do
    write(file, ("shop", B), ("kiosk", A))
    assert await settled(registry) is True
    assert seen == [(2, ["shop"])]
    shop = registry.lookup("/webhooks/mytpe/shop")
    assert shop is not None and shop.keys == (B.encode(),)
    assert registry.lookup("/webhooks/mytpe") is not None  # the environment's source stays
    assert exposed(metrics, "mytpe_relay_config_generation 2.0")
    assert exposed(metrics, 'mytpe_relay_config_reloads_total{result="success"} 1.0')


@pytest.mark.parametrize(
    "content",
    [
        "sources:\n  - name: shop\n   secrets: [\n",  # YAML error
        "sources:\n  - {name: Shop, secrets: [whsec_abcdefgh12]}\n",  # bad name
        "sources:\n  - {name: x, secrets: [whsec_abcdefgh12]}\n  - {name: x, secrets: [whsec_abcdefgh13]}\n",
        "sources:\n  - {name: shop, secrets: [sk_live_abcdefgh12]}\n",  # not whsec_
        "sources:\n  - {name: default, secrets: [whsec_abcdefgh12]}\n",  # reserved by RELAY_MYTPE_SECRETS
        "sources:\n  - {name: shop, secrets: [whsec_abcdefgh12], instance_id: 012345}\n",  # YAML 1.1: 5349
        "sources:\n  - {name: shop, secrets: [whsec_abcdefgh12], instance_id: 12:30:45}\n",  # YAML 1.1: 45045
        # review: YAML's own reading raised ValueError or OverflowError, not ConfigError: the reload said it with a
        # traceback, counted nothing, and left the success gauge at 1
        "sources:\n  - {name: shop, secrets: [whsec_abcdefgh12], rotation_window_until: 2026-02-30T10:00:00Z}\n",
        "sources:\n  - {name: shop, secrets: [whsec_abcdefgh12], rotation_window_until: 0001-01-01T00:00:00+01:00}\n",
        "sources:\n  - {name: shop, secrets: [whsec_abcdefgh12], instance_id: " + "9" * 5000 + "}\n",
        "sources:\n  - {name: shop, secrets: [whsec_abcdefgh12], instance_id: !!bool maybe}\n",  # review: KeyError
        "sources:\n  - {name: shop, secrets: [whsec_abcdefgh12], instance_id: !!int ''}\n",  # review: IndexError
        "sources:\n  - {name: shop, secrets: [whsec_abcdefgh12], rotation_window_until: !!timestamp x}\n",
        # review: a second `sources:` block (a new source pasted at the end) replaced the first, silently
        "sources:\n  - {name: shop, secrets: [whsec_abcdefgh12]}\n"
        "sources:\n  - {name: kiosk, secrets: [whsec_abcdefgh13]}\n",
        "sources:\n  - name: shop\n    secrets: [whsec_abcdefgh12]\n    secrets: [whsec_abcdefgh13]\n",
    ],
    ids=[
        "yaml",
        "bad-name",
        "duplicate-name",
        "not-whsec",
        "reserved-name",
        "octal-id",
        "base60-id",
        "no-such-day",
        "before-year-1",
        "5000-digits",
        "bool-tag",
        "int-tag",
        "timestamp-tag",
        "sources-twice",
        "secrets-twice",
    ],
)
async def test_each_invalid_file_keeps_the_previous_sources(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "s.yaml"
    write(file, ("shop", A))
    metrics = Metrics()
    registry = SourceRegistry(default=legacy([Secret(B)]), file=file, metrics=metrics)
    before = registry.current
    file.write_text(content)
    assert await settled(registry) is False
    assert registry.current is before
    assert exposed(metrics, 'mytpe_relay_config_reloads_total{result="error"} 1.0')
    assert exposed(metrics, "mytpe_relay_config_last_reload_successful 0.0")
    assert exposed(metrics, "mytpe_relay_config_generation 1.0")
    (line,) = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
    assert "\n" not in line and "abcdefgh" not in line
    assert await settled(registry) is False  # reported once, not on every poll
    assert exposed(metrics, 'mytpe_relay_config_reloads_total{result="error"} 1.0')
    write(file, ("shop", B))  # fixed: applied, and the success gauge comes back
    assert await settled(registry) is True
    assert exposed(metrics, "mytpe_relay_config_last_reload_successful 1.0")


async def test_a_file_that_could_not_be_read_for_a_moment_is_a_success_again_when_it_comes_back(tmp_path: Path) -> None:
    """Review finding: a read that failed set the success gauge to 0, and the same content coming back was taken
    as unchanged, so the gauge stayed 0 (and the reload-failing alert on) until the file changed."""
    file = tmp_path / "s.yaml"
    write(file, ("shop", A))
    metrics = Metrics()
    registry = SourceRegistry(default=None, file=file, metrics=metrics)
    content = file.read_bytes()
    file.unlink()
    assert await settled(registry) is False
    assert exposed(metrics, "mytpe_relay_config_last_reload_successful 0.0")
    file.write_bytes(content)  # the same content back (a Secret deleted and made again)
    await settled(registry)
    assert exposed(metrics, "mytpe_relay_config_last_reload_successful 1.0")
    assert registry.current.names() == ["shop"]


async def test_a_vanished_file_keeps_the_previous_sources(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    write(file, ("shop", A))
    registry = SourceRegistry(default=None, file=file, metrics=Metrics())
    file.unlink()
    assert await settled(registry) is False
    assert registry.current.names() == ["shop"]


async def test_the_watch_sees_a_symlink_swap_like_kubernetes_makes(tmp_path: Path) -> None:
    """A Secret volume: `sources.yaml -> ..data/sources.yaml`, `..data -> ..2026_1`, updated by renaming `..data`."""
    for name, secret in (("..v1", A), ("..v2", B)):
        (tmp_path / name).mkdir()
        write(tmp_path / name / "sources.yaml", ("shop", secret))
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "sources.yaml").symlink_to("..data/sources.yaml")
    registry = SourceRegistry(default=None, file=tmp_path / "sources.yaml", metrics=Metrics(), poll_seconds=0.05)
    applied = asyncio.Event()
    registry.on_change(lambda current, changed: applied.set())
    await registry.start()
    try:
        (tmp_path / "..data_tmp").symlink_to("..v2")
        (tmp_path / "..data_tmp").rename(tmp_path / "..data")
        async with asyncio.timeout(5):
            await applied.wait()
    finally:
        await registry.stop()
    shop = registry.lookup("/webhooks/mytpe/shop")
    assert shop is not None and shop.keys == (B.encode(),)


async def test_a_poll_applies_a_change_once_two_reads_agree_never_a_half_written_file(tmp_path: Path) -> None:
    """Review finding: one read was applied at once, so a file written in place was served half-written: a prefix
    that parses (the first of two sources) dropped the other for a poll, and its requests were refused, unparked."""
    file = tmp_path / "s.yaml"
    write(file, ("shop", A), ("kiosk", A))
    metrics = Metrics()
    registry = SourceRegistry(default=None, file=file, metrics=metrics)
    write(file, ("shop", B), ("kiosk", B))
    whole = file.read_bytes()
    file.write_bytes(whole[: whole.index(b"  - {name: kiosk")])  # the writer is halfway: only `shop` so far
    assert await registry.poll() is False  # read once: not applied
    file.write_bytes(whole)  # the writer is done
    assert await registry.poll() is False  # another content: read once again
    assert registry.current.generation == 1
    assert await registry.poll() is True  # the same twice: applied, whole
    assert registry.current.generation == 2 and registry.current.names() == ["kiosk", "shop"]
    assert exposed(metrics, 'mytpe_relay_config_reloads_total{result="success"} 1.0')
    assert await registry.poll() is False  # unchanged since


async def test_sighup_applies_what_it_reads_at_once(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    write(file, ("shop", A))
    registry = SourceRegistry(default=None, file=file, metrics=Metrics())
    write(file, ("shop", B))
    assert await registry.poll("SIGHUP") is True
    shop = registry.lookup("/webhooks/mytpe/shop")
    assert shop is not None and shop.keys == (B.encode(),)


async def test_a_sighup_whose_read_fails_leaves_no_reload_of_unchanged_content_behind(tmp_path: Path) -> None:
    """Review finding: a SIGHUP forgets the applied content's hash so as to apply what it reads at once; when that
    read failed, the hash stayed forgotten, and the next poll applied the same content again: a new generation, a
    'sources reloaded' line and a re-verification of everything parked, for no change."""
    file = tmp_path / "s.yaml"
    write(file, ("shop", A))
    registry = SourceRegistry(default=None, file=file, metrics=Metrics())
    content = file.read_bytes()
    file.write_bytes(b"#" * (MAX_BYTES + 1))  # cannot be read for a moment
    assert await registry.poll("SIGHUP") is False
    file.write_bytes(content)  # back as it was
    assert await settled(registry) is False
    assert registry.current.generation == 1


@pytest.mark.parametrize("kind", ["fifo", "directory", "too-large", "absent"])
async def test_a_file_that_cannot_be_read_is_said_once_and_never_waited_on(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Review findings: a FIFO in the file's place blocked the event loop on its read (every webhook and /healthz
    stalled); an unreadable file was a line and an error counted on every poll (86,400 a day)."""
    file = tmp_path / "s.yaml"
    write(file, ("shop", A))
    metrics = Metrics()
    registry = SourceRegistry(default=None, file=file, metrics=metrics)
    file.unlink()
    if kind == "fifo":
        os.mkfifo(file)  # nothing ever writes it
    elif kind == "directory":
        file.mkdir()
    elif kind == "too-large":
        file.write_bytes(b"#" * (MAX_BYTES + 1))
    for _ in range(3):
        async with asyncio.timeout(5):
            assert await registry.poll() is False
    said = {"fifo": "not a regular file", "directory": "Is a directory", "too-large": "larger than 1048576 bytes"}
    lines = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(lines) == 1 and said.get(kind, "No such file") in lines[0]
    assert exposed(metrics, 'mytpe_relay_config_reloads_total{result="error"} 1.0')
    assert exposed(metrics, "mytpe_relay_config_last_reload_successful 0.0")
    assert registry.current.names() == ["shop"]
    assert await registry.poll("SIGHUP") is False  # asked again: said again
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage()]) == 2


async def test_a_read_that_hangs_holds_the_watch_not_the_event_loop(tmp_path: Path) -> None:
    """A read that never returns (a stuck network mount) is waited on in a thread: the loop goes on serving."""
    file = tmp_path / "s.yaml"
    write(file, ("shop", A))
    registry = SourceRegistry(default=None, file=file, metrics=Metrics())
    release = threading.Event()
    reading = threading.Event()
    read = registry._read

    def stuck() -> tuple[bytes, str]:
        reading.set()
        release.wait(10)
        return read()

    registry._read = stuck  # type: ignore[method-assign]
    polling = asyncio.create_task(registry.poll())
    try:
        assert await asyncio.to_thread(reading.wait, 5)  # the loop turns while the read is stuck
        await asyncio.sleep(0.05)
        assert not polling.done()
    finally:
        release.set()
    assert await polling is False


async def test_sighup_is_ignored_once_the_watch_stopped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Review finding: stopping the watch removed the loop's SIGHUP handler, which put back SIGHUP's default action:
    a `kill -HUP 1` during the rest of the shutdown ended the process before the flush and the spool's close.
    (Were it not ignored, this test's process would end here.)"""
    file = tmp_path / "s.yaml"
    write(file, ("shop", A))
    registry = SourceRegistry(default=None, file=file, metrics=Metrics())
    await registry.start()
    await registry.stop()
    os.kill(os.getpid(), signal.SIGHUP)
    await asyncio.sleep(0.1)
    assert "SIGHUP ignored: the relay is stopping" in caplog.text


async def test_sighup_with_no_sources_file_is_said_not_the_end_of_the_process(caplog: pytest.LogCaptureFixture) -> None:
    """Review finding: with no sources file no handler was installed, and SIGHUP's default action ended the process
    (an operator's `kill -HUP 1`, as docs/operations.md tells, with RELAY_MYTPE_SECRETS alone)."""
    registry = SourceRegistry(default=legacy([Secret(B)]), file=None, metrics=Metrics())
    await registry.start()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.1)
    finally:
        await registry.stop()
    assert "SIGHUP: no RELAY_SOURCES_FILE to reload; ignored" in caplog.text


async def test_a_prefix_read_once_before_is_not_taken_for_a_second_read(tmp_path: Path) -> None:
    """Review finding: the read before a change was kept in one slot that an unchanged read did not update, so a
    prefix caught by one poll, then the whole file, then the same prefix in a later rewrite, was applied at once."""
    file = tmp_path / "s.yaml"
    write(file, ("shop", A), ("kiosk", A))
    registry = SourceRegistry(default=None, file=file, metrics=Metrics())
    whole = file.read_bytes()
    prefix = whole[: whole.index(b"  - {name: kiosk")]
    file.write_bytes(prefix)  # a rewrite in place with the same content, caught halfway
    assert await registry.poll() is False
    file.write_bytes(whole)
    assert await registry.poll() is False  # what is applied: unchanged
    file.write_bytes(prefix)  # the next rewrite, caught at the same point
    assert await registry.poll() is False  # read once: not applied
    assert registry.current.names() == ["kiosk", "shop"]


async def test_sighup_while_the_relay_starts_is_said_not_the_end_of_the_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review finding: the only SIGHUP handler came with the watch, after Kafka, Redis and the spool had started
    (up to RELAY_STARTUP_TIMEOUT_SECONDS): a SIGHUP then ended a starting pod."""
    file = tmp_path / "s.yaml"
    write(file, ("shop", A))
    registry = SourceRegistry(default=None, file=file, metrics=Metrics())
    registry.starting()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.1)
    finally:
        await registry.start()
        await registry.stop()
    assert "SIGHUP ignored: the relay is starting" in caplog.text
