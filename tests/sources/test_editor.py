"""The sources file editor on real files: owner and mode kept, a short write never renamed into place,
two commands never lose each other's change."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from relay.sources import editor
from relay.sources.config import parse
from relay.sources.editor import Entry, edit, install_secret

A = "whsec_" + "a" * 48
B = "whsec_" + "b" * 48
C = "whsec_" + "c" * 48


def write(path: Path) -> bytes:
    path.write_text(f"sources:\n  - name: shop\n    secrets: [{A}]\n")
    return path.read_bytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_the_owner_and_mode_of_the_file_are_kept(tmp_path: Path) -> None:
    file = tmp_path / "sources.yaml"
    write(file)
    os.chown(file, 12345, 23456)  # the relay's user, not the one running the command
    file.chmod(0o640)
    edit(file, "shop", install_secret(B))
    kept = file.stat()
    assert (kept.st_uid, kept.st_gid, kept.st_mode & 0o7777) == (12345, 23456, 0o640)
    previous = (tmp_path / "sources.yaml.previous").stat()
    assert (previous.st_uid, previous.st_gid, previous.st_mode & 0o7777) == (12345, 23456, 0o640)
    assert [s.reveal() for s in parse(file.read_bytes(), "f")[0].secrets] == [B, A]


KEEP_OWNER = """
import os, sys
from pathlib import Path
from relay.sources.editor import edit, install_secret
os.setgid(65534)
os.setuid(65534)  # nobody: may write the directory and the file, may not give a file to uid 12345
try:
    edit(Path(sys.argv[1]), "shop", install_secret("whsec_" + "b" * 48))
except OSError as exc:
    print(exc.strerror)
    sys.exit(3)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="changing users needs root")
def test_an_owner_that_cannot_be_kept_is_an_error_not_a_file_taken_over() -> None:
    with tempfile.TemporaryDirectory() as directory:  # under /tmp: pytest's own directories are root's alone
        _cannot_keep_the_owner(Path(directory))


def _cannot_keep_the_owner(directory: Path) -> None:
    directory.chmod(0o777)
    file = directory / "sources.yaml"
    before = write(file)
    os.chown(file, 12345, 12345)
    file.chmod(0o666)
    done = subprocess.run(
        [sys.executable, "-c", KEEP_OWNER, str(file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith(f"cannot keep the owner of {file}") and "(uid 12345, gid 12345)" in done.stdout
    assert file.read_bytes() == before and file.stat().st_uid == 12345


def test_a_new_file_is_private_to_its_writer(tmp_path: Path) -> None:
    file = tmp_path / "sources.yaml"
    edit(file, "shop", install_secret(A), create=True)
    made = file.stat()
    assert (made.st_uid, made.st_mode & 0o7777) == (os.geteuid(), 0o600)


SHORT_WRITE = """
import resource, signal, sys
from pathlib import Path
from relay.sources.editor import edit
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() returns short, then EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
def change(entry):
    entry["instance_id"] = "x" * 190
    entry["secrets"].append("whsec_" + "b" * 48)
try:
    edit(Path(sys.argv[1]), "shop", change)
except OSError as exc:
    print("refused:", exc.strerror)
    sys.exit(3)
print("written")
"""


def test_a_short_write_is_an_error_and_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE) makes the kernel write fewer bytes than asked, on a real file."""
    file = tmp_path / "sources.yaml"
    before = write(file)
    assert len(before) < 200
    done = subprocess.run(
        [sys.executable, "-c", SHORT_WRITE, str(file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert file.read_bytes() == before, "a truncated file was renamed into place"
    assert (done.returncode, done.stdout.strip()) == (3, "refused: File too large"), done.stdout + done.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sources.yaml.") and "lock" not in p.name] == []


def test_two_commands_at_once_keep_both_changes(tmp_path: Path) -> None:
    """The first command is slow between its read and its write; the second starts meanwhile."""
    file = tmp_path / "sources.yaml"
    write(file)
    inside = threading.Event()

    def slow(entry: Entry) -> None:
        inside.set()
        time.sleep(1.0)
        entry["secrets"] = [B, *entry["secrets"]]

    def quick(entry: Entry) -> None:
        entry["secrets"] = [*entry["secrets"], C]

    first = threading.Thread(target=edit, args=(file, "shop", slow))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=edit, args=(file, "shop", quick))
    second.start()
    first.join(30)
    second.join(30)
    assert not first.is_alive() and not second.is_alive()
    assert [s.reveal() for s in parse(file.read_bytes(), "f")[0].secrets] == [B, A, C]


def test_a_symlinked_file_stays_a_link_and_its_target_is_written(tmp_path: Path) -> None:
    """The kubelet's (and git-sync's) layout: FILE -> ..data/FILE, ..data -> a timestamped directory."""
    real = tmp_path / "..2026_12_02_21_00_00.1"
    real.mkdir()
    write(real / "sources.yaml")
    (tmp_path / "..data").symlink_to(real.name)
    link = tmp_path / "sources.yaml"
    link.symlink_to("..data/sources.yaml")
    edit(link, "shop", install_secret(B))
    assert link.is_symlink() and os.readlink(link) == "..data/sources.yaml"
    assert [s.reveal() for s in parse((real / "sources.yaml").read_bytes(), "f")[0].secrets] == [B, A]
    assert (real / "sources.yaml.previous").exists()  # beside the file it was, not beside the link
    assert sorted(p.name for p in tmp_path.iterdir()) == ["..2026_12_02_21_00_00.1", "..data", "sources.yaml"]


AS_USER = """
import os, sys
from pathlib import Path
from relay.sources.editor import edit, install_secret
uid, gid, groups = int(sys.argv[2]), int(sys.argv[3]), [int(g) for g in sys.argv[4].split(",") if g]
os.setgroups(groups)
os.setgid(gid)
os.setuid(uid)
try:
    edit(Path(sys.argv[1]), "shop", install_secret("whsec_" + "b" * 48))
except OSError as exc:
    print(exc.strerror or exc)
    sys.exit(3)
print("written")
"""


def as_user(file: Path, uid: int, gid: int, groups: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", AS_USER, str(file), str(uid), str(gid), ",".join(map(str, groups))]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing users needs root")
def test_a_lock_file_made_by_root_does_not_lock_out_the_files_owner() -> None:
    with tempfile.TemporaryDirectory() as name:  # under /tmp: pytest's own directories are root's alone
        directory = Path(name)
        directory.chmod(0o777)
        file = directory / "sources.yaml"
        write(file)
        os.chown(file, 12345, 23456)
        file.chmod(0o640)
        edit(file, "shop", install_secret(C))  # root, once: the lock file is made now
        done = as_user(file, 12345, 23456)
        assert (done.returncode, done.stdout.strip()) == (0, "written"), done.stdout + done.stderr
        assert [s.reveal() for s in parse(file.read_bytes(), "f")[0].secrets] == [B, C]
        lock = directory / ".sources.yaml.lock"
        os.chown(lock, 0, 0)  # one made by an older relay: root's; readable is enough to lock it
        lock.chmod(0o644)
        done = as_user(file, 12345, 23456)
        assert (done.returncode, done.stdout.strip()) == (0, "written"), done.stdout + done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="changing users needs root")
def test_the_owner_writes_in_a_setgid_directory_of_a_group_it_is_not_in() -> None:
    """deploy:relay 0640 in a setgid directory of group relay; deploy is not in group relay: the new
    file gets group relay from the directory, and the owner needs no chown at all."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        os.chown(directory, 0, 23456)
        directory.chmod(0o2777)
        file = directory / "sources.yaml"
        write(file)
        os.chown(file, 12345, 23456)
        file.chmod(0o640)
        done = as_user(file, 12345, 34567)
        assert (done.returncode, done.stdout.strip()) == (0, "written"), done.stdout + done.stderr
        kept = file.stat()
        assert (kept.st_uid, kept.st_gid, kept.st_mode & 0o7777) == (12345, 23456, 0o640)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing users needs root")
def test_an_owner_who_cannot_keep_the_group_is_told_so() -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        directory.chmod(0o777)
        file = directory / "sources.yaml"
        before = write(file)
        os.chown(file, 12345, 23456)
        file.chmod(0o640)
        done = as_user(file, 12345, 34567)
        assert done.returncode == 3, done.stdout + done.stderr
        assert done.stdout.startswith(f"cannot keep the group of {file} (gid 23456)"), done.stdout
        assert "member of that group" in done.stdout
        assert file.read_bytes() == before


def test_a_lock_held_past_the_bound_fails_the_change_with_a_line_not_a_wait_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the lock was waited for without a bound and without a word, so a command stuck holding it
    (or a lock taken by hand) kept `rotate` in step 3 forever, the new secret held only in its memory. Past the
    bound the change fails (an OSError naming the lock), which `rotate` turns into the secret printed once."""
    file = tmp_path / "sources.yaml"
    write(file)
    before = file.read_bytes()
    monkeypatch.setattr(editor, "LOCK_WAIT_SECONDS", 0.3)
    holder = os.open(tmp_path / ".sources.yaml.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another command, mid-change
        with pytest.raises(BlockingIOError) as refused:
            edit(file, "shop", install_secret(B))
    finally:
        os.close(holder)
    assert refused.value.strerror == ".sources.yaml.lock held by another command for 0.3s"
    assert file.read_bytes() == before
    edit(file, "shop", install_secret(B))  # released: the change goes through
    assert [s.reveal() for s in parse(file.read_bytes(), "f")[0].secrets] == [B, A]


@pytest.mark.parametrize("shared", ["mytpe", "secrets"])
def test_a_change_to_a_block_yaml_shares_between_sources_is_made_to_one_source_only(
    tmp_path: Path, shared: str
) -> None:
    """Review finding: an anchor (`mytpe: &api {...}`, `mytpe: *api`) made one dict of two sources' blocks, so
    `register` wrote one source's webhook_id into both (and a secret installed in a shared list went to both):
    `rotate` or `unregister` of the other then acted on the first's endpoint."""
    path = tmp_path / "sources.yaml"
    path.write_text(
        "sources:\n"
        f"  - name: shop\n    secrets: &keys [{A}]\n"
        "    mytpe: &api {api: ext, base_url: 'https://api.mytpe.app/api/ext',\n"
        "                  api_key_file: /run/key, api_secret_file: /run/secret}\n"
        f"  - name: clinic\n    secrets: *keys\n    mytpe: *api\n"
    )
    if shared == "mytpe":
        edit(path, "shop", lambda entry: entry.setdefault("mytpe", {}).update(webhook_id="wh-shop-123"))
    else:
        edit(path, "shop", install_secret(B))
    shop, clinic = parse(path.read_bytes(), str(path))
    assert shop.mytpe is not None and clinic.mytpe is not None
    assert (shop.mytpe.webhook_id, clinic.mytpe.webhook_id) == (
        ("wh-shop-123", None) if shared == "mytpe" else (None, None)
    )
    secrets = ([s.reveal() for s in shop.secrets], [s.reveal() for s in clinic.secrets])
    assert secrets == (([B, A], [A]) if shared == "secrets" else ([A], [A]))


def test_a_directory_the_file_system_cannot_sync_does_not_fail_a_change_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: some FUSE and SMB mounts answer EINVAL to fsync on a directory. The change was in place,
    renamed over the file, yet `edit` raised, and `rotate` said the secret was not installed (print it, install
    it by hand) while the file held it."""
    path = tmp_path / "sources.yaml"
    write(path)
    synced = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        synced(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    edit(path, "shop", install_secret(B))
    assert [s.reveal() for s in parse(path.read_bytes(), "f")[0].secrets] == [B, A]
