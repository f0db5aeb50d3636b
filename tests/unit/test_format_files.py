"""The shared file primitives (buildsys/format/files.py): a write is whole or absent, a lock is
exclusive and dies with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from buildsys.format import files


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "depfile.json"
    files.atomic_write(path, "old")
    files.atomic_write(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depfile.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    files.atomic_write(path, "kept")

    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)  # a disk that fails under the write
    with pytest.raises(OSError, match="Input/output error"):
        files.atomic_write(path, "x" * 100_000)
    monkeypatch.undo()
    assert path.read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_every_write_is_fsynced_file_then_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.isdir(f"/proc/self/fd/{fd}")), real(fd)))
    files.atomic_write(tmp_path / "a", "data")
    assert synced == [False, True]  # the bytes, then the rename in the folder
    synced.clear()
    staged = tmp_path / "staged"
    staged.write_bytes(b"object")
    files.durable_replace(staged, tmp_path / "object")
    assert synced == [False, True] and (tmp_path / "object").read_bytes() == b"object"


HOLDER = textwrap.dedent("""
    import sys, time
    from buildsys.format.files import file_lock
    with file_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_lock_is_exclusive_and_released_when_its_holder_is_killed(tmp_path):
    lock = tmp_path / "entry.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with files.file_lock(lock, blocking=False) as taken:
            assert taken is False
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with files.file_lock(lock, blocking=False) as taken:
            assert taken is True
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_file_that_cannot_be_made_is_an_os_error_for_the_caller_to_word(tmp_path):
    with pytest.raises(OSError):
        with files.file_lock(tmp_path / "missing-folder" / "x.lock"):
            pass
