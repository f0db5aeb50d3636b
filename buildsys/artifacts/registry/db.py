"""Engine, pragmas, migrations and the one session scope."""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SAWarning, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from buildsys.format.files import file_lock
from buildsys.artifacts.registry.lookup import HEAD_REVISION, connect_read_only, newer_registry
from buildsys.errors import RegistryError

MIGRATIONS = Path(__file__).with_name("migrations")
# HEAD_REVISION, the newest migration, lives in lookup.py (which the loader reads without SQLAlchemy);
# a test checks it against the migration scripts; knowing it lets an up-to-date registry open
# without importing Alembic (a deployment's loader starts faster).
# SQLite waits this long for a lock inside one statement; past it, writes are retried with backoff
# (``retrying``), so a long-held lock is waited for with a message instead of failing a build.
BUSY_TIMEOUT_MS = 5_000


REACH = "; check the URL (--registry, BUILDSYS_REGISTRY) and that the database can be reached"


def said(exc: BaseException) -> str:
    """A SQLAlchemy error's own words, without its "(Background on this error at: https://sqlalche.me/...)"
    line: a link into SQLAlchemy's documentation is no next step for someone running buildsys.
    A URL's password in them (SQLAlchemy quotes a URL it cannot parse) is hidden."""
    return redact(re.sub(r"\s*\(Background on this \w+ at: [^)]*\)", "", str(exc)).strip())


_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^/:@\s'\"]*:)[^@\s'\"]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it (``scheme://user:PASSWORD@host``) shown as
    ``***``, as SQLAlchemy shows a URL: an error message ends up in CI logs and bug reports."""
    return _PASSWORD.sub(lambda m: m["head"] + "***@", text)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA foreign_keys=ON")  # SQLite leaves them off unless asked
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # wait for a lock instead of failing at once
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    dbapi_connection.isolation_level = None  # no implicit BEGIN/COMMIT: ``_sqlite_begin`` begins


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # a port that is no number: ValueError
        raise RegistryError(f"not a database URL: {redact(repr(url))} ({said(exc)}); pass --registry (BUILDSYS_REGISTRY) as "
                            "dialect://user@host/database, or sqlite:///PATH") from None
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(f"cannot create the folder {str(folder)!r} for registry {redact(repr(url))}: "
                                f"{exc.strerror or exc}; pass a writable --registry (or BUILDSYS_REGISTRY)") from None
    try:
        with warnings.catch_warnings():  # an option the driver ignores is a mistake, not a warning
            warnings.simplefilter("error", SAWarning)
            engine = create_engine(parsed)
    except SAWarning as exc:
        raise RegistryError(f"registry {redact(repr(url))}: {said(exc)}; remove the option from --registry "
                            "(BUILDSYS_REGISTRY)") from None
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise RegistryError(f"cannot open registry {redact(repr(url))}: {said(exc)}; pass a URL of an installed database driver "
                            "as --registry (BUILDSYS_REGISTRY), or leave it out for SQLite in the store") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_begin(conn) -> None:
    # Python's sqlite3 module commits before DDL on its own, so a first migration that failed half way
    # (a full disk: "database or disk is full") left some tables and no alembic_version, and every
    # later command failed with "table artifacts already exists". Transactions are begun here
    # instead (SQLAlchemy's recipe for pysqlite), so a migration is all or nothing.
    conn.exec_driver_sql("BEGIN")


def alembic_config(engine: Engine, connection=None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision(engine: Engine) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise RegistryError(f"registry {engine.url!r}: {said(exc)}{REACH}") from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic owns every schema change)."""
    from alembic import command
    from alembic.util import CommandError

    _refuse_empty_file(engine)  # before connecting: connecting writes SQLite's first page
    try:
        _refuse_unknown_revision(engine)
        with engine.begin() as conn:
            command.upgrade(alembic_config(engine, conn), revision)
    except (SQLAlchemyError, CommandError) as exc:
        raise RegistryError(f"registry {engine.url!r}: migration failed: {said(exc)}") from None


def _stored_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _refuse_empty_file(engine: Engine) -> None:
    if _sqlite_file_size(engine) == 0:
        raise RegistryError(f"registry file {engine.url.database!r} is empty (0 bytes); restore it from a backup, "
                            "or remove it to start a new registry")


def _refuse_unknown_revision(engine: Engine) -> None:
    """A registry migrated by a newer buildsys carries a revision our scripts do not have; Alembic
    would fail with "Can't locate revision", and guessing at its schema could damage it."""
    from alembic.script import ScriptDirectory

    stored = _stored_revision(engine)
    if stored is None:
        return
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config(engine)).walk_revisions()}
    if stored not in known:
        raise newer_registry(repr(engine.url), stored)


def _sqlite_file_size(engine: Engine) -> int | None:
    """Bytes in the registry's SQLite file, -1 when there is none yet; None for other databases."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        return None
    try:
        return Path(database).stat().st_size
    except FileNotFoundError:
        return -1
    except OSError as exc:
        raise RegistryError(f"cannot read registry file {database!r}: {exc.strerror or exc}") from None


def _at_head(engine: Engine) -> bool:
    with engine.connect() as conn:
        return (inspect(conn).has_table("alembic_version")
                and conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION)


MIGRATION_LOCK_ID = 0x6275696C64737973  # "buildsys": PostgreSQL advisory lock for migrations


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Builders starting together on a new database must not both create the tables:
    a lock file beside a SQLite database, an advisory lock on PostgreSQL."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(f"{database}.migrate.lock"))
        except OSError as exc:
            raise RegistryError(f"registry {database!r} needs migrating, but its lock file cannot be created: "
                                f"{exc.strerror or exc}; run `buildsys db upgrade` where the folder is writable") from None
        yield


def ensure_schema(engine: Engine) -> None:
    """Upgrade to the newest schema unless the database is already there.

    Refuses a registry of a newer buildsys, and a SQLite file of 0 bytes that this process did not
    create: a registry that lost its contents must not restart empty without anyone noticing.
    """
    try:
        size = _sqlite_file_size(engine)
        if size not in (-1, 0) and _at_head(engine):
            return
        # A new SQLite file is created under the lock (connecting creates it), so a file that is still
        # empty once we hold the lock was not being created by another builder
        with _migration_lock(engine):
            _refuse_empty_file(engine)
            if not _at_head(engine):  # another process may have migrated while we waited
                upgrade(engine)
    except SQLAlchemyError as exc:
        raise RegistryError(f"registry {engine.url!r}: {said(exc)}{REACH}") from None


# ---------------------------------------------------------------- a full disk, a read-only store
#
# Measured with SQLite 3.40.1 on a 1 MiB tmpfs (tests/unit/test_disk_full.py replays it): a WAL
# database whose -shm file does not exist cannot be opened at all on a full disk
# (SQLITE_IOERR_SHMSIZE, "disk I/O error") nor on a read-only file system (SQLITE_CANTOPEN), not
# even with ``?mode=ro``; ``?immutable=1`` opens it, but reads the main file only, so it would miss
# commits still in a -wal file. While a writer has the -wal and -shm files open, ``?mode=ro``
# reads everything, the -wal included, on a full disk too. Hence: ``mode=ro`` first, else
# ``immutable=1`` when the -wal file is absent or empty, else a refusal that says why.

def sqlite_storage_problem(engine: Engine) -> str | None:
    """Why a SQLite registry's folder cannot take writes now (full, read-only), else None."""
    from buildsys.artifacts.space import storage_problem

    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        return None
    return storage_problem(database)


def writable_problem(engine: Engine) -> str | None:
    """Connect once (SQLite's pragmas create the -wal and -shm files): None when that works, the
    reason when the registry's file system cannot take writes, a RegistryError otherwise. A new
    or empty SQLite file is left to ``ensure_schema``, which creates or refuses it under its lock."""
    if _sqlite_file_size(engine) in (None, -1, 0):
        return None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except SQLAlchemyError as exc:
        engine.dispose()
        why = sqlite_storage_problem(engine)
        if why is None:
            raise RegistryError(f"registry {engine.url!r}: {said(exc)}{REACH}") from None
        return why


def discard_empty(database: str) -> None:
    """Remove the empty files a registry creation that failed (a full disk) left: an empty
    registry file would be refused ("restore it from a backup") once there is room again."""
    for leftover in (database, f"{database}-wal", f"{database}-shm"):
        with contextlib.suppress(OSError):
            if Path(leftover).stat().st_size == 0:
                Path(leftover).unlink()


def read_only_engine(database: str, why: str) -> Engine:
    """An engine that only reads the SQLite file ``database`` (see the measurements above)."""
    from buildsys.artifacts.space import remedy

    path = Path(database)
    if not path.is_file() or path.stat().st_size == 0:
        raise RegistryError(f"{why}: {path.parent}: there is no registry at {path} and none can be created "
                            f"there; {remedy(why)}, or pass another --registry")
    try:
        connect_read_only(path, BUSY_TIMEOUT_MS / 1000).close()  # which way works: said in its error otherwise
    except RegistryError as exc:
        raise RegistryError(f"{why}: {exc}; {remedy(why)} and run again") from None
    engine = create_engine("sqlite://", creator=lambda: connect_read_only(path, BUSY_TIMEOUT_MS / 1000))
    event.listen(engine, "connect", _read_only_pragmas)
    return engine


def _read_only_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def storage_refusal(path: str, why: str) -> RegistryError:
    """A write the registry could not make because its disk is full or read-only, or its folder
    may not be written."""
    from buildsys.artifacts.space import free_bytes, remedy, unwritable_place

    free = free_bytes(path)
    sizes = f" ({free} bytes free)" if free is not None and why.startswith("no space") else ""
    return RegistryError(f"{why}: {unwritable_place(path, why)}{sizes}; the registry was not changed; {remedy(why)}, "
                         "or pass another --registry, and run the command again")


def _is_busy(exc: BaseException) -> bool:
    """Another process holds the database's write lock (SQLite), or a lock wait timed out."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(m in text for m in ("database is locked", "database is busy", "lock timeout", "could not obtain lock",
                                   "deadlock detected"))


def retrying(operation, what: str, wait_s: float | None = None):
    """Run ``operation()``; while the registry is busy (another writer holds its lock), try again
    with backoff, saying so on stderr, for at most ``wait_s`` seconds (``BUILDSYS_REGISTRY_WAIT``,
    default 600) before the RegistryError goes to the caller."""
    import logging
    import os
    import time

    if wait_s is None:
        try:
            wait_s = float(os.environ.get("BUILDSYS_REGISTRY_WAIT", "600"))
        except ValueError:
            wait_s = 600.0
    start, delay, told = time.monotonic(), 0.5, False
    while True:
        try:
            return operation()
        except RegistryError as exc:
            waited = time.monotonic() - start
            if not getattr(exc, "busy", False) or waited >= wait_s:
                if getattr(exc, "busy", False):
                    raise RegistryError(f"the registry stayed busy (locked by another process) for {waited:.0f} s "
                                        f"while trying to {what}; try again later, or raise BUILDSYS_REGISTRY_WAIT "
                                        f"(now {wait_s:g} s)") from None
                raise
            if not told:
                logging.getLogger("buildsys.artifacts.registry").warning(
                    "the registry is busy (another process holds its write lock); waiting to %s "
                    "(up to %g s, BUILDSYS_REGISTRY_WAIT)", what, wait_s)
                told = True
            time.sleep(min(delay, max(0.0, wait_s - waited)))
            delay = min(delay * 2, 10.0)


@contextlib.contextmanager
def session_scope(factory: sessionmaker) -> Iterator[Session]:
    """Commit on success, roll back on error; database errors become RegistryError."""
    session = factory()
    try:
        yield session
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        error = RegistryError(f"registry error: {exc.__class__.__name__}: {said(exc)}")
        error.busy = _is_busy(exc)
        error.sqlite_error = getattr(getattr(exc, "orig", None), "sqlite_errorname", None)
        raise error from None
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def upgrade_url(url: str, revision: str = "head") -> tuple[str, str | None, str | None]:
    """``buildsys db upgrade``: (the URL without its password, revision before, revision after)."""
    engine = make_engine(url)
    before = current_revision(engine)
    upgrade(engine, revision)
    return engine.url.render_as_string(hide_password=True), before, current_revision(engine)


def current_revision_of(url: str) -> tuple[str, str | None]:
    """``buildsys db current``: (the URL without its password, its schema revision or None)."""
    engine = make_engine(url)
    return engine.url.render_as_string(hide_password=True), current_revision(engine)
