"""Builds, exports and imports on a full disk, and every read-only command on a full disk and a
read-only store, for real: a small tmpfs (root only, skipped otherwise)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from buildsys.artifacts.store import Store
from buildsys.cli import main
from tests.fixtures.capabilities import missing, need_readable_by_others
from tests.fixtures.tmpfs import fill, read_only, tmpfs
from tests.fixtures.workspace import Workspace

pytestmark = pytest.mark.model

ONE = """
models:
  tiny_cnn: {source: "tests.fixtures.models:tiny_cnn", kwargs: {classes: 10}}
matrix: {model: [tiny_cnn], input_size: [32]}
"""


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "disk I/O error" not in text and "Compilation error:)" not in text.split(
        "(the build failed with:")[0], text


def _artifact_bytes(built) -> int:
    """What the tiny CNN's artifact occupies in the store (lib.so, params.npz, manifest.json): a
    build with less room than this cannot end with it published."""
    (record,) = [r for r in built.registry.list() if r.model == "tiny_cnn" and r.input_size == "32x32"]
    return sum(f.size for f in record.files)


@pytest.mark.parametrize("room", ["none", "half the artifact", "just under the artifact", "plenty"])
def test_a_build_on_a_full_disk_fails_in_words_and_registers_nothing(built, tmp_path, capsys, room):
    need = _artifact_bytes(built)
    leave = {"none": 0, "half the artifact": need // 2, "just under the artifact": need - 4096,
             "plenty": 1_500_000}[room]
    with tmpfs(tmp_path / "disk", "3m") as disk:
        ws = Workspace(tmp_path, ONE)
        ws.store = disk / "store"
        fill(disk, leave)
        code = ws.cli("build", "--progress", "plain")
        out, err = capsys.readouterr()
        _no_traceback(out + err)
        if room == "plenty":
            assert code == 0, (leave, code, out, err)
            assert [r.status for r in ws.registry.list()] == ["ok"]
            return
        # less room than the artifact itself: the disk is named, with its exit code, nothing registered
        assert code in (4, 6) and "no space left on device: " in err, (leave, code, out, err)
        (disk / "filler").unlink()
        if (ws.store / "registry.db").exists():
            assert ws.registry.list() == []
            assert ws.cli("verify") == 0  # no row names a missing or partial file
            tmp = Store(ws.store).tmp
            assert not tmp.exists() or list(tmp.iterdir()) == []
        assert ws.cli("build", "--progress", "plain") == 0, capsys.readouterr()  # space is back: it builds


def test_a_link_that_fills_the_disk_says_so_whatever_room_is_left_after(tmp_path, capsys):
    """The staging folder on a disk with 96 KiB free: more than counts as nearly full, less than the
    linker's output (lib.so, about 100 KiB). TVM said "Compilation error:", exit 3; ld's "No space
    left on device" was only in the log, and the space check after the failure found the room back
    (ld had removed its partial file). Now: the disk, the library's path, exit 4."""
    ws = Workspace(tmp_path, ONE)
    with tmpfs(ws.store / "tmp", "96k"):
        code = ws.cli("build", "--progress", "plain")
        out, err = capsys.readouterr()
        _no_traceback(out + err)
        assert code == 4, (code, out, err)
        assert f"serialize: writing the library: no space left on device: {ws.store / 'tmp'}/" in err, err
        assert "/lib.so (" in err and "free space on that disk" in err, err
        assert "Compilation error" not in err, err
        assert list((ws.store / "tmp").iterdir()) == []
    assert ws.registry.list() == []


def _copy_to_disk(built, disk):
    store = disk / "store"
    shutil.copytree(built.store, store, ignore=shutil.ignore_patterns("*.lock", "tmp", "logs"))
    copy = Workspace.__new__(Workspace)
    copy.root, copy.config, copy.store = disk, built.config, store
    return copy


def _read_commands(ws, capsys, key):
    for args in (["ls"], ["show", key], ["verify"], ["plan"], ["run", key], ["log", key, "--path"],
                 ["gc", "--dry-run"], ["diff", key, key]):
        code = ws.cli(*args)
        out, err = capsys.readouterr()
        _no_traceback(out + err)
        assert code == 0, (args, code, out, err)  # log: the registry names the original build's log


def test_read_only_commands_work_on_a_full_disk(built, tmp_path, capsys):
    key = built.registry.list()[0].key
    with tmpfs(tmp_path / "disk", "4m") as disk:
        ws = _copy_to_disk(built, disk)
        fill(disk, 0)
        _read_commands(ws, capsys, key)
        assert ws.cli("alias", "set", "prod", key[:8]) == 6
        assert f"no space left on device: {ws.store / 'registry.db'}" in capsys.readouterr().err
        assert ws.cli("export", key[:8], "-o", str(disk / "out")) == 4
        err = capsys.readouterr().err
        assert "no space left on device: " in err and "bytes needed" in err, err
        assert not (disk / "out").exists() or not any((disk / "out").rglob("lib.so"))


def test_read_only_commands_work_on_a_read_only_store(built, tmp_path, capsys):
    key = built.registry.list()[0].key
    with tmpfs(tmp_path / "disk", "4m") as disk:
        ws = _copy_to_disk(built, disk)
        read_only(disk)
        _read_commands(ws, capsys, key)
        assert ws.cli("alias", "set", "prod", key[:8]) == 6
        assert "read-only file system: " in capsys.readouterr().err


def _chattr(flag: str, path) -> None:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        missing(f"chattr {flag} {path}: {done.stderr.strip() or done.returncode}")


def _without_wal(store) -> None:
    """The registry as a closed one leaves it: no -wal or -shm file, which must then be created."""
    with contextlib.closing(sqlite3.connect(store / "registry.db")) as db:  # the last one out removes them
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert not (store / "registry.db-shm").exists() and not (store / "registry.db-wal").exists()


def test_read_only_commands_work_on_an_immutable_store(built, tmp_path, capsys):
    """``chattr +i`` on the store folder: SQLite cannot create its -shm beside the registry, and
    ls, show, run, verify and plan exited 6 with "unable to open database file"."""
    key = built.registry.list()[0].key
    ws = _copy_to_disk(built, tmp_path)
    _without_wal(ws.store)
    _chattr("+i", ws.store)
    try:
        _read_commands(ws, capsys, key)
        assert ws.cli("alias", "set", "prod", key[:8]) == 6
        err = capsys.readouterr().err
        assert f"immutable folder: {ws.store}; the registry was not changed; clear its immutable flag" in err, err
    finally:
        _chattr("-i", ws.store)


def _as_another_user(function, *args) -> tuple[int, str]:
    """``function(*args)`` (an exit code) in a child that became nobody (uid/gid 65534): its code
    and what it printed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                code = function(*args)
            os.write(write_end, printed.getvalue().encode())
        except BaseException as exc:  # noqa: BLE001 - said to the parent
            os.write(write_end, f"child raised {exc!r}".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        printed = pipe.read().decode()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), printed


def test_read_only_commands_work_on_a_store_another_user_owns(built, tmp_path, capsys):
    """A store owned by root (folders 0755, files 0644) read by another user: SQLite cannot
    create its -shm there, and every read exited 6 with "unable to open database file"."""
    need_readable_by_others("becoming another user")
    key = built.registry.list()[0].key
    home = Path(tempfile.mkdtemp(prefix="buildsys-other-user-"))  # pytest's tmp_path is root's alone (0700)
    try:
        home.chmod(0o755)
        _read_commands(_copy_to_disk(built, tmp_path), capsys, key)  # as root: all they import, before setuid
        ws = _copy_to_disk(built, home)
        shutil.copy(built.config, home / "builds.yaml")
        ws.config = home / "builds.yaml"
        _without_wal(ws.store)
        for args in (["ls"], ["show", key[:8]], ["verify"], ["plan"], ["run", key[:8]]):
            code, printed = _as_another_user(ws.cli, *args)
            assert code == 0 and "Traceback" not in printed, (args, code, printed)
        code, printed = _as_another_user(ws.cli, "alias", "set", "prod", key[:8])
        assert code == 6, printed
        assert f"permission denied: {ws.store / 'registry.db'}; the registry was not changed; give this user write " \
            "permission there" in printed, printed
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_import_into_a_full_store_registers_nothing(built, tmp_path, capsys):
    release = tmp_path / "r.tar"
    assert built.cli("export", "--all", "-o", str(release)) == 0
    with tmpfs(tmp_path / "disk", "2m") as disk:
        store = disk / "store"
        assert main(["--store", str(store), "ls"]) == 0  # a registry, empty
        for leave in (300_000, 0):
            fill(disk, leave)
            code = main(["--store", str(store), "import", str(release)])
            out, err = capsys.readouterr()
            _no_traceback(out + err)
            assert code in (4, 6) and "no space left on device: " in err, (code, out, err)
            assert main(["--store", str(store), "ls"]) == 0
            assert "no artifacts yet" in capsys.readouterr().out
