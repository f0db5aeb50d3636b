"""``gc --dry-run`` reports exactly what ``gc`` then does."""

from __future__ import annotations

import os
import time

from sqlalchemy import text

from buildsys.artifacts.registry import FileRecord
from buildsys.ops.retention import collect_garbage
from buildsys.workspace import Workspace
from tests.fixtures.records import new_artifact

LONG_AGO = time.time() - 30 * 86400


def _old(path):
    os.utime(path, (LONG_AGO, LONG_AGO))


def test_a_dry_run_reports_what_the_real_run_does(tmp_path):
    ws = Workspace(str(tmp_path / "builds.yaml"), str(tmp_path / "store"))
    store, registry = ws.store, ws.registry
    files = {}
    for key, names in (("aa" * 32, ("lib.so", "params.npz", "manifest.json")),
                       ("bb" * 32, ("lib.so", "params.npz", "manifest.json"))):
        records = []
        for name in names:
            digest, size = store.put_bytes(f"{key}{name}".encode(), name)
            _old(store.object_path(digest))
            records.append(FileRecord(name, digest, size))
        files[key] = records
        registry.publish(new_artifact(key, files=tuple(records), manifest_digest=records[2].digest))
    shared, _ = store.put_bytes(b"shared", "shared")  # named by both: stays while one of them does
    _old(store.object_path(shared))
    with registry._engine.begin() as conn:  # aa is past any retention; bb is new
        conn.execute(text("UPDATE artifacts SET created_at = '2000-01-01 00:00:00' WHERE key = :k"), {"k": "aa" * 32})
        conn.execute(text("INSERT INTO artifact_files (artifact_key, name, digest, size) VALUES "
                          "(:a, 'x', :d, 6), (:b, 'x', :d, 6)"), {"a": "aa" * 32, "b": "bb" * 32, "d": shared})
    orphan, _ = store.put_bytes(b"orphan", "orphan")  # unreferenced, past the grace period
    _old(store.object_path(orphan))
    registry.start_run("cc" * 32, "gone")  # an unfinished run whose builder is gone
    with registry._engine.begin() as conn:
        conn.execute(text("UPDATE build_runs SET pid = 999999999"))
    (store.tmp / "cc.999999999.dead").mkdir(parents=True)  # staging of a dead builder
    logs = store.root / "logs"
    logs.mkdir()
    (logs / "old.log").write_text("x")
    _old(logs / "old.log")

    dry = collect_garbage(ws, dry_run=True, older_than="7d")
    real = collect_garbage(ws, older_than="7d")
    assert [line.replace("would remove", "removed").replace("would be marked", "marked") for line in dry] == real
    assert real[-1] == "removed 1 staging entries and 4 unreferenced objects; 1 unfinished runs marked crashed"
    assert f"removed object {orphan}" in real and f"removed object {shared}" not in real
    assert all(f"removed object {f.digest}" in real for f in files["aa" * 32])
    assert collect_garbage(ws, dry_run=True, older_than="7d")[-1].startswith("would remove 0 staging entries and 0")
