"""Where a job's status read (`GET /v1/jobs/{id}`, the poll) gets its row: on PostgreSQL,
psycopg's async driver on the event loop; on SQLite, the event loop itself.

Measured at 100 polling connections with the read on a thread pool, each answer waited
for a thread to be handed the read, and then for the GIL, behind the event loop, to hand
the result back. On PostgreSQL: p99 85-280 ms, slowest 0.4-1.1 s; awaited on the event
loop with an async driver, p99 35-60 ms, slowest 0.1-0.17 s, at a higher rate. On SQLite
(two processes, 7,000 polls a second): p99 50-105 ms; read on the event loop, which it
holds for about 100 µs, p99 28-38 ms at 7,500-8,100 a second. That read must not sleep
in SQLite's busy handler, though: its connection never waits for a lock, and a read that
finds the database locked (rare in WAL mode, where readers do not wait for the writer)
is handed to the `db` pool, whose connections wait.

Either way a database that cannot be reached answers `503 not_ready`, not a 500.
"""

import asyncio
import logging
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.api.routes.jobs import READ_JOB, read_job_status, status_json
from app.core.errors import NotFound, ServiceUnavailable
from app.core.pools import run_in
from infra.db.session import make_nowait_reader

log = logging.getLogger(__name__)

# Connections the async pool keeps per API process. Each poll holds one for a fraction of
# a millisecond; measured on two cores, 8 served the most polls (4 queued the polls behind
# them, 16 added database processes that took the cores from the API).
ASYNC_POOL_SIZE = 8
# Seconds a read waits for a free connection (or for the database to take a new one).
CONNECTION_WAIT_S = 5.0


def _unreachable(exc: Exception) -> ServiceUnavailable:
    log.warning("status read failed: %s", exc)
    return ServiceUnavailable(
        "the job store cannot be reached; retry shortly", headers={"Retry-After": "1"}
    )


class StatusReader(Protocol):
    async def open(self) -> None: ...

    async def read(self, tenant: str, job_id: str) -> bytes: ...

    async def close(self) -> None: ...


class ThreadedStatusReader:
    """Runs `read_job_status` on the `db` thread pool."""

    def __init__(self, state: Any) -> None:
        self.state = state

    async def open(self) -> None:
        return None

    async def read(self, tenant: str, job_id: str) -> bytes:
        state = self.state
        try:
            return await run_in(state.pools.db, read_job_status, state.engine, tenant, job_id)
        except OperationalError as exc:
            raise _unreachable(exc) from exc

    async def close(self) -> None:
        return None


class SqliteStatusReader(ThreadedStatusReader):
    """Reads on the event loop with a read-only connection that never waits for a lock;
    on the `db` pool when the database is locked."""

    def __init__(self, state: Any) -> None:
        super().__init__(state)
        self._nowait = make_nowait_reader(state.engine.url.render_as_string(False))

    async def read(self, tenant: str, job_id: str) -> bytes:
        # Let the loop serve its other ready sockets first. Measured, not explained: read
        # without yielding, one API process under 100 polling connections answered with a
        # p99 of 120-690 ms (median of twelve runs 270 ms; its own histogram put every
        # answer under 5 ms); yielding once, 33-180 ms (median 50 over six runs), and two
        # processes 23-31 ms instead of 28-62.
        await asyncio.sleep(0)
        try:
            return read_job_status(self._nowait, tenant, job_id)
        except OperationalError:
            pass  # locked: a pooled connection waits for it, on a thread
        return await super().read(tenant, job_id)

    async def close(self) -> None:
        self._nowait.dispose()


class AsyncPostgresStatusReader:
    """Reads the status row with psycopg's `AsyncConnectionPool`, in autocommit (one
    SELECT needs no transaction), with the statement SQLAlchemy compiles for it.

    Connections are not pinged before each use (a round trip per poll); a read that fails
    for its connection has the pool check all its idle ones, then tries once more."""

    def __init__(self, engine: Engine, size: int = ASYNC_POOL_SIZE) -> None:
        from psycopg.rows import namedtuple_row
        from psycopg_pool import AsyncConnectionPool

        # The engine's own dialect (psycopg's): its placeholders are psycopg's too.
        self._sql = str(READ_JOB.compile(dialect=engine.dialect))
        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=size,
            max_size=size,
            timeout=CONNECTION_WAIT_S,
            open=False,
            kwargs={"autocommit": True, "row_factory": namedtuple_row},
            name="status-reads",
        )

    async def open(self) -> None:
        await self._pool.open()

    async def read(self, tenant: str, job_id: str) -> bytes:
        import psycopg

        params = {"job_id": job_id, "tenant": tenant}
        try:
            try:
                row = await self._fetch(params)
            except psycopg.OperationalError:
                await self._pool.check()  # drop the connections a restart cut
                row = await self._fetch(params)
        except psycopg.OperationalError as exc:  # PoolTimeout included
            raise _unreachable(exc) from exc
        if row is None:
            raise NotFound(f"job {job_id!r} not found")
        return status_json(row)

    async def _fetch(self, params: dict[str, str]) -> Any:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(self._sql, params)
            return await cursor.fetchone()

    async def close(self) -> None:
        await self._pool.close()


def make_status_reader(state: Any) -> StatusReader:
    """The reader for the job store's database (`state.engine`); opened by the app's
    lifespan, on its event loop."""
    engine: Engine = state.engine
    if engine.dialect.name == "postgresql":
        return AsyncPostgresStatusReader(engine)
    if engine.dialect.name == "sqlite":
        return SqliteStatusReader(state)
    return ThreadedStatusReader(state)
