"""A job's status is read on the event loop: on SQLite with a connection that never waits
for a lock (a locked database is read on a thread that waits), on PostgreSQL with the async
driver (the same bytes as the threaded read, connections cut by a restart replaced, and a
database that cannot be reached answered with 503 not_ready)."""

import sqlite3
from collections.abc import Iterator

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from app.api import status_reader
from app.api.routes.jobs import read_job_status
from app.api.status_reader import AsyncPostgresStatusReader, SqliteStatusReader
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
    reader = app.state.status_reader
    assert isinstance(reader, SqliteStatusReader)
    job_id = submit(client)
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH_A).json()["status"] == "queued"
    # The read-only connection refuses writes.
    with reader._nowait.connect() as conn, pytest.raises(OperationalError):
        conn.execute(text("DELETE FROM jobs"))


def test_a_locked_sqlite_database_is_read_on_a_thread_that_waits(app, client, monkeypatch):
    job_id = submit(client)
    reader = app.state.status_reader
    engines = []

    def locked_on_the_loop(engine, tenant, job_id):
        engines.append(engine)
        if engine is reader._nowait:
            raise OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))
        return read_job_status(engine, tenant, job_id)

    # In WAL mode a reader finds the database locked only in rare moments (recovery, a
    # connection in exclusive locking mode): stand in for one.
    monkeypatch.setattr(status_reader, "read_job_status", locked_on_the_loop)
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
    assert isinstance(pg_app.state.status_reader, AsyncPostgresStatusReader)
    engine = pg_app.state.engine
    for status in ("queued", "succeeded", "failed"):
        job_id = submit(pg_client)
        if status != "queued":
            finish(pg_app, job_id, status)
        resp = pg_client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
        assert resp.status_code == 200 and resp.json()["status"] == status
        assert resp.content == read_job_status(engine, "alice", job_id)
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
    reader = AsyncPostgresStatusReader(nowhere)
    pg_client.portal.call(reader.open)
    pg_app.state.status_reader = reader
    try:
        resp = pg_client.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
    finally:
        pg_client.portal.call(reader.close)
    body = assert_problem(resp, 503, "not_ready")
    assert resp.headers["retry-after"] == "1" and "cannot be reached" in body["detail"]
