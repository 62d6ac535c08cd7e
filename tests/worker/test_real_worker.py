"""A real Celery worker process on the embedded broker: pick-up, duplicates, the sweeper.

The jobs point at a model file missing from the store, so they end `failed: input_missing`
before the engine is imported: these tests exercise the worker, not the engine.
"""

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import select

from contract import JobSpec
from infra.config import Settings
from infra.db.models import Job, JobEvent, Model
from infra.db.session import init_db, make_engine, make_sessionmaker, session_scope
from infra.queue_names import QUEUE, TASK_NAME
from tests.conftest import ROOT, service_env
from worker.celery_app import celery_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Celery]]:
    data_dir = tmp_path_factory.mktemp("worker") / "data"
    data_dir.mkdir()
    settings = Settings(data_dir=data_dir, database_url="", broker_url="", s3_bucket="")
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    with session_scope(make_sessionmaker(engine)) as s:
        s.add(
            Model(
                id="mdl_gone",
                tenant="a",
                name="m",
                format="onnx",
                sha256="0",
                size_bytes=1,
                storage_key="models/mdl_gone",
                input_shape=[1, 3, 8, 8],
                inputs=[],
                outputs=[],
                stats={},
            )
        )
    log = (data_dir / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cli.main import main; main()", "worker"],
        cwd=ROOT,
        env=service_env(data_dir),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while " ready." not in (data_dir / "worker.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "worker did not start"
        time.sleep(0.2)
    app = Celery("test-client")
    app.conf.update(celery_config(settings))
    yield settings, app
    proc.terminate()
    proc.wait(timeout=20)


def _add_job(settings: Settings, job_id: str) -> None:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with session_scope(sessions) as s:
        s.add(
            Job(id=job_id, tenant="a", model_id="mdl_gone", spec=JobSpec().model_dump(mode="json"))
        )


def _wait_terminal(settings: Settings, job_id: str, timeout_s: float) -> tuple[Job, list[str]]:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(sessions) as s:
            job = s.get(Job, job_id)
            if job.status in ("succeeded", "failed", "cancelled"):
                events = s.scalars(
                    select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "status")
                )
                return job, [e.data["status"] for e in events]
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(0.1)


def test_published_job_runs_once_even_when_published_twice(stack) -> None:
    settings, app = stack
    _add_job(settings, "job_twice")
    started = time.monotonic()
    for _ in range(2):
        app.send_task(TASK_NAME, args=["job_twice"], queue=QUEUE)
    job, statuses = _wait_terminal(settings, "job_twice", timeout_s=30)
    assert (job.status, job.error_code, job.attempts) == ("failed", "input_missing", 1)
    assert statuses == ["running", "failed"]
    assert time.monotonic() - started < 15


def test_sweeper_runs_a_job_that_was_never_published(stack) -> None:
    settings, _ = stack
    _add_job(settings, "job_lost")
    job, statuses = _wait_terminal(settings, "job_lost", timeout_s=40)
    assert (job.status, job.error_code, job.attempts) == ("failed", "input_missing", 1)
    assert statuses == ["running", "failed"]


def test_worker_log_names_no_unexpected_errors(stack) -> None:
    settings, _ = stack
    text = Path(settings.data_dir / "worker.log").read_text()
    assert "unexpected error" not in text and "Traceback" not in text
