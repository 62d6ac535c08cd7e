"""Schema migrations of the job store (Alembic), configured in code: no alembic.ini.

`upgrade(engine)` brings a database to the newest revision under a lock, so API processes
and workers starting together migrate it once. A database made by `create_all` before
migrations existed (tables, no `alembic_version`) is recognised by comparing it with the
first revision's frozen tables (`baseline`) and stamped at that revision first.
"""

import fcntl
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text

from infra.db.migrations import baseline

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
BASELINE_REVISION = "0001"
VERSION_TABLE = "alembic_version"
# PostgreSQL advisory lock key of the migration (a bigint), apart from the tenant locks.
_PG_LOCK_ID = int.from_bytes(hashlib.sha256(b"secateurs-migrate").digest()[:8], "big", signed=True)


class SchemaMismatch(RuntimeError):
    """A database without migration history whose tables are not the first revision's."""


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic's configuration, pointing at this package; `env.py` uses `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to `revision`, stamping a pre-migration database first."""
    with migration_lock(engine) as connection:
        stamp_pre_migration(connection)
        command.upgrade(alembic_config(connection), revision)
        connection.commit()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def stamp_pre_migration(connection: Connection) -> bool:
    """Stamp a database that `create_all` made before migrations at the first revision;
    True when it was one. Raises SchemaMismatch when its tables differ from that revision."""
    tables = set(inspect(connection).get_table_names())
    snapshot = baseline.build()
    if VERSION_TABLE in tables or not tables & set(snapshot.tables):
        return False  # migrated already, or empty: the revisions create everything
    # Start-up used to add a missing table (create_all), so a database may lack the newest
    # of them; add those as start-up would have, then the rest must match exactly.
    snapshot.create_all(connection, checkfirst=True)
    differences = compare_metadata(MigrationContext.configure(connection), snapshot)
    if differences:
        raise SchemaMismatch(
            "the database has tables but no migration history, and they differ from "
            f"revision {BASELINE_REVISION}: {differences}; migrate it by hand, then "
            f"`secateurs db stamp {BASELINE_REVISION}`"
        )
    command.stamp(alembic_config(connection), BASELINE_REVISION)
    connection.commit()
    log.info("stamped a database made before migrations at revision %s", BASELINE_REVISION)
    return True


@contextmanager
def migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection held under the database-wide migration lock (across processes)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection, _pg_advisory_lock(connection):
            yield connection
    elif engine.dialect.name == "sqlite":
        # The lock before the connection: a new connection switches a fresh database to
        # WAL, which fails at once ("database is locked") while another one does the same.
        with _file_lock(engine.url.database), engine.connect() as connection:
            yield connection
    else:
        raise NotImplementedError(f"no migration lock for {engine.dialect.name}")


@contextmanager
def _pg_advisory_lock(connection: Connection) -> Iterator[None]:
    # Session-level, not transaction-level: it outlives the commits in between.
    connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _PG_LOCK_ID})
    connection.commit()
    try:
        yield
    finally:
        connection.rollback()  # a failed migration leaves its transaction aborted
        connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _PG_LOCK_ID})
        connection.commit()


@contextmanager
def _file_lock(database: str | None) -> Iterator[None]:
    # SQLite has no advisory locks; a lock file next to the database does it. An in-memory
    # database belongs to one process and needs none.
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    with open(f"{database}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
