"""The registry's public face: frozen records in, frozen records out.

Nothing outside this package sees a SQLAlchemy object or imports TVM.

Longer than 400 lines on purpose: one class, the registry's whole API, each method one
session scope with its retry on a busy database; split by table, a transaction would span files.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from sqlalchemy import delete, select
from sqlalchemy.orm import selectinload, sessionmaker

from buildsys.errors import RegistryError, UsageError, did_you_mean
from buildsys.format.status import ArtifactStatus, RunStatus
from buildsys.format.target import Target
from buildsys.artifacts.space import remedy
from buildsys.artifacts.registry.db import (HEAD_REVISION, discard_empty, ensure_schema, make_engine, read_only_engine, retrying,
                                            session_scope, sqlite_storage_problem, storage_refusal, writable_problem)
from buildsys.artifacts.registry.lookup import is_key_prefix, pick_prefix_match, refuse_reference
from buildsys.artifacts.registry.tables import Alias, Artifact, ArtifactFile, Benchmark, BuildRun, Metric, TuningDatabaseRow

def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class FileRecord:
    name: str
    digest: str
    size: int


@dataclass(frozen=True)
class _ArtifactFields:
    """What an artifact is: shared by what the builder hands over and what the registry returns."""

    key: str
    model: str
    task: str
    input_size: str
    target: Target  # read from the row as outside input (Target.read)
    opt_level: int
    disabled_passes: tuple[str, ...]
    spec: Mapping[str, Any]
    key_material: Mapping[str, Any]
    toolchain: Mapping[str, Any]
    manifest_digest: str
    parity_max_abs: float | None
    parity_max_rel: float | None


@dataclass(frozen=True)
class NewArtifact(_ArtifactFields):
    """What the builder hands over to publish one artifact."""

    files: tuple[FileRecord, ...] = ()
    metrics: Mapping[str, tuple[float, str]] = field(default_factory=dict)  # name -> (value, unit)
    status: str = ArtifactStatus.OK  # or ArtifactStatus.UNVERIFIED


@dataclass(frozen=True)
class ArtifactRecord(_ArtifactFields):
    """A published artifact as the registry holds it."""

    status: str = ArtifactStatus.OK
    created_at: datetime | None = None
    files: tuple[FileRecord, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def file(self, name: str) -> FileRecord:
        for f in self.files:
            if f.name == name:
                return f
        raise RegistryError(f"artifact {self.key[:12]} has no file {name!r} (it has: "
                            f"{', '.join(f.name for f in self.files)})")


@dataclass(frozen=True)
class BuildRunRecord:
    id: int
    key: str
    label: str
    status: str
    error: str | None
    host: str
    pid: int
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    log_path: str | None = None


@dataclass(frozen=True)
class AliasRecord:
    name: str
    key: str
    updated_at: datetime


def _row_target(row: Artifact) -> Target:
    try:
        return Target.read(json.loads(row.target))
    except ValueError as exc:  # JSONDecodeError too
        raise RegistryError(f"artifact {row.key[:12]}: the registry's target column is damaged ({exc}); "
                            "rebuild the entry (`buildsys build --force`) or remove its row") from None


def _artifact_record(row: Artifact) -> ArtifactRecord:
    return ArtifactRecord(
        key=row.key, model=row.model, task=row.task, input_size=row.input_size,
        target=_row_target(row), opt_level=row.opt_level,
        disabled_passes=tuple(json.loads(row.disabled_passes)), spec=json.loads(row.spec_json),
        key_material=json.loads(row.key_material_json), toolchain=json.loads(row.toolchain_json),
        manifest_digest=row.manifest_digest, status=row.status, parity_max_abs=row.parity_max_abs,
        parity_max_rel=row.parity_max_rel, created_at=row.created_at,
        files=tuple(FileRecord(f.name, f.digest, f.size) for f in row.files),
        metrics={m.name: m.value for m in row.metrics},
        aliases=tuple(a.name for a in row.aliases))


def _waits_when_busy(method):
    """A write that waits (with backoff, saying so) while another process holds the lock."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return retrying(lambda: method(self, *args, **kwargs), method.__name__.replace("_", " "))

    return wrapper


_IN_CHUNK = 500  # keys per IN (...) query: well under every database's bound parameter limit


def _run_record(row: BuildRun) -> BuildRunRecord:
    return BuildRunRecord(id=row.id, key=row.key, label=row.label, status=row.status, error=row.error,
                          host=row.host, pid=row.pid, started_at=row.started_at, finished_at=row.finished_at,
                          duration_s=row.duration_s, log_path=row.log_path)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Registry:
    """A registry at a SQLAlchemy URL (default: SQLite under the store)."""

    def __init__(self, url: str):
        self.url = url
        self._engine = make_engine(url)
        # On a full disk or a read-only file system a SQLite registry is opened read-only: the
        # commands that only read work; a write says why it cannot be made (``_scope``).
        self.read_only = writable_problem(self._engine)
        if self.read_only is None:
            database = self._engine.url.database if self._engine.dialect.name == "sqlite" else None
            existed = bool(database) and os.path.exists(database)
            try:
                ensure_schema(self._engine)
            except RegistryError:
                why = sqlite_storage_problem(self._engine)
                if why is None:
                    raise
                self._engine.dispose()
                if not existed and database:
                    discard_empty(database)
                raise RegistryError(f"{why}: {self._engine.url.database}: the registry could not be created or "
                                    f"migrated to schema revision {HEAD_REVISION} (nothing was changed); "
                                    f"{remedy(why)} and run the command again") from None
        else:
            self._database = self._engine.url.database
            self._engine.dispose()
            self._engine = read_only_engine(self._database, self.read_only)
            self._refuse_old_schema()
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    def _refuse_old_schema(self) -> None:
        from sqlalchemy import inspect, text

        with self._engine.connect() as conn:
            revision = (conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                        if inspect(conn).has_table("alembic_version") else None)
        if revision != HEAD_REVISION:
            raise RegistryError(f"{self.read_only}: {self._database}: the registry is at schema revision "
                                f"{revision or 'none'} and needs migrating to {HEAD_REVISION}, which writes; "
                                f"{remedy(self.read_only)} and run the command again")

    def close(self) -> None:
        self._engine.dispose()

    @contextlib.contextmanager
    def _scope(self):
        """One session; a write that fails on a full or read-only disk says so, with the path."""
        try:
            with session_scope(self._sessions) as s:
                yield s
        except RegistryError as exc:
            if self.read_only is not None:
                raise storage_refusal(self._database, self.read_only) from None
            code = getattr(exc, "sqlite_error", None) or ""
            why = sqlite_storage_problem(self._engine) if code.startswith(("SQLITE_FULL", "SQLITE_IOERR",
                                                                             "SQLITE_READONLY", "SQLITE_CANTOPEN")) else None
            if why is not None:
                raise storage_refusal(self._engine.url.database, why) from None
            raise

    @staticmethod
    def _loaded():
        return (selectinload(Artifact.files), selectinload(Artifact.metrics), selectinload(Artifact.aliases))

    # ------------------------------------------------------------ artifacts

    @_waits_when_busy
    def publish(self, new: NewArtifact) -> ArtifactRecord:
        """Insert (or, on a forced rebuild, replace) one artifact with its files and metrics, atomically."""
        with self._scope() as s:
            row = s.get(Artifact, new.key)
            if row is None:
                row = Artifact(key=new.key)
                s.add(row)
            else:
                row.files.clear()
                row.metrics.clear()
                s.flush()
            row.model, row.task, row.input_size = new.model, new.task, new.input_size
            row.target, row.opt_level = _dumps(new.target), new.opt_level
            row.disabled_passes = _dumps(list(new.disabled_passes))
            row.spec_json, row.key_material_json = _dumps(new.spec), _dumps(new.key_material)
            row.toolchain_json, row.manifest_digest = _dumps(new.toolchain), new.manifest_digest
            row.status, row.created_at = new.status, _now()
            row.parity_max_abs, row.parity_max_rel = new.parity_max_abs, new.parity_max_rel
            row.files.extend(ArtifactFile(name=f.name, digest=f.digest, size=f.size) for f in new.files)
            row.metrics.extend(Metric(name=n, value=float(v), unit=u) for n, (v, u) in sorted(new.metrics.items()))
            s.flush()
            s.refresh(row)
            return _artifact_record(row)

    def get(self, key: str) -> ArtifactRecord | None:
        with self._scope() as s:
            row = s.scalars(select(Artifact).where(Artifact.key == key).options(*self._loaded())).first()
            return _artifact_record(row) if row else None

    def keys(self) -> set[str]:
        with self._scope() as s:
            return set(s.scalars(select(Artifact.key)))

    def plan_state(self, keys: Iterable[str]) -> dict[str, tuple[datetime, list[tuple[str, str]]]]:
        """For planning, in one query per 500 keys: key -> (created_at, [(file name, digest)])
        of the keys that are registered."""
        keys = sorted(set(keys))
        state: dict[str, tuple[datetime, list[tuple[str, str]]]] = {}
        with self._scope() as s:
            for i in range(0, len(keys), _IN_CHUNK):
                rows = s.execute(select(Artifact.key, Artifact.created_at, ArtifactFile.name, ArtifactFile.digest)
                                 .join(ArtifactFile, ArtifactFile.artifact_key == Artifact.key, isouter=True)
                                 .where(Artifact.key.in_(keys[i:i + _IN_CHUNK])))
                for key, created_at, name, digest in rows:
                    files = state.setdefault(key, (created_at, []))[1]
                    if name is not None:
                        files.append((name, digest))
        return state

    def last_runs(self, keys: Iterable[str]) -> dict[str, BuildRunRecord]:
        """The latest build run of each key that has one (one query per 500 keys)."""
        keys = sorted(set(keys))
        last: dict[str, BuildRunRecord] = {}
        with self._scope() as s:
            for i in range(0, len(keys), _IN_CHUNK):
                rows = s.scalars(select(BuildRun).where(BuildRun.key.in_(keys[i:i + _IN_CHUNK]))
                                 .order_by(BuildRun.id.desc()))
                for row in rows:
                    last.setdefault(row.key, _run_record(row))
        return last

    def list(self) -> list[ArtifactRecord]:
        with self._scope() as s:
            rows = s.scalars(select(Artifact).options(*self._loaded())
                             .order_by(Artifact.model, Artifact.input_size, Artifact.created_at))
            return [_artifact_record(r) for r in rows]

    @_waits_when_busy
    def add_metrics(self, key: str, metrics: Mapping[str, tuple[float, str]]) -> None:
        with self._scope() as s:
            for name, (value, unit) in metrics.items():
                s.execute(delete(Metric).where(Metric.artifact_key == key, Metric.name == name))
                s.add(Metric(artifact_key=key, name=name, value=float(value), unit=unit))

    def resolve(self, ref: str) -> ArtifactRecord:
        """An alias, a full key, or a unique key prefix (at least 4 hex digits), like git."""
        with self._scope() as s:
            key = self._key_of(s, ref, Artifact.key)
            row = s.scalars(select(Artifact).where(Artifact.key == key).options(*self._loaded())).one()
            return _artifact_record(row)

    @staticmethod
    def _key_of(s, ref: str, keys_column, none_found: str | None = None) -> str:
        """The key ``ref`` names: an alias's, or the one value of ``keys_column`` it is a prefix of."""
        ref = ref.strip()
        alias = s.get(Alias, ref)
        if alias is not None:
            return alias.artifact_key
        if not is_key_prefix(ref):
            refuse_reference(ref, list(s.scalars(select(Alias.name))))
        keys = list(s.scalars(select(keys_column).where(keys_column.startswith(ref.lower()))
                              .distinct().order_by(keys_column).limit(11)))
        if not keys and none_found:
            raise UsageError(none_found.format(ref=ref))
        return pick_prefix_match(ref, keys)

    @_waits_when_busy
    def delete(self, key: str) -> None:
        with self._scope() as s:
            row = s.get(Artifact, key)
            if row is None:
                return
            if row.aliases:
                raise RegistryError(f"artifact {key[:12]} has aliases {', '.join(a.name for a in row.aliases)}; "
                                    "remove them first")
            s.delete(row)

    # ------------------------------------------------------------ aliases

    @_waits_when_busy
    def set_alias(self, name: str, ref: str) -> AliasRecord:
        if not name or any(c.isspace() for c in name):
            raise UsageError(f"alias names have no spaces and are not empty: {name!r}")
        key = self.resolve(ref).key
        if is_key_prefix(name):
            raise UsageError(f"alias {name!r} looks like a key prefix; pick a name with a non-hex letter")
        with self._scope() as s:
            row = s.get(Alias, name) or Alias(name=name)
            row.artifact_key, row.updated_at = key, _now()
            s.add(row)
            s.flush()
            return AliasRecord(row.name, row.artifact_key, row.updated_at)

    @_waits_when_busy
    def remove_alias(self, name: str) -> None:
        with self._scope() as s:
            row = s.get(Alias, name)
            if row is None:
                names = list(s.scalars(select(Alias.name)))
                raise UsageError(f"no alias {name!r}" + (f"; {did_you_mean(name, names)}"
                                                         if did_you_mean(name, names) else ""))
            s.delete(row)

    def aliases(self) -> list[AliasRecord]:
        with self._scope() as s:
            return [AliasRecord(a.name, a.artifact_key, a.updated_at)
                    for a in s.scalars(select(Alias).order_by(Alias.name))]

    # ------------------------------------------------------------ build runs

    @_waits_when_busy
    def start_run(self, key: str, label: str, log_path: str | None = None) -> int:
        with self._scope() as s:
            row = BuildRun(key=key, label=label[:400], status=RunStatus.RUNNING, host=socket.gethostname()[:200],
                           pid=os.getpid(), started_at=_now(), log_path=log_path)
            s.add(row)
            s.flush()
            return row.id

    @_waits_when_busy
    def finish_run(self, run_id: int, status: str, error: str | None = None,
                   key: str | None = None) -> BuildRunRecord:
        """``key``: the artifact's key when the build found it differs from the planned one."""
        with self._scope() as s:
            row = s.get(BuildRun, run_id)
            if row is None:
                raise RegistryError(f"no build run {run_id}")
            row.status, row.error, row.finished_at = status, error, _now()
            if key is not None:
                row.key = key
            row.duration_s = (row.finished_at - row.started_at).total_seconds()
            s.flush()
            return _run_record(row)

    def runs(self, key: str | None = None, limit: int = 50) -> list[BuildRunRecord]:
        with self._scope() as s:
            query = select(BuildRun).order_by(BuildRun.id.desc()).limit(limit)
            if key:
                query = query.where(BuildRun.key == key)
            return [_run_record(r) for r in s.scalars(query)]

    def last_run(self, ref: str) -> BuildRunRecord:
        """The latest build run of an alias's artifact, or of the one key (built or not) that starts with ``ref``."""
        with self._scope() as s:
            key = self._key_of(s, ref, BuildRun.key,
                               none_found="no build run of a key that starts with {ref!r}; `buildsys plan` shows keys")
            row = s.scalars(select(BuildRun).where(BuildRun.key == key).order_by(BuildRun.id.desc()).limit(1)).first()
            if row is None:
                raise UsageError(f"artifact {key[:12]} has no build run here (imported from a release?)")
            return _run_record(row)

    @_waits_when_busy
    def mark_crashed_runs(self, alive, dry_run: bool = False) -> int:
        """Runs still 'running' on this host whose process is gone become 'crashed' (with
        ``dry_run``: are only counted)."""
        host = socket.gethostname()[:200]
        with self._scope() as s:
            stale = [r for r in s.scalars(select(BuildRun).where(BuildRun.status == RunStatus.RUNNING,
                                                                 BuildRun.host == host))
                     if not alive(r.pid)]
            for row in stale if not dry_run else ():
                row.status, row.finished_at = RunStatus.CRASHED, _now()
                row.error = "the builder process ended without finishing (killed or crashed)"
            return len(stale)

    def file_digests(self) -> Iterable[tuple[str, FileRecord]]:
        """Every (key, file) pair, for store verification and gc."""
        with self._scope() as s:
            return [(f.artifact_key, FileRecord(f.name, f.digest, f.size))
                    for f in s.scalars(select(ArtifactFile).order_by(ArtifactFile.artifact_key, ArtifactFile.name))]

    # ------------------------------------------------------------ tuning databases
    @_waits_when_busy
    def record_tuning_database(self, stats: Mapping[str, Any]) -> TuningDatabaseRecord:
        """Insert or update a scope's tuning database (digest, counts) after a tuning run."""
        with self._scope() as s:
            row = s.get(TuningDatabaseRow, stats["scope"])
            if row is None:
                row = TuningDatabaseRow(scope=stats["scope"])
                s.add(row)
            row.target, row.tvm_version = _dumps(stats["target"]), stats["tvm"]
            row.digest, row.workloads, row.records = stats["digest"], stats["workloads"], stats["records"]
            row.updated_at = _now()
            s.flush()
            return _tuning_record(row)

    def tuning_databases(self) -> list[TuningDatabaseRecord]:
        with self._scope() as s:
            return [_tuning_record(r) for r in s.scalars(select(TuningDatabaseRow).order_by(TuningDatabaseRow.scope))]

    # ------------------------------------------------------------ benchmarks
    @_waits_when_busy
    def add_benchmark(self, key: str, *, cpu_model: str, threads: int, rounds: int,
                      results: Mapping[str, Any]) -> BenchmarkRecord:
        with self._scope() as s:
            if s.get(Artifact, key) is None:
                raise RegistryError(f"no artifact {key[:12]} to attach a benchmark to")
            row = Benchmark(artifact_key=key, host=socket.gethostname()[:200], cpu_model=cpu_model[:200],
                            threads=threads, rounds=rounds, results_json=_dumps(results), created_at=_now())
            s.add(row)
            s.flush()
            return _benchmark_record(row)

    def benchmarks(self, key: str | None = None, limit: int = 50) -> list[BenchmarkRecord]:
        """Newest first."""
        with self._scope() as s:
            query = select(Benchmark).order_by(Benchmark.id.desc()).limit(limit)
            if key:
                query = query.where(Benchmark.artifact_key == key)
            return [_benchmark_record(r) for r in s.scalars(query)]


@dataclass(frozen=True)
class TuningDatabaseRecord:
    scope: str
    target: dict
    tvm_version: str
    digest: str
    workloads: int
    records: int
    updated_at: datetime


@dataclass(frozen=True)
class BenchmarkRecord:
    id: int
    key: str
    host: str
    cpu_model: str
    threads: int
    rounds: int
    results: dict
    created_at: datetime


def _tuning_record(row: TuningDatabaseRow) -> TuningDatabaseRecord:
    return TuningDatabaseRecord(scope=row.scope, target=json.loads(row.target), tvm_version=row.tvm_version,
                                digest=row.digest, workloads=row.workloads, records=row.records,
                                updated_at=row.updated_at)


def _benchmark_record(row: Benchmark) -> BenchmarkRecord:
    return BenchmarkRecord(id=row.id, key=row.artifact_key, host=row.host, cpu_model=row.cpu_model,
                           threads=row.threads, rounds=row.rounds, results=json.loads(row.results_json),
                           created_at=row.created_at)
