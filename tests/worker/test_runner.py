"""The runner against a fake pipeline on SQLite: transitions, errors, claims, artifacts."""

import hashlib
import json
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select

from infra.db.models import Artifact, Job, JobEvent, utcnow
from infra.db.session import session_scope
from infra.storage import StoreError
from tests.worker.conftest import FakePipeline, add_job
from worker import runner
from worker.engine.errors import UnsupportedModel


def _job(sessions, job_id="job_1") -> Job:
    with session_scope(sessions) as s:
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


def _statuses(sessions, job_id="job_1") -> list[str]:
    with session_scope(sessions) as s:
        rows = s.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
            .order_by(JobEvent.id)
        )
        return [e.data["status"] for e in rows]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_success_stores_artifacts_report_and_ends_succeeded(sessions, store, make_ctx):
    add_job(sessions)
    pipeline = FakePipeline()
    assert runner.run_job("job_1", make_ctx(pipeline)) == "succeeded"
    job = _job(sessions)
    assert (job.status, job.attempts, job.progress, job.error_code) == ("succeeded", 1, 1.0, None)
    assert job.report["ratios"]["macs"] == 2.0
    assert _statuses(sessions) == ["running", "succeeded"]
    assert set(job.stage_times) == {"loading", "pruning", "exporting"}
    assert all(t["finished_at"] for t in job.stage_times.values())
    call = pipeline.calls[0]
    assert call["device"] == "cpu" and call["input_shape"] == (1, 3, 8, 8)
    assert call["dataset_bytes"] == b"fake npz bytes"
    with session_scope(sessions) as s:
        arts = {a.name: a for a in s.scalars(select(Artifact))}
    assert set(arts) == {"model.onnx", "report.json"}
    assert arts["model.onnx"].sha256 == hashlib.sha256(b"pruned model").hexdigest()
    assert arts["model.onnx"].size_bytes == len(b"pruned model")
    assert arts["report.json"].media_type == "application/json"
    assert arts["model.onnx"].media_type == "application/octet-stream"
    stored = b"".join(store.open_stream("jobs/job_1/report.json"))
    assert json.loads(stored)["pruned"]["macs"] == 20_000


def test_engine_error_fails_with_its_code_and_is_not_retried(sessions, make_ctx):
    add_job(sessions)
    pipeline = FakePipeline(raise_exc=UnsupportedModel("op Foo", code="unsupported_op"))
    assert runner.run_job("job_1", make_ctx(pipeline)) == "failed"
    job = _job(sessions)
    assert (job.status, job.error_code, job.error_message) == ("failed", "unsupported_op", "op Foo")
    assert runner.run_job("job_1", make_ctx(pipeline)) == "skip"
    assert len(pipeline.calls) == 1 and _job(sessions).attempts == 1


def test_unexpected_error_fails_internal_without_leaking(sessions, make_ctx):
    add_job(sessions)
    pipeline = FakePipeline(raise_exc=RuntimeError("secret path /home/x"))
    assert runner.run_job("job_1", make_ctx(pipeline)) == "failed"
    job = _job(sessions)
    assert job.error_code == "internal_error" and "secret" not in job.error_message


def test_cancel_while_running_ends_cancelled(sessions, make_ctx):
    add_job(sessions)

    def cancel_at_step(step: int) -> None:
        if step == 4:
            with session_scope(sessions) as s:
                s.get(Job, "job_1").cancel_requested = True

    pipeline = FakePipeline(before_step=cancel_at_step)
    assert runner.run_job("job_1", make_ctx(pipeline)) == "cancelled"
    job = _job(sessions)
    assert (job.status, job.error_code) == ("cancelled", "cancelled")
    assert job.stage == "pruning" and job.progress < 1.0
    with session_scope(sessions) as s:
        assert s.scalars(select(Artifact)).first() is None


def test_attempt_cap_fails_worker_crashed(sessions, make_ctx):
    old = utcnow() - timedelta(minutes=10)
    add_job(
        sessions, status="running", attempts=3, worker="elsewhere:1", updated_at=old, started_at=old
    )
    pipeline = FakePipeline()
    assert runner.run_job("job_1", make_ctx(pipeline)) == "failed"
    job = _job(sessions)
    assert (job.status, job.error_code, job.attempts) == ("failed", "worker_crashed", 3)
    assert pipeline.calls == []


def test_dead_run_on_this_host_restarts_cleanly(sessions, make_ctx):
    now = utcnow()
    add_job(
        sessions,
        status="running",
        attempts=1,
        started_at=now,
        updated_at=now,
        worker=f"{socket.gethostname()}:{_dead_pid()}",
    )
    with session_scope(sessions) as s:  # an artifact row left by the dead attempt
        s.add(
            Artifact(
                job_id="job_1",
                name="model.onnx",
                size_bytes=1,
                sha256="old",
                media_type="x",
                storage_key="jobs/job_1/model.onnx",
            )
        )
    assert runner.run_job("job_1", make_ctx(FakePipeline())) == "succeeded"
    job = _job(sessions)
    assert (job.status, job.attempts) == ("succeeded", 2)
    with session_scope(sessions) as s:
        rows = s.scalars(select(Artifact).where(Artifact.name == "model.onnx")).all()
    assert [r.sha256 for r in rows] == [hashlib.sha256(b"pruned model").hexdigest()]


def test_live_run_elsewhere_is_left_alone(sessions, make_ctx):
    now = utcnow()
    add_job(
        sessions,
        status="running",
        attempts=1,
        started_at=now,
        updated_at=now,
        worker="another-host:42",
    )
    pipeline = FakePipeline()
    assert runner.run_job("job_1", make_ctx(pipeline)) == "busy"
    assert pipeline.calls == [] and _job(sessions).attempts == 1


def test_dead_run_past_time_limit_is_not_restarted(sessions, make_ctx, settings):
    long_ago = utcnow() - timedelta(seconds=settings.job_soft_time_limit_s + 60)
    add_job(
        sessions,
        status="running",
        attempts=1,
        started_at=long_ago,
        updated_at=utcnow() - timedelta(minutes=5),
        worker="another-host:42",
    )
    assert runner.run_job("job_1", make_ctx(FakePipeline())) == "failed"
    assert _job(sessions).error_code == "time_limit_exceeded"


def test_terminal_and_missing_jobs_are_skipped(sessions, make_ctx):
    add_job(sessions, status="cancelled")
    pipeline = FakePipeline()
    assert runner.run_job("job_1", make_ctx(pipeline)) == "skip"
    assert runner.run_job("job_nope", make_ctx(pipeline)) == "missing"
    assert pipeline.calls == []


def test_missing_input_file_fails_input_missing(sessions, store, make_ctx):
    add_job(sessions)
    store.delete("datasets/ds_1")
    assert runner.run_job("job_1", make_ctx(FakePipeline())) == "failed"
    assert _job(sessions).error_code == "input_missing"


class FlakyStore:
    """Delegates to a real store but fails downloads with a store outage."""

    def __init__(self, inner, failures: int) -> None:
        self.inner, self.failures = inner, failures

    def download_to(self, key, dest):
        if self.failures:
            self.failures -= 1
            raise StoreError("connection reset")
        return self.inner.download_to(key, dest)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_transient_store_error_requeues_then_succeeds(sessions, store, make_ctx):
    add_job(sessions)
    ctx = make_ctx(FakePipeline(), store=FlakyStore(store, failures=1))
    with pytest.raises(runner.RetryLater):
        runner.run_job("job_1", ctx)
    assert runner.requeue(ctx, "job_1", "fetching the model: StoreError") is True
    assert _job(sessions).status == "queued"
    assert runner.run_job("job_1", ctx) == "succeeded"
    assert _job(sessions).attempts == 2
    assert _statuses(sessions) == ["running", "queued", "running", "succeeded"]


def test_transient_errors_stop_at_the_attempt_cap(sessions, store, make_ctx):
    add_job(sessions)
    ctx = make_ctx(FakePipeline(), store=FlakyStore(store, failures=99))
    for _ in range(3):
        with pytest.raises(runner.RetryLater):
            runner.run_job("job_1", ctx)
        retry = runner.requeue(ctx, "job_1", "fetching the model: StoreError")
    assert retry is False
    job = _job(sessions)
    assert (job.status, job.error_code, job.attempts) == ("failed", "storage_unavailable", 3)
