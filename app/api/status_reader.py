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

In front of either, `CoalescedReads` lets the polls that arrive together share one read.
At 100 connections on two cores, two API processes, polling one job: PostgreSQL from
2,900-3,000 polls a second (p99 80-101 ms) to 9,700-11,600 (p99 23-32 ms); SQLite from
4,900-5,000 (p99 51-64 ms) to 11,100-12,600 (p99 18-22 ms). Polling 100 jobs round robin,
which shares no row, one statement a turn still took PostgreSQL from 2,750 a second (p99
84 ms) to 7,800-8,900 (p99 23-27 ms). `bench/service.py`, docs/service.md.
"""

import asyncio
import functools
import logging
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.api.routes.jobs import READ_JOBS_ANY, JobKey, read_job_statuses, statuses_json
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
# Jobs read together at most: a burst of polls of many jobs makes several reads, each a
# statement of bounded size.
MAX_JOBS_PER_READ = 200


def _unreachable(exc: Exception) -> ServiceUnavailable:
    log.warning("status read failed: %s", exc)
    return ServiceUnavailable(
        "the job store cannot be reached; retry shortly", headers={"Retry-After": "1"}
    )


class StatusReader(Protocol):
    async def open(self) -> None: ...

    async def read_many(self, keys: list[JobKey]) -> dict[JobKey, bytes]:
        """Each job's status JSON by (tenant, id); the jobs not found are left out."""
        ...

    async def close(self) -> None: ...


class ThreadedStatusReader:
    """Runs `read_job_statuses` on the `db` thread pool."""

    def __init__(self, state: Any) -> None:
        self.state = state

    async def open(self) -> None:
        return None

    async def read_many(self, keys: list[JobKey]) -> dict[JobKey, bytes]:
        state = self.state
        try:
            return await run_in(state.pools.db, read_job_statuses, state.engine, keys)
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

    async def read_many(self, keys: list[JobKey]) -> dict[JobKey, bytes]:
        # Let the loop serve its other ready sockets first. Measured, not explained: read
        # without yielding, one API process under 100 polling connections answered with a
        # p99 of 120-690 ms (median of twelve runs 270 ms; its own histogram put every
        # answer under 5 ms); yielding once, 33-180 ms (median 50 over six runs), and two
        # processes 23-31 ms instead of 28-62.
        await asyncio.sleep(0)
        try:
            return read_job_statuses(self._nowait, keys)
        except OperationalError:
            pass  # locked: a pooled connection waits for it, on a thread
        return await super().read_many(keys)

    async def close(self) -> None:
        self._nowait.dispose()


class AsyncPostgresStatusReader:
    """Reads the status rows with psycopg's `AsyncConnectionPool`, in autocommit (one
    SELECT needs no transaction), with the statement SQLAlchemy compiles for it.

    Connections are not pinged before each use (a round trip per poll); a read that fails
    for its connection has the pool check all its idle ones, then tries once more."""

    def __init__(self, engine: Engine, size: int = ASYNC_POOL_SIZE) -> None:
        from psycopg.rows import namedtuple_row
        from psycopg_pool import AsyncConnectionPool

        # The engine's own dialect (psycopg's): its placeholders are psycopg's too.
        self._sql = str(READ_JOBS_ANY.compile(dialect=engine.dialect))
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

    async def read_many(self, keys: list[JobKey]) -> dict[JobKey, bytes]:
        import psycopg

        params = {"job_ids": sorted({job for _, job in keys})}
        try:
            try:
                rows = await self._fetch(params)
            except psycopg.OperationalError:
                await self._pool.check()  # drop the connections a restart cut
                rows = await self._fetch(params)
        except psycopg.OperationalError as exc:  # PoolTimeout included
            raise _unreachable(exc) from exc
        return statuses_json(rows, keys)

    async def _fetch(self, params: dict[str, Any]) -> list[Any]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(self._sql, params)
            return await cursor.fetchall()

    async def close(self) -> None:
        await self._pool.close()


class CoalescedReads:
    """The polls that arrive together share one read.

    A poll joins the read that is waiting to start, or makes one that starts on the
    loop's next turn; once a read has started, later polls wait for the next. So every
    answer comes from a read that began after its request arrived: a client that polls
    after its own write (a cancel) sees that write. Many clients watching one job (a
    dashboard in ten tabs, a service's pollers) cost the database one row per turn of the
    loop instead of one read each, with the JSON made once; polls of different jobs cost
    one statement per turn instead of a round trip each."""

    def __init__(self, reader: StatusReader) -> None:
        self.reader = reader
        self._waiting: dict[JobKey, asyncio.Future[bytes]] = {}

    async def open(self) -> None:
        await self.reader.open()

    async def close(self) -> None:
        await self.reader.close()

    async def read(self, tenant: str, job_id: str) -> bytes:
        """The job's status JSON; `NotFound` if the tenant has no such job."""
        loop = asyncio.get_running_loop()
        key = (tenant, job_id)
        answer = self._waiting.get(key)
        if answer is None:
            if not self._waiting:
                loop.call_soon(self._start)
            answer = self._waiting[key] = loop.create_future()
        # shield: a poll whose client hangs up must not cancel the others' answer.
        return await asyncio.shield(answer)

    def _start(self) -> None:
        batch, self._waiting = self._waiting, {}  # from here on, polls wait for a new read
        keys = list(batch)
        for first in range(0, len(keys), MAX_JOBS_PER_READ):
            part = {key: batch[key] for key in keys[first : first + MAX_JOBS_PER_READ]}
            read = asyncio.ensure_future(self.reader.read_many(list(part)))
            read.add_done_callback(functools.partial(_answer, part))


def _answer(waiting: dict[JobKey, asyncio.Future[bytes]], done: asyncio.Future[Any]) -> None:
    """Settle each poll of a finished read: its row, NotFound, or the read's failure."""
    failure = None if done.cancelled() else done.exception()
    found: dict[JobKey, bytes] = {} if done.cancelled() or failure else done.result()
    for key, answer in waiting.items():
        if answer.done():
            continue
        if done.cancelled():
            answer.cancel()
            continue
        if failure is None and key in found:
            answer.set_result(found[key])
            continue
        answer.set_exception(failure or NotFound(f"job {key[1]!r} not found"))
        answer.exception()  # retrieved: no "never retrieved" log when every poll of it left


def make_status_reader(state: Any) -> CoalescedReads:
    """The reader for the job store's database (`state.engine`); opened by the app's
    lifespan, on its event loop."""
    engine: Engine = state.engine
    reader: StatusReader
    if engine.dialect.name == "postgresql":
        reader = AsyncPostgresStatusReader(engine)
    elif engine.dialect.name == "sqlite":
        reader = SqliteStatusReader(state)
    else:
        reader = ThreadedStatusReader(state)
    return CoalescedReads(reader)
