"""A job's status is read on the event loop: on SQLite with a connection that never waits
for a lock (a locked database is read on a thread that waits), on PostgreSQL with the async
driver (the same bytes as the threaded read, connections cut by a restart replaced, and a
database that cannot be reached answered with 503 not_ready)."""

import asyncio
import sqlite3
from collections.abc import Iterator

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from app.api import status_reader
from app.api.routes.jobs import read_job_statuses
from app.api.status_reader import AsyncPostgresStatusReader, CoalescedReads, SqliteStatusReader
from app.core.errors import NotFound, ServiceUnavailable
from infra.config import Settings
from infra.db import jobstate
from infra.db.models import Job
from tests.app.conftest import app_with_doubles
from tests.app.helpers import (
    AUTH_A,
    AUTH_B,
    assert_problem,
    upload_model,
)
from tests.app.test_job_names import REPORT


def test_sqlite_reads_on_the_event_loop_without_waiting(app, client, settings):
    reader = app.state.status_reader.reader
    assert isinstance(reader, SqliteStatusReader)
    job_id = submit(client)
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["status"] == "queued"
    # The read-only connection refuses writes.
    with reader._nowait.connect() as conn, pytest.raises(OperationalError):
        conn.execute(text("DELETE FROM jobs"))


def test_a_locked_sqlite_database_is_read_on_a_thread_that_waits(app, client, monkeypatch):
    job_id = submit(client)
    reader = app.state.status_reader.reader
    engines = []

    def locked_on_the_loop(engine, keys):
        engines.append(engine)
        if engine is reader._nowait:
            raise OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))
        return read_job_statuses(engine, keys)

    # In WAL mode a reader finds the database locked only in rare moments (recovery, a
    # connection in exclusive locking mode): stand in for one.
    monkeypatch.setattr(status_reader, "read_job_statuses", locked_on_the_loop)
    resp = client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert resp.status_code == 200 and resp.json()["id"] == job_id
    assert engines == [reader._nowait, app.state.engine]


@pytest.fixture
def pg_app(settings: Settings, postgres_url: str) -> Iterator[FastAPI]:
    yield from app_with_doubles(settings.model_copy(update={"database_url": postgres_url}))


@pytest.fixture
def pg_client(pg_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(pg_app) as client:
        yield client


def submit(client: TestClient) -> str:
    model_id = upload_model(client).json()["id"]
    resp = client.post("/v1/jobs", headers=AUTH_A, json={"model_id": model_id, "tags": ["x"]})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def finish(app: FastAPI, job_id: str, status: str) -> None:
    with app.state.sessionmaker() as session:
        job = session.get(Job, job_id)
        jobstate.set_progress(session, job, "pruning", 0.4)
        jobstate.set_status(session, job, "running")
        if status == "succeeded":
            job.report = REPORT
            jobstate.set_status(session, job, "succeeded")
        else:
            jobstate.set_status(session, job, "failed", error_code="oom", error_message="no room")
        session.commit()


def test_the_async_read_gives_the_threaded_reads_bytes(pg_app, pg_client):
    assert isinstance(pg_app.state.status_reader.reader, AsyncPostgresStatusReader)
    engine = pg_app.state.engine
    for status in ("queued", "succeeded", "failed"):
        job_id = submit(pg_client)
        if status != "queued":
            finish(pg_app, job_id, status)
        resp = pg_client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
        assert resp.status_code == 200 and resp.json()["status"] == status
        key = ("alice", job_id)
        assert resp.content == read_job_statuses(engine, [key])[key]
    assert_problem(pg_client.get(f"/v1/jobs/{job_id}", headers=AUTH_B), 404, "not_found")


def test_connections_cut_by_a_restart_are_replaced(pg_app, pg_client, postgres_url):
    job_id = submit(pg_client)
    assert pg_client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).status_code == 200
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        cut = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = '' AND datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    assert cut  # the pools' connections, the async reader's among them
    for _ in range(3):
        assert pg_client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).status_code == 200


def test_an_unreachable_database_is_503_not_ready(pg_app, pg_client, monkeypatch):
    job_id = submit(pg_client)
    monkeypatch.setattr(status_reader, "CONNECTION_WAIT_S", 0.5)
    nowhere = create_engine(pg_app.state.engine.url.set(host="127.0.0.1", port=1))
    reader = CoalescedReads(AsyncPostgresStatusReader(nowhere))
    pg_client.portal.call(reader.open)
    pg_app.state.status_reader = reader
    try:
        resp = pg_client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
    finally:
        pg_client.portal.call(reader.close)
    body = assert_problem(resp, 503, "not_ready")
    assert resp.headers["retry-after"] == "1" and "cannot be reached" in body["detail"]


# --- polls that arrive together share one read -------------------------------------------


class _Reads:
    """A stand-in reader: the keys of each read, answered when `release` is set."""

    def __init__(self, rows: dict, failure: Exception | None = None) -> None:
        self.rows, self.failure, self.calls = rows, failure, []
        self.release = asyncio.Event()
        self.release.set()

    async def read_many(self, keys):
        self.calls.append(sorted(keys))
        await self.release.wait()
        if self.failure is not None:
            raise self.failure
        return {k: self.rows[k] for k in keys if k in self.rows}


ROWS = {("alice", "job_1"): b"1", ("alice", "job_2"): b"2", ("bob", "job_3"): b"3"}


def test_polls_of_one_turn_share_one_read_and_each_gets_its_own_answer():
    async def go():
        inner = _Reads(ROWS)
        reads = CoalescedReads(inner)
        keys = [("alice", "job_1"), ("alice", "job_1"), ("alice", "job_2"), ("bob", "job_3")]
        answers = await asyncio.gather(*(reads.read(*k) for k in keys))
        missing = await asyncio.gather(
            reads.read("alice", "job_3"), reads.read("bob", "job_3"), return_exceptions=True
        )
        return inner.calls, answers, missing

    calls, answers, missing = asyncio.run(go())
    assert answers == [b"1", b"1", b"2", b"3"]
    assert calls[0] == [("alice", "job_1"), ("alice", "job_2"), ("bob", "job_3")]
    # Another tenant's job is not found, even when read beside its owner's poll.
    assert isinstance(missing[0], NotFound) and missing[1] == b"3"
    assert len(calls) == 2


def test_a_poll_after_a_read_began_waits_for_a_new_read():
    async def go():
        inner = _Reads(ROWS)
        inner.release.clear()
        reads = CoalescedReads(inner)
        first = asyncio.ensure_future(reads.read("alice", "job_1"))
        while not inner.calls:  # the first read has begun, and waits
            await asyncio.sleep(0)
        second = asyncio.ensure_future(reads.read("alice", "job_1"))
        await asyncio.sleep(0)
        inner.release.set()
        return await asyncio.gather(first, second), inner.calls

    answers, calls = asyncio.run(go())
    assert answers == [b"1", b"1"] and len(calls) == 2


def test_a_failed_read_fails_each_poll_and_a_poll_that_leaves_harms_none():
    async def go():
        inner = _Reads(ROWS, failure=ServiceUnavailable("the job store cannot be reached"))
        inner.release.clear()
        reads = CoalescedReads(inner)
        leaving = asyncio.ensure_future(reads.read("alice", "job_1"))
        staying = asyncio.ensure_future(reads.read("alice", "job_1"))
        while not inner.calls:
            await asyncio.sleep(0)
        leaving.cancel()
        inner.release.set()
        failed = await asyncio.gather(staying, return_exceptions=True)
        inner.failure = None
        return failed, await reads.read("alice", "job_2")

    failed, later = asyncio.run(go())
    assert isinstance(failed[0], ServiceUnavailable) and later == b"2"


def test_a_burst_of_many_jobs_is_read_in_bounded_statements(monkeypatch):
    monkeypatch.setattr(status_reader, "MAX_JOBS_PER_READ", 3)
    rows = {("alice", f"job_{i}"): str(i).encode() for i in range(8)}

    async def go():
        inner = _Reads(rows)
        reads = CoalescedReads(inner)
        answers = await asyncio.gather(*(reads.read(*k) for k in rows))
        return answers, inner.calls

    answers, calls = asyncio.run(go())
    assert answers == list(rows.values())
    assert all(len(c) <= 3 for c in calls)
