"""Database engine and sessions for the job store (SQLite by default, PostgreSQL in production)."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    """Create the engine; SQLite gets WAL and a busy timeout so API and worker can share it."""
    if url.startswith("sqlite"):
        # As many kept connections as threads that may want one at once (Starlette's 40
        # plus the API's own pools, app.core.pools), so no request waits for a connection
        # and none is opened per request under load: an overflow connection is closed when
        # handed back, and opening one (with its PRAGMAs) costs more than the query.
        # SQLite connections are cheap to keep.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=64,
            max_overflow=16,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=20)


def init_db(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent, locked across processes)."""
    from infra.db.migrations import upgrade  # alembic only where a process opens the store

    upgrade(engine)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
