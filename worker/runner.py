"""Running one job: claim the row, fetch the inputs, call the engine, store the artifacts.

Everything a run needs comes in a `RunContext`, so tests drive the runner with a fake
pipeline on SQLite. The job row is the truth: every outcome ends as a row update, and the
Celery task only learns whether to retry.

Errors: engine errors fail the job with their code and are not retried; a cancel ends
it `cancelled`; store and network failures while fetching inputs or storing artifacts
raise `RetryLater` (the job goes back to `queued` until its attempts run out); anything
else fails it with `internal_error` and a message that leaks nothing.
"""

import errno
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from contract import JobSpec, JobStatus
from contract.artifacts import DATASET_SUFFIXES, MEDIA_TYPES, MODEL_SUFFIXES
from infra.config import Settings
from infra.db import jobstate
from infra.db.models import Artifact, Dataset, Job, Model
from infra.db.session import session_scope
from infra.storage import ArtifactStore, KeyNotFound, StoreError, artifact_key
from worker import claim, fair
from worker.engine.errors import EngineError, JobCancelled
from worker.progress import CancelCheck, Heartbeat, ProgressWriter

log = logging.getLogger(__name__)

# errno values of a write refused for lack of room (full disk, quota, file-size limit).
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Failures of the store or the network that a later attempt may not meet.
TRANSIENT: tuple[type[BaseException], ...] = (StoreError, OSError, ConnectionError)

PipelineFn = Callable[..., Any]


class RetryLater(Exception):
    """A transient failure: the job is queued again and the task should be retried."""

    def __init__(self, message: str, countdown_s: float) -> None:
        super().__init__(message)
        self.countdown_s = countdown_s
        # The job that was run (a message's turn may run another tenant's job first).
        self.job_id: str | None = None


class _Fatal(Exception):
    """A permanent failure outside the engine (e.g. an input file missing from the store)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def default_pipeline(*args: Any, **kwargs: Any) -> Any:
    """The engine's `run_pipeline`, imported here so torch loads only in the job's process."""
    from worker.engine.pipeline import run_pipeline

    return run_pipeline(*args, **kwargs)


def default_device() -> str:
    """`cuda` when this process sees a GPU, else `cpu` (checked in the child, never the parent)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RunContext:
    """What a run needs; built once per worker process."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore
    worker: str = field(default_factory=claim.this_worker)
    pipeline: PipelineFn = default_pipeline
    device: Callable[[], str] = default_device
    progress_interval_s: float = 0.25
    cancel_interval_s: float = 0.5
    heartbeat_s: float = 5.0
    lease_s: float = 30.0
    retry_countdown_s: float = 10.0


@dataclass(frozen=True)
class _Inputs:
    spec: JobSpec
    model: Model
    dataset: Dataset | None


def run_job(job_id: str, ctx: RunContext) -> str:
    """Take a turn for `job_id`'s message: run `job_id`, or the queued job that fair share
    between tenants puts first (`worker.fair`). Returns the outcome (`succeeded`, `failed`,
    `cancelled`, `skip`, `busy`, `missing`); raises `RetryLater` on a transient failure."""
    for candidate in _turn_order(ctx, job_id):
        outcome = _claim_and_run(candidate, ctx)
        if outcome != "lost":
            return outcome
    return "skip"


def _turn_order(ctx: RunContext, job_id: str) -> list[str]:
    """`job_id` alone while it is running (a redelivery after a crash resumes it, or finds
    it alive elsewhere) or unknown; otherwise the queued jobs in fair order."""
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        if job is None or job.status == "running":
            return [job_id]
        order = fair.queued_in_fair_order(session)
    if order and order[0] != job_id:
        log.info("job %s's turn runs %s (fair share between tenants)", job_id, order[0])
    return order or [job_id]


def _claim_and_run(job_id: str, ctx: RunContext) -> str:
    """Claim and run one job; `lost` when another delivery claimed it first."""
    with session_scope(ctx.sessions) as session:
        got = claim.claim_job(
            session,
            job_id,
            worker=ctx.worker,
            max_attempts=ctx.settings.max_attempts,
            lease_s=ctx.lease_s,
            time_limit_s=ctx.settings.job_soft_time_limit_s,
        )
        if got.outcome in ("exhausted", "timed_out"):
            _fail_unclaimable(session, job_id, got)
            return "failed"
    if got.outcome != "claimed":
        log.info("job %s not run: %s", job_id, got.reason)
        return "lost" if got.reason == claim.LOST_RACE else got.outcome
    log.info("job %s: attempt %d on %s", job_id, got.attempts, ctx.worker)
    with Heartbeat(
        ctx.sessions, job_id, worker=ctx.worker, attempts=got.attempts, interval_s=ctx.heartbeat_s
    ):
        try:
            return _run_claimed(job_id, got.attempts, ctx)
        except RetryLater as exc:
            exc.job_id = job_id
            raise


def _fail_unclaimable(session: Session, job_id: str, got: claim.Claim) -> None:
    job = session.get(Job, job_id)
    assert job is not None
    if got.outcome == "timed_out":
        code, message = "time_limit_exceeded", "the job's worker was stopped at the time limit"
    else:
        code = "worker_crashed"
        message = f"the job stopped its worker {got.attempts} times; not retried again"
    jobstate.set_status(session, job, "failed", error_code=code, error_message=message)


def _run_claimed(job_id: str, attempts: int, ctx: RunContext) -> str:
    workdir = _make_workdir(ctx.settings, job_id)
    try:
        inputs = _load_inputs(ctx, job_id)
        paths = _fetch_inputs(ctx, inputs, workdir)
        result = _call_engine(ctx, job_id, attempts, inputs, paths, workdir / "out")
        _store_result(ctx, job_id, attempts, result)
        return "succeeded"
    except JobCancelled:
        return _finish(ctx, job_id, attempts, "cancelled", "cancelled", "cancelled by the client")
    except EngineError as exc:
        return _finish(ctx, job_id, attempts, "failed", exc.code, exc.message)
    except _Fatal as exc:
        return _finish(ctx, job_id, attempts, "failed", exc.code, exc.message)
    except RetryLater:
        raise
    except Exception as exc:  # noqa: BLE001 - the job must end in a state, never hang
        if _is_time_limit(exc):
            return _finish(
                ctx,
                job_id,
                attempts,
                "failed",
                "time_limit_exceeded",
                f"the job ran past {ctx.settings.job_soft_time_limit_s} s",
            )
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            log.error("job %s: out of disk space: %s", job_id, exc)
            return _finish(
                ctx,
                job_id,
                attempts,
                "failed",
                "insufficient_storage",
                "the worker ran out of disk space while running the job",
            )
        log.exception("job %s: unexpected error", job_id)
        return _finish(
            ctx,
            job_id,
            attempts,
            "failed",
            "internal_error",
            f"unexpected error in the worker; see the worker log for job {job_id}",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _is_time_limit(exc: BaseException) -> bool:
    from celery.exceptions import SoftTimeLimitExceeded

    return isinstance(exc, SoftTimeLimitExceeded)


def _make_workdir(settings: Settings, job_id: str) -> Path:
    base = settings.data_dir / "work"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=base))


def _load_inputs(ctx: RunContext, job_id: str) -> _Inputs:
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        assert job is not None
        model = session.get(Model, job.model_id)
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if model is None or model.deleted_at is not None:
            raise _Fatal("input_missing", f"model {job.model_id} no longer exists")
        if job.dataset_id and (dataset is None or dataset.deleted_at is not None):
            raise _Fatal("input_missing", f"dataset {job.dataset_id} no longer exists")
        spec = JobSpec.model_validate(job.spec)
        session.expunge_all()
    return _Inputs(spec, model, dataset)


def _fetch_inputs(ctx: RunContext, inputs: _Inputs, workdir: Path) -> dict[str, Path]:
    wanted = {"model": (inputs.model.storage_key, MODEL_SUFFIXES.get(inputs.model.format, ""))}
    if inputs.dataset is not None:
        suffix = DATASET_SUFFIXES.get(inputs.dataset.format, "")
        wanted["dataset"] = (inputs.dataset.storage_key, suffix)
    paths: dict[str, Path] = {}
    for role, (key, suffix) in wanted.items():
        fetch = partial(ctx.store.download_to, key, workdir / f"{role}{suffix}")
        paths[role] = _io(fetch, ctx, f"fetching the {role}")
    return paths


def _io(action: Callable[[], Any], ctx: RunContext, what: str) -> Any:
    """Run a store operation, turning its failures into permanent or transient errors."""
    try:
        return action()
    except KeyNotFound as exc:
        raise _Fatal("input_missing", f"{what}: the file is missing from the store") from exc
    except TRANSIENT as exc:
        raise RetryLater(f"{what}: {type(exc).__name__}", ctx.retry_countdown_s) from exc


def _call_engine(
    ctx: RunContext,
    job_id: str,
    attempts: int,
    inputs: _Inputs,
    paths: dict[str, Path],
    out_dir: Path,
) -> Any:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = inputs.model
    return ctx.pipeline(
        paths["model"],
        inputs.spec,
        out_dir,
        dataset_path=paths.get("dataset"),
        arch=model.arch,
        input_shape=tuple(model.input_shape) if model.input_shape else None,
        device=ctx.device(),
        # Per-layer latency timings of this machine, reused by the tenant's later
        # latency-target jobs (per tenant: a job's timings never steer another tenant's).
        cache_dir=tenant_cache_dir(ctx.settings, model.tenant),
        on_progress=ProgressWriter(ctx.sessions, job_id, min_interval_s=ctx.progress_interval_s),
        should_cancel=CancelCheck(
            ctx.sessions,
            job_id,
            worker=ctx.worker,
            attempts=attempts,
            min_interval_s=ctx.cancel_interval_s,
        ),
    )


def tenant_cache_dir(settings: Settings, tenant: str) -> Path:
    """The tenant's latency cache, under a name built from a hash (never the tenant's text)."""
    return settings.data_dir / "cache" / hashlib.sha256(tenant.encode()).hexdigest()[:24]


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file, read in 1 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _cancel_requested(ctx: RunContext, job_id: str) -> bool:
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        return job is not None and bool(job.cancel_requested)


def _store_result(ctx: RunContext, job_id: str, attempts: int, result: Any) -> None:
    # A cancel accepted while the job ran wins over its results, also when it landed in a
    # stage that does not check for cancels itself (the benchmark).
    if _cancel_requested(ctx, job_id):
        raise JobCancelled()
    rows = []
    for name, path in sorted(result.artifacts.items()):
        key = artifact_key(job_id, name)
        size, sha = file_digest(Path(path))
        # The store writes atomically under a fixed key, so a rerun overwrites, never doubles.
        _io(partial(ctx.store.put_file, key, Path(path)), ctx, f"storing {name}")
        rows.append(
            Artifact(
                job_id=job_id,
                name=name,
                size_bytes=size,
                sha256=sha,
                media_type=MEDIA_TYPES.get(name, "application/octet-stream"),
                storage_key=key,
            )
        )
    report = result.report.model_dump(mode="json")
    with session_scope(ctx.sessions) as session:
        if not claim.still_owner(session, job_id, ctx.worker, attempts):
            log.warning("job %s: lost ownership before storing results", job_id)
            return
        job = session.get(Job, job_id)
        assert job is not None
        if job.cancel_requested:
            for row in rows:
                ctx.store.delete(row.storage_key)
            raise JobCancelled()
        session.execute(delete(Artifact).where(Artifact.job_id == job_id))
        session.add_all(rows)
        job.report = report
        jobstate.set_status(session, job, "succeeded")


def _finish(
    ctx: RunContext, job_id: str, attempts: int, status: JobStatus, code: str, message: str
) -> str:
    with session_scope(ctx.sessions) as session:
        if not claim.still_owner(session, job_id, ctx.worker, attempts):
            job = session.get(Job, job_id)
            # A cancel that landed as the job ended leaves it cancelled already; only a run
            # that still owns the job may write its end.
            return job.status if job is not None else "missing"
        job = session.get(Job, job_id)
        assert job is not None
        jobstate.set_status(session, job, status, error_code=code, error_message=message)
    log.info("job %s %s: %s", job_id, status, code)
    return status


def requeue(ctx: RunContext, job_id: str, message: str) -> bool:
    """After a transient failure: queue the job again, or fail it when attempts ran out.
    Returns True when the task should be retried."""
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "running" or job.worker != ctx.worker:
            return False
        if job.attempts >= ctx.settings.max_attempts:
            jobstate.set_status(
                session,
                job,
                "failed",
                error_code="storage_unavailable",
                error_message=f"{message}; gave up after {job.attempts} attempts",
            )
            return False
        job.status = "queued"
        jobstate.append_event(session, job, "status", jobstate.status_payload(job))
    return True
