"""Read-only resolution straight from a SQLite registry file, for the thin loader.

Importing SQLAlchemy's ORM costs a deployment ~0.55 s of start-up, more than
everything else the loader does. Resolving a reference needs two indexed
reads, so this module answers them with the standard library's sqlite3, with
the same rules as ``Registry.resolve`` (alias, else a unique key prefix of at
least 4 hex digits); a test keeps the two in agreement.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from buildsys.errors import RegistryError, UsageError, did_you_mean

MIN_PREFIX = 4
# The newest schema revision (the registry's Alembic migrations; ``db`` takes it from here, and a
# test checks it against the migration scripts). These reads need what revision 0001 made; a
# registry at a revision not listed here was written by a newer buildsys and is refused.
HEAD_REVISION = "0003"
KNOWN_REVISIONS = ("0001", "0002", HEAD_REVISION)


def newer_registry(where: str, revision: str) -> RegistryError:
    return RegistryError(f"registry {where}: this registry was written by a newer buildsys (revision {revision}); "
                         f"upgrade buildsys (this one reads up to revision {HEAD_REVISION}), or point --registry "
                         "(BUILDSYS_REGISTRY) at another registry")


def connect_read_only(db: Path, timeout_s: float = 30.0) -> sqlite3.Connection:
    """A read-only connection to a SQLite registry in WAL mode, also on a full disk or a read-only
    file system: ``mode=ro`` first, else ``immutable=1`` when the -wal file is empty or absent
    (measured, see ``db.py``: without its -shm file a WAL database opens in no other way there,
    and immutable would miss commits still in a -wal file, so then the error is raised)."""
    wal = Path(f"{db}-wal")
    try:
        wal_size = wal.stat().st_size
    except OSError:
        wal_size = 0
    error = None
    for uri in [f"file:{db}?mode=ro"] + ([] if wal_size else [f"file:{db}?immutable=1"]):
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as exc:
            error = exc
    raise RegistryError(f"cannot open registry {db} read-only: {error}" + (
        f"; {wal} holds {wal_size} bytes of changes that cannot be read without creating {db}-shm (a full "
        "disk or a read-only file system?)" if wal_size else ""))


@dataclass(frozen=True)
class ResolvedArtifact:
    key: str
    manifest_digest: str
    digests: Mapping[str, str]  # file name -> digest


def sqlite_path(url: str) -> Path | None:
    """The file behind a plain ``sqlite:///path`` URL, or None for anything else."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return None
    path = url[len(prefix):]
    return Path(path) if path and path != ":memory:" else None


def is_key_prefix(ref: str) -> bool:
    return len(ref) >= MIN_PREFIX and all(c in "0123456789abcdef" for c in ref.lower())


def refuse_reference(ref: str, alias_names: list[str]):
    """``ref`` is neither an alias nor a key prefix: say so, with the closest alias."""
    hint = did_you_mean(ref, alias_names)
    raise UsageError(f"no alias {ref!r} and it is not a key prefix (4+ hex digits)" + (f"; {hint}" if hint else ""))


def pick_prefix_match(ref: str, matches: list[str]) -> str:
    """The one key among ``matches`` (the first 11 keys with that prefix, sorted), or why not."""
    if not matches:
        raise UsageError(f"no artifact key starts with {ref!r}; `buildsys ls` lists them")
    if len(matches) > 1:
        shown = ", ".join(m[:12] for m in matches[:10])
        raise UsageError(f"key prefix {ref!r} is ambiguous: {shown}{' ...' if len(matches) > 10 else ''}"
                         "; give more digits")
    return matches[0]


def resolve(db: Path, ref: str) -> ResolvedArtifact:
    ref = ref.strip()
    if not db.is_file():
        raise RegistryError(f"no registry at {db}; build something first, or set BUILDSYS_REGISTRY")
    if db.stat().st_size == 0:  # SQLite would read it as a new, empty database: "no such table"
        raise RegistryError(f"registry file {str(db)!r} is empty (0 bytes); restore it from a backup, or remove "
                            "it to start a new registry")
    conn = connect_read_only(db)
    try:
        try:
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error:
            revision = None
        if revision is None:
            raise RegistryError(f"registry {db} has no schema revision (not a buildsys registry, or never migrated); "
                                "run `buildsys db upgrade` or point BUILDSYS_REGISTRY at a registry")
        if revision[0] not in KNOWN_REVISIONS:
            raise newer_registry(str(db), revision[0])
        row = conn.execute("SELECT artifact_key FROM aliases WHERE name = ?", (ref,)).fetchone()
        if row is not None:
            key = row[0]
        else:
            if not is_key_prefix(ref):
                refuse_reference(ref, [r[0] for r in conn.execute("SELECT name FROM aliases")])
            prefix = ref.lower()
            key = pick_prefix_match(ref, [r[0] for r in conn.execute(
                "SELECT key FROM artifacts WHERE key >= ? AND key < ? ORDER BY key LIMIT 11",
                (prefix, prefix + "g"))])
        manifest = conn.execute("SELECT manifest_digest FROM artifacts WHERE key = ?", (key,)).fetchone()
        files = dict(conn.execute("SELECT name, digest FROM artifact_files WHERE artifact_key = ?", (key,)))
    except sqlite3.Error as exc:
        raise RegistryError(f"registry {db}: {exc}") from None
    finally:
        conn.close()
    if manifest is None:
        raise RegistryError(f"registry {db}: alias {ref!r} points at missing artifact {key[:12]}")
    return ResolvedArtifact(key=key, manifest_digest=manifest[0], digests=files)
