"""A full disk and a read-only store, for real (a small tmpfs; root only, skipped otherwise).

Writes fail with "no space left on device: <path>" (or "read-only file system") and their exit
code, leaving nothing half-written; the commands that only read keep working (the registry is
then opened read-only: see the measurements in buildsys/artifacts/registry/db.py, replayed here).
"""

from __future__ import annotations

import os
import sqlite3

import pytest
from sqlalchemy import text

from buildsys.artifacts.registry import FileRecord, Registry
from buildsys.artifacts.registry.db import read_only_engine
from buildsys.artifacts.store import Store
from buildsys.cli import main
from buildsys.errors import BuildError, RegistryError, StoreError
from tests.fixtures.tmpfs import fill, read_only, tmpfs
from tests.fixtures.records import new_artifact


def populate(store_dir):
    """A store with one whole artifact (objects and row) and an alias."""
    store = Store(store_dir)
    files = [FileRecord(name, *store.put_bytes(name.encode() * 100, name))
             for name in ("lib.so", "params.npz", "manifest.json")]
    registry = Registry(f"sqlite:///{store_dir / 'registry.db'}")
    registry.publish(new_artifact("ab" * 32, files=tuple(files), manifest_digest=files[2].digest))
    registry.set_alias("prod", "abab")
    registry.close()
    return store


def cli(store_dir, *args):
    return main(["--store", str(store_dir), *args])


READS = [("ls",), ("verify",), ("gc", "--dry-run"), ("gc",)]  # show, run, diff, plan: tests/integration/test_disk_full.py


# A write needs SQLite's -shm index (32 KiB) and -wal frames (a 4 KiB page each, and a header)
# beside the registry: with 40,000 bytes or less it cannot be made, with 100,000 it can.
@pytest.mark.parametrize("leave, writes", [(0, False), (4096, False), (40_000, False), (100_000, True)])
def test_a_full_disk_keeps_reads_working_and_words_writes(tmp_path, capsys, leave, writes):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        populate(disk / "store")
        fill(disk, leave)
        for args in READS:
            assert cli(disk / "store", *args) == 0, (args, capsys.readouterr())
        assert "ababababab" in capsys.readouterr().out
        code = cli(disk / "store", "alias", "set", "other", "abab")
        err = capsys.readouterr().err
        if writes:
            assert code == 0, err
        else:
            assert code == 6 and f"no space left on device: {disk / 'store'}" in err and "Traceback" not in err, err
        fill(disk, 0)
        assert cli(disk / "store", "alias", "rm", "prod") == 6
        err = capsys.readouterr().err
        assert f"no space left on device: {disk / 'store' / 'registry.db'}" in err
        assert cli(disk / "store", "ls") == 0 and "prod" in capsys.readouterr().out  # nothing was changed


def test_a_read_only_store_keeps_reads_working(tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        populate(disk / "store")
        read_only(disk)
        for args in READS[:3]:
            assert cli(disk / "store", *args) == 0, (args, capsys.readouterr())
        capsys.readouterr()
        assert cli(disk / "store", "alias", "set", "other", "abab") == 6
        assert "read-only file system: " in capsys.readouterr().err
        assert cli(disk / "store", "gc") == 0  # nothing to remove: nothing to write


def test_store_writes_on_a_full_disk_say_so_and_leave_nothing(tmp_path):
    with tmpfs(tmp_path / "disk", "256k") as disk:
        store = Store(disk / "store")
        store.put_bytes(b"x", "warm")  # the folders exist
        fill(disk, 8192)
        with pytest.raises(StoreError, match=r"no space left on device: .*\(200000 bytes needed, \d+ free\)"):
            store.put_bytes(b"y" * 200_000, "lib.so")
        assert list(store.tmp.iterdir()) == [] and len(list(store.iter_objects())) == 1


def test_a_registry_that_cannot_be_created_leaves_no_empty_file(tmp_path):
    with tmpfs(tmp_path / "disk", "256k") as disk:
        fill(disk, 0)
        with pytest.raises(RegistryError, match="no space left on device: .*could not be created"):
            Registry(f"sqlite:///{disk / 'registry.db'}")
        assert not (disk / "registry.db").exists()  # else, once space is back: "0 bytes, restore it"


def test_sqlite_wal_reads_without_shm_as_measured(tmp_path):
    """The measurements behind db.read_only_engine (SQLite 3.40.1): on a full disk a WAL database
    without its -shm opens with ?immutable=1 only; with a writer holding -wal and -shm open,
    ?mode=ro reads the -wal's commits too, which immutable would miss."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        db = disk / "r.db"
        setup = sqlite3.connect(db)
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t(x)")
        setup.commit()
        setup.close()  # the last connection checkpoints and removes -wal and -shm
        fill(disk, 0)
        with pytest.raises(sqlite3.OperationalError):
            sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT * FROM t").fetchall()
        assert sqlite3.connect(f"file:{db}?immutable=1", uri=True).execute("SELECT * FROM t").fetchall() == []
        (disk / "filler").unlink()
        writer = sqlite3.connect(db)
        writer.execute("INSERT INTO t VALUES (1)")
        writer.commit()  # in the -wal, not yet in r.db
        fill(disk, 0)
        assert sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT * FROM t").fetchall() == [(1,)]
        assert sqlite3.connect(f"file:{db}?immutable=1", uri=True).execute("SELECT * FROM t").fetchall() == []
        with read_only_engine(str(db), "no space left on device").connect() as conn:
            assert conn.execute(text("SELECT x FROM t")).fetchall() == [(1,)]
        writer.close()


def test_a_failure_whose_own_words_name_a_full_disk_is_the_disk_whatever_room_is_left(tmp_path):
    """A tool that removed its partial output leaves the room it needed free again: the space
    check after the failure finds nothing, and "Compilation error" was reported (exit 3). The
    tool's own words ("No space left on device", "Read-only file system") now count."""
    from buildsys.pipeline.failures import failure_text

    store = Store(tmp_path / "store")
    store.put_bytes(b"x", "warm")  # store/tmp exists, on a disk with room
    linker = BuildError("export_library failed: RuntimeError: Compilation error:\n/usr/bin/ld: final link "
                        "failed: No space left on device\nCommand line: g++ -shared", key="ab" * 32, stage="serialize")
    text, storage = failure_text(linker, store)
    assert storage, text
    assert text.startswith(f"no space left on device: {store.tmp} (") and "free space on that disk" in text, text
    text, storage = failure_text(OSError("cannot write: Read-only file system"), store)
    assert storage and text.startswith(f"read-only file system: {store.tmp} ("), text
    text, storage = failure_text(RuntimeError("Compilation error: undefined reference"), store)
    assert not storage and "no space" not in text, text


def test_a_tuning_failure_on_a_full_disk_exits_4_naming_the_file(tmp_path, monkeypatch):
    """Tuning wrote its records into the store's tuning database: a full disk there was reported
    as "unexpected OSError" with a traceback, exit 3."""
    import errno

    from buildsys.config.spec import parse_specs
    from buildsys.pipeline import runner
    from buildsys.format.status import Action
    from buildsys.pipeline.jobs import Job

    spec = parse_specs("models: {tiny: {source: 'tests.fixtures.models:tiny_cnn'}}\n"
                       "matrix: {model: [tiny], input_size: [32], tuning: [64]}\n", base_dir=tmp_path)[0]
    store = Store(tmp_path / "store")
    registry = Registry(f"sqlite:///{tmp_path / 'store' / 'registry.db'}")
    records = tmp_path / "store" / "tuning" / "records.json"

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(records))

    monkeypatch.setattr(runner, "tune_entry", full)
    job = Job(spec, "cd" * 32, {}, Action.BUILD, "new", tune_first=True, entry_key="ef" * 32)
    report = runner.tune_entries([job], store, registry)
    assert report.results[0].storage, report.results[0].error
    assert report.results[0].error.startswith(f"no space left on device: {records} ("), report.results[0].error
    with pytest.raises(StoreError, match="no space left on device: "):
        report.raise_for_failures(tuning=True)
    assert registry.runs(limit=1)[0].error == report.results[0].error
