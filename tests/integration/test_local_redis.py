"""The Redis servers the tests start: each fails at once, says why, and leaves no process behind.

A cluster-mode redis-server exited at start when a connection held its bus port (its port plus 10000, in the
kernel's ephemeral range); the harness then waited 15 s for a PING, said only that none came, and left the
unreaped process to fail a later test (CI, stop 35: the Sentinel test's garbage collection reported it).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import patch

import pytest

from tests.conftest import require_tool
from tests.servers import LocalRedis, free_port, started_server


def _children(name: str) -> set[int]:
    """This process's children called `name`, running or zombie (/proc shows a zombie until it is reaped).
    Session fixtures may hold some (the shared redis-server): compare before and after."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            comm, fields = rest.rsplit(") ", 1)
        except (OSError, ValueError):  # gone while read
            continue
        if comm == name and int(fields.split()[1]) == os.getpid():
            found.add(int(pid))
    return found


@contextmanager
def _held(port: int) -> Iterator[None]:
    """`port` as the local port of an open connection, as an outgoing client's can be."""
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        try:
            client.bind(("127.0.0.1", port))
        except OSError:  # something else holds it already: held either way
            yield
            return
        client.connect(listener.getsockname())
        yield


def test_a_cluster_mode_server_starts_while_a_connection_holds_port_plus_10000(tmp_path: Path) -> None:
    """(Failed before `cluster=True` picked the bus port: redis-server exited, "Failed listening on port".)"""
    require_tool("redis-server")
    server = LocalRedis(tmp_path / "cluster", cluster=True)
    with _held(server.port + 10000), server:
        assert server.process is not None and server.process.poll() is None


def test_a_server_that_exits_at_start_fails_at_once_with_its_last_line_and_is_reaped(tmp_path: Path) -> None:
    require_tool("redis-server")
    server = LocalRedis(tmp_path / "bad", extra=["--no-such-directive", "yes"])
    before = _children("redis-server")
    with pytest.raises(RuntimeError, match=r"redis-server on port \d+ exited 1; its last line: .*Bad directive"):
        server.start()
    assert server.process is None
    assert _children("redis-server") == before


def test_a_server_interrupted_while_starting_is_killed_and_reaped(tmp_path: Path) -> None:
    """A test's timeout or Ctrl-C arrives as an exception in the wait: the server goes with it."""
    command = [require_tool("sleep"), "60"]
    before = _children("sleep")
    with patch("tests.servers._answers", side_effect=KeyboardInterrupt), pytest.raises(KeyboardInterrupt):
        started_server(command, tmp_path / "interrupted.log", free_port(), timeout=5)
    assert _children("sleep") == before


def test_a_server_that_never_answers_is_killed_and_reaped(tmp_path: Path) -> None:
    command = [require_tool("sleep"), "60"]
    before = _children("sleep")
    silent = r"on port \d+ did not answer PING within 0.5s; its last line: \(no output\)"
    with pytest.raises(RuntimeError, match=silent):
        started_server(command, tmp_path / "silent.log", free_port(), timeout=0.5)
    assert _children("sleep") == before


def test_a_cluster_bus_port_is_never_the_port_nor_port_plus_10000(tmp_path: Path) -> None:
    picks = iter([20001, 20001, 30001, 20002])  # the port, then two picks to refuse, then the bus
    with patch("tests.servers.free_port", side_effect=lambda: next(picks)):
        server = LocalRedis(tmp_path / "c", cluster=True)
    assert server.port == 20001
    assert server.extra[-2:] == ["--cluster-port", "20002"]
