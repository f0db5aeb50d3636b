"""Engine, pragmas, migrations and the one session scope."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import RegistryError

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration. Checked against the migration scripts by a test; knowing it here lets an
# up-to-date registry open without importing Alembic (a deployment's loader starts faster).
HEAD_REVISION = "0003"
BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA foreign_keys=ON")  # SQLite leaves them off unless asked
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # wait for a lock instead of failing at once
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RegistryError(f"not a database URL: {url!r} ({exc})") from None
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(parsed)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise RegistryError(f"cannot open registry {url!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


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

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic owns every schema change)."""
    from alembic import command

    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(engine, conn), revision)
    except SQLAlchemyError as exc:
        raise RegistryError(f"registry {engine.url!r}: migration failed: {exc}") from None


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
    with open(f"{database}.migrate.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_schema(engine: Engine) -> None:
    """Upgrade to the newest schema unless the database is already there."""
    try:
        if _at_head(engine):
            return
        with _migration_lock(engine):
            if not _at_head(engine):  # another process may have migrated while we waited
                upgrade(engine)
    except SQLAlchemyError as exc:
        raise RegistryError(f"registry {engine.url!r}: {exc}") from None


@contextlib.contextmanager
def session_scope(factory: sessionmaker) -> Iterator[Session]:
    """Commit on success, roll back on error; database errors become RegistryError."""
    session = factory()
    try:
        yield session
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        raise RegistryError(f"registry error: {exc.__class__.__name__}: {exc}") from None
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
