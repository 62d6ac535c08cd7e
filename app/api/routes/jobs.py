"""`/v1/jobs`: submit, list, read, cancel and delete pruning jobs, and read their reports."""

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, sessionmaker

from app.api.deps import DbSession, Queue, SettingsDep, Store, Tenant
from app.api.lookups import find_dataset, find_job, find_model
from app.api.openapi import problem_responses
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.api.routes.artifacts import artifacts_expired
from app.api.schemas import JobCreate, JobOut, JobStatus, Page, as_utc
from app.core import ids
from app.core.errors import Conflict, NotFound, TooManyRequests, Unprocessable
from app.core.pools import run_in
from app.db.jobstate import TERMINAL, append_event, request_cancel, status_payload
from app.db.locks import lock_tenant
from app.db.models import Artifact, Dataset, Job, Model, utcnow
from app.storage import KeyNotFound
from app.storage.lifecycle import delete_job_rows, is_expired, remove_files
from contract import JobSpec, Report

router = APIRouter(prefix="/v1/jobs", tags=["jobs"],
                   responses=problem_responses(401, 404, 422, 429))

IDEMPOTENCY_WINDOW = timedelta(hours=24)
# How long a client over its concurrent-job cap should wait before retrying.
TOO_MANY_JOBS_RETRY_S = 30


def _request_hash(body: JobCreate, spec: JobSpec) -> str:
    # Hash the *defaulted* request so `{}` and the same defaults spelt out are one body.
    canonical = {"model_id": body.model_id, "dataset_id": body.dataset_id,
                 "spec": spec.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _job_response(job: Job, status: int) -> JSONResponse:
    return JSONResponse(JobOut.from_row(job).model_dump(mode="json"), status_code=status,
                        headers={"Location": f"/v1/jobs/{job.id}"})


def _replay(session: Session, tenant: str, key: str, request_hash: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key created, if still in the window;
    a different body under the same key is an error."""
    job = session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))
    if job is None:
        return None
    if as_utc(job.created_at) < utcnow() - IDEMPOTENCY_WINDOW:
        job.idempotency_key = None  # expired: free the key for this new request
        session.flush()
        return None
    if job.request_hash != request_hash:
        raise Unprocessable("this Idempotency-Key was used with a different request body",
                            code="idempotency_key_reused")
    return job


def _check_dataset_fits(model: Model, dataset: Dataset) -> None:
    """A dataset feeds the model's (single) input: its samples must have that shape."""
    if len(model.inputs) != 1:
        raise Unprocessable("datasets can only feed models with a single input",
                            code="dataset_shape_mismatch")
    expected = list(model.input_shape[1:])
    sample = list(dataset.sample_shape)
    if dataset.format == "imagefolder":
        # Images are resized to the model input: only an image-shaped input is needed.
        if len(expected) != 3:
            raise Unprocessable(f"an image dataset needs a (N, C, H, W) model input, the "
                                f"model takes {model.input_shape}",
                                code="dataset_shape_mismatch")
        return
    if sample != expected:
        raise Unprocessable(f"dataset samples have shape {sample}, the model expects "
                            f"{expected} (its input without the batch dimension)",
                            code="dataset_shape_mismatch")


def _check_capacity(session: Session, tenant: str, cap: int) -> None:
    """429 `too_many_jobs` at the cap. Correct only under `lock_tenant`, held until the
    new job is committed: concurrent submits would otherwise all count the same rows."""
    active = session.scalar(
        select(func.count()).select_from(Job).where(
            Job.tenant == tenant, Job.status.in_(("queued", "running")))
    ) or 0
    if active >= cap:
        raise TooManyRequests(f"{active} jobs are already queued or running (limit {cap})",
                              retry_after_s=TOO_MANY_JOBS_RETRY_S, code="too_many_jobs")


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a pruning job",
    responses={200: {"model": JobOut, "description": "replay of an Idempotency-Key"},
               **problem_responses(400, 409, 413)},
)
def create_job(
    body: JobCreate,
    tenant: Tenant,
    session: DbSession,
    settings: SettingsDep,
    queue: Queue,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> JSONResponse:
    """Validate, record the job as `queued`, then hand its id to the workers."""
    spec = body.spec()
    request_hash = _request_hash(body, spec)
    # First, before any write: the tenant's submits take turns from the count of its
    # active jobs to the commit of the new one (and an Idempotency-Key's replay check).
    lock_tenant(session, tenant)
    if idempotency_key and (job := _replay(session, tenant, idempotency_key, request_hash)):
        return _job_response(job, 200)
    model = find_model(session, tenant, body.model_id)
    if body.dataset_id is not None:
        _check_dataset_fits(model, find_dataset(session, tenant, body.dataset_id))
    _check_capacity(session, tenant, settings.max_concurrent_jobs_per_tenant)
    job = Job(
        id=ids.new_id(ids.JOB), tenant=tenant, model_id=model.id, dataset_id=body.dataset_id,
        spec=spec.model_dump(mode="json"), status="queued", progress=0.0, attempts=0,
        cancel_requested=False, idempotency_key=idempotency_key or None,
        request_hash=request_hash, stage_times={}, created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    append_event(session, job, "status", status_payload(job))
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the race: answer with its job.
        session.rollback()
        if idempotency_key and (job := _replay(session, tenant, idempotency_key, request_hash)):
            return _job_response(job, 200)
        raise
    # After the commit, so a worker never receives an id it cannot read; a refused send
    # leaves the job queued for the worker side's re-enqueue sweep.
    queue.enqueue(job.id)
    return _job_response(job, 202)


@router.get("", response_model=Page[JobOut], summary="List jobs, newest first")
async def list_jobs(
    request: Request,
    tenant: Tenant,
    status: JobStatus | None = None,
    model_id: Annotated[str | None, Query(max_length=64,
                                          description="Only the jobs of this model")] = None,
    dataset_id: Annotated[str | None, Query(max_length=64,
                                            description="Only the jobs of this dataset")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    state = request.app.state
    filters = JobFilters(status=status, model_id=model_id, dataset_id=dataset_id)
    body = await run_in(state.pools.db, _read_page, state.sessionmaker, tenant, filters, limit,
                        cursor)
    return _json(body)


@router.get("/{job_id}", response_model=JobOut, summary="One job")
async def get_job(job_id: str, request: Request, tenant: Tenant) -> Response:
    state = request.app.state
    return _json(await run_in(state.pools.db, _read_job, state.engine, tenant, job_id))


# The hot status reads (clients poll them) are async routes that run one short function on
# the `db` pool, which opens, uses and closes its own connection: no request session, no
# thread of Starlette's pool, and so no way to hold a connection while waiting for a thread
# (app.core.pools). They leave out the report (megabytes for a large model) and serialize
# on that thread, answering the JSON bytes directly (FastAPI would validate them again).
_STATUS_COLUMNS = tuple(column for column in Job.__table__.columns if column.key != "report")
# Built once: building and keying a statement per request cost more than running it.
_READ_JOB = select(*_STATUS_COLUMNS).where(Job.id == bindparam("job_id"),
                                           Job.tenant == bindparam("tenant"))


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


@functools.lru_cache(maxsize=8)
def _autocommit(engine: Engine) -> Engine:
    """The engine, sharing its pool, with reads outside a transaction: one SELECT needs no
    BEGIN and ROLLBACK, which on PostgreSQL are a round trip each. Not on SQLite, which
    begins no transaction for a SELECT and where switching the mode costs twice the read."""
    if engine.dialect.name == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _read_job(engine: Engine, tenant: str, job_id: str) -> bytes:
    with _autocommit(engine).connect() as conn:
        row = conn.execute(_READ_JOB, {"job_id": job_id, "tenant": tenant}).first()
    if row is None:
        raise NotFound(f"job {job_id!r} not found")
    return JobOut.from_row(row).model_dump_json().encode()  # type: ignore[arg-type]


@dataclass(frozen=True)
class JobFilters:
    """What a job list is narrowed to (None: any)."""

    status: str | None = None
    model_id: str | None = None
    dataset_id: str | None = None


def _read_page(factory: sessionmaker[Session], tenant: str, filters: JobFilters, limit: int,
               cursor: str | None) -> bytes:
    stmt = select(Job).options(defer(Job.report, raiseload=True)).where(Job.tenant == tenant)
    if filters.status is not None:
        stmt = stmt.where(Job.status == filters.status)
    if filters.model_id is not None:
        stmt = stmt.where(Job.model_id == filters.model_id)
    if filters.dataset_id is not None:
        stmt = stmt.where(Job.dataset_id == filters.dataset_id)
    with factory() as session:
        rows, next_cursor = paginate(session, stmt, Job, limit, cursor)
        page = Page[JobOut](items=[JobOut.from_row(r) for r in rows], next_cursor=next_cursor)
    return page.model_dump_json().encode()


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut,
             summary="Cancel a job", responses=problem_responses(409))
def cancel_job(job_id: str, tenant: Tenant, session: DbSession) -> JSONResponse:
    """A queued job is cancelled at once; a running one stops at its next check."""
    job = find_job(session, tenant, job_id)
    if job.status in TERMINAL:
        raise Conflict(f"job {job_id!r} has already finished ({job.status})",
                       code="job_finished")
    request_cancel(session, job)
    session.commit()
    return _job_response(job, 202)


@router.delete("/{job_id}", status_code=204, summary="Delete a finished job",
               response_class=Response, responses=problem_responses(409))
def delete_job(job_id: str, tenant: Tenant, session: DbSession, store: Store) -> Response:
    """The job, its events and its artifacts (files included) go for good. Refused (409
    `job_not_finished`) while it is queued or running: cancel it first."""
    job = find_job(session, tenant, job_id)
    if job.status not in TERMINAL:
        raise Conflict(f"job {job_id!r} is {job.status}; cancel it, then delete it once it "
                       "has stopped", code="job_not_finished")
    keys = delete_job_rows(session, job)
    session.commit()
    # After the commit: a failure in between leaves an unreferenced file, never a row
    # pointing at a file that is gone.
    remove_files(store, keys)
    return Response(status_code=204)


@router.get("/{job_id}/report", summary="The report of a succeeded job",
            responses={200: {"model": Report}, **problem_responses(409, 410)})
def get_report(job_id: str, tenant: Tenant, session: DbSession,
               store: Store) -> JSONResponse:
    """409 `job_not_succeeded` until the job has succeeded."""
    job = find_job(session, tenant, job_id)
    if job.status != "succeeded":
        raise Conflict(f"job {job_id!r} is {job.status}; its report exists once it has "
                       "succeeded", code="job_not_succeeded")
    report = job.report if job.report is not None else _stored_report(session, store, job.id)
    return JSONResponse(report)


def _stored_report(session: Session, store: Any, job_id: str) -> Any:
    artifact = session.get(Artifact, (job_id, "report.json"))
    if artifact is None:
        raise NotFound("the job has no report", code="report_missing")
    if is_expired(artifact):
        raise artifacts_expired(job_id)
    try:
        return json.loads(b"".join(store.open_stream(artifact.storage_key)))
    except KeyNotFound as exc:
        raise NotFound("the job has no report", code="report_missing") from exc
