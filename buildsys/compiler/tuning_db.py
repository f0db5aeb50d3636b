"""Tuning databases: MetaSchedule records as a cached, shared build input (no TVM here).

One tuning database per *scope*: the compile target (kind, mcpu, num-cores,
...) plus the TVM version. MetaSchedule does not key its records by ``mcpu``
(records tuned for znver5 apply silently to a generic target and run 8x
slower, see docs/toolchain.md), so the scope directory is what keeps records
for one CPU away from another. Inside a scope, workloads (same fused op, same
shapes) are shared by every model: the ResNet-50 convolutions of Mask R-CNN,
Faster R-CNN and RetinaNet are tuned once.

Layout, under the store root::

    tuning/<scope>/scope.json                  target, TVM version
    tuning/<scope>/database_workload.json      MetaSchedule JSONDatabase, append-only
    tuning/<scope>/database_tuning_record.json
    tuning/<scope>/models/<entry>.json         the workloads of one matrix entry
    tuning/<scope>/logs/                       MetaSchedule's per-task logs
    tuning/<scope>/.lock                       one tuner per scope at a time

The records applied to an entry (for each of its workloads, the best record)
are hashed into the build key, so better records mean a new artifact and the
same records mean a cache hit. Tuning is resumable: MetaSchedule appends each
measured batch to the database, so an interrupted run leaves its records and
the next run tunes only what is missing (a torn last line is dropped on open).

The tuner that fills a database is ``buildsys.compiler.tuning`` (TVM).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Mapping

from buildsys.artifacts.digests import canonical_json, digest_bytes
from buildsys.format.files import atomic_write, file_lock
from buildsys.config.spec import TuningSettings

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def scope_of(target: Mapping, tvm_version: str) -> str:
    """Short id of (target, TVM version): the directory a tuning database lives in."""
    return digest_bytes(canonical_json({"target": dict(target), "tvm": tvm_version})).split(":")[1][:16]


def tuning_target(target: Mapping) -> dict:
    """The target tuning and compiling use: ``num-cores`` defaults to this host's cores
    (MetaSchedule sizes parallel loops by it)."""
    target = dict(target)
    target.setdefault("num-cores", os.cpu_count() or 1)
    return target


class TuningDatabase:
    """One scope's directory. Reading needs no TVM; tuning and applying do."""

    def __init__(self, root: Path, target: Mapping, tvm_version: str):
        self.target = tuning_target(target)
        self.tvm_version = tvm_version
        self.scope = scope_of(self.target, tvm_version)
        self.path = Path(root) / "tuning" / self.scope

    # ------------------------------------------------------------ files
    def ensure(self) -> None:
        (self.path / "models").mkdir(parents=True, exist_ok=True)
        scope_file = self.path / "scope.json"
        if not scope_file.exists():
            atomic_write(scope_file, json.dumps({"target": self.target, "tvm": self.tvm_version}, indent=1))
        for name in (WORKLOAD_FILE, RECORD_FILE):
            (self.path / name).touch()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One tuner per scope (others wait, then find the records and skip)."""
        self.ensure()
        with file_lock(self.path / ".lock"):
            yield

    def repair(self) -> int:
        """Drop a torn last line (a tuner killed mid-write); returns lines dropped."""
        dropped = 0
        for name in (WORKLOAD_FILE, RECORD_FILE):
            path = self.path / name
            if not path.exists():
                continue
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data[:data.rfind(b"\n") + 1]
                atomic_write(path, keep)
                dropped += 1
        return dropped

    def _lines(self, name: str) -> list:
        path = self.path / name
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line while a tuner writes
                continue
        return rows

    def workload_hashes(self) -> list[str]:
        """Structural hashes of the workloads, in file order (records refer to them by index)."""
        return [str(row[0]) for row in self._lines(WORKLOAD_FILE)]

    def records_by_workload(self) -> dict[str, list]:
        hashes = self.workload_hashes()
        by: dict[str, list] = {}
        for index, record in self._lines(RECORD_FILE):
            if 0 <= index < len(hashes):
                by.setdefault(hashes[index], []).append(record)
        return by

    def stats(self) -> dict:
        by = self.records_by_workload()
        return {"scope": self.scope, "target": self.target, "tvm": self.tvm_version,
                "workloads": len(self.workload_hashes()), "records": sum(len(v) for v in by.values()),
                "digest": self.digest()}

    def digest(self) -> str:
        """Digest of the whole database (both files)."""
        parts = [(self.path / n).read_bytes() if (self.path / n).exists() else b"" for n in (WORKLOAD_FILE, RECORD_FILE)]
        return digest_bytes(b"\0".join(parts))

    # ------------------------------------------------------------ per entry
    def entry_file(self, entry_id: str) -> Path:
        return self.path / "models" / f"{entry_id}.json"

    def entry_info(self, entry_id: str) -> dict | None:
        try:
            return json.loads(self.entry_file(entry_id).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def applied(self, workloads: list[str]) -> dict:
        """What applying this database to a module with ``workloads`` uses: per workload,
        the best (lowest mean run time) record; and the digest of that selection."""
        by = self.records_by_workload()
        chosen = {}
        for shash in workloads:
            valid = [r for r in by.get(shash, []) if _mean_seconds(r) is not None]
            if valid:
                chosen[shash] = min(valid, key=_mean_seconds)
        trials = {shash: len(by.get(shash, [])) for shash in workloads}
        return {"digest": digest_bytes(canonical_json(sorted(chosen.items()))), "records": len(chosen),
                "workloads": len(workloads), "trials": trials}

    def pending(self, entry_id: str, settings: TuningSettings) -> str | None:
        """Why the entry must (re)tune before its key is known, or None when its records are final."""
        info = self.entry_info(entry_id)
        if info is None:
            return "its tuning tasks are not known yet (first build of this entry)"
        if settings.trials == 0 or info.get("complete"):
            return None
        missing = info["trials"] - sum(self.applied(info["workloads"])["trials"].values())
        return f"tuning was interrupted ({missing} trials left)" if missing > 0 else None


def _mean_seconds(record) -> float | None:
    """Mean measured run time of a JSON tuning record, None for a failed measurement."""
    try:
        secs = [float(s) for s in record[1]]
    except (TypeError, ValueError, IndexError):
        return None
    return sum(secs) / len(secs) if secs and all(s < 1e9 for s in secs) else None
