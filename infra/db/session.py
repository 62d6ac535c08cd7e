"""Database engine and sessions for the job store (SQLite by default, PostgreSQL in production)."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool


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
    engine = create_engine(url, pool_size=20, max_overflow=20)
    ping_when_idle(engine)
    return engine


def make_nowait_reader(url: str) -> Engine:
    """A read-only SQLite engine of one connection that never waits for a lock: a read that
    finds the database locked fails at once ("database is locked") instead of sleeping in
    SQLite's busy handler. For reads made on an event loop, which must not sleep."""
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 0}, poolclass=StaticPool
    )

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA query_only=1")
        cur.close()

    return engine


# A pooled connection unused for this long is pinged before it is handed out.
PING_IDLE_S = 1.0


def ping_when_idle(engine: Engine, idle_s: float = PING_IDLE_S) -> None:
    """Ping a connection at checkout only when it has been idle in the pool for `idle_s`.

    SQLAlchemy's `pool_pre_ping` pings at every checkout: on PostgreSQL a round trip that
    made a status poll's one-row read take 400 µs instead of 260. A connection handed back
    moments ago is as alive as a ping would show; the ones that may have been cut (a
    database restart, a proxy's idle timeout) have waited in the pool. A connection that
    fails its ping is discarded and the pool hands out another (`DisconnectionError`). One
    cut while busy fails its query, which invalidates the pool's older connections."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at < idle_s:
            return  # new (just connected), or back in the pool a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


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
