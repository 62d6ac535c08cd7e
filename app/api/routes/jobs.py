"""`/v1/jobs`: submit, list, read, cancel and delete pruning jobs, and read their reports."""

import base64
import binascii
import functools
import hashlib
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    any_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, sessionmaker

from app.api.deps import DbSession, Queue, SettingsDep, Store, Tenant
from app.api.lookups import find_dataset, find_job, find_model
from app.api.openapi import problem_responses
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.api.routes.artifacts import artifacts_expired
from app.api.schemas import JobCreate, JobOut, JobUpdate, Page, as_utc
from app.core.errors import (
    Conflict,
    NotFound,
    TooManyRequests,
    Unprocessable,
    ValidationFailed,
)
from app.core.pools import run_in
from contract import TERMINAL_STATUSES, JobSpec, JobStatus, Report
from contract.artifacts import REPORT_JSON
from infra import ids
from infra.db.jobstate import append_event, request_cancel, status_payload
from infra.db.locks import lock_tenant
from infra.db.models import JOB_NAME_MAX, JOB_TAG_MAX, Artifact, Dataset, Job, Model, utcnow
from infra.storage import KeyNotFound
from infra.storage.lifecycle import delete_job_rows, is_expired, remove_files

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 404, 422, 429)
)

IDEMPOTENCY_WINDOW = timedelta(hours=24)
# How long a client over its concurrent-job cap should wait before retrying.
TOO_MANY_JOBS_RETRY_S = 30


def _request_hash(body: JobCreate, spec: JobSpec) -> str:
    # Hash the *defaulted* request so `{}` and the same defaults spelt out are one body.
    canonical: dict[str, Any] = {
        "model_id": body.model_id,
        "dataset_id": body.dataset_id,
        "spec": spec.model_dump(mode="json"),
    }
    # Only when given, so a body without them hashes as it did before they existed.
    if body.name is not None:
        canonical["name"] = body.name
    if body.tags:
        canonical["tags"] = body.tags
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _job_response(job: Job, status: int) -> JSONResponse:
    return JSONResponse(
        JobOut.from_row(job).model_dump(mode="json"),
        status_code=status,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


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
        raise Unprocessable(
            "this Idempotency-Key was used with a different request body",
            code="idempotency_key_reused",
        )
    return job


def _check_dataset_fits(model: Model, dataset: Dataset) -> None:
    """A dataset feeds the model's (single) input: its samples must have that shape."""
    if len(model.inputs) != 1:
        raise Unprocessable(
            "datasets can only feed models with a single input", code="dataset_shape_mismatch"
        )
    expected = list(model.input_shape[1:])
    sample = list(dataset.sample_shape)
    if dataset.format == "imagefolder":
        # Images are resized to the model input: only an image-shaped input is needed.
        if len(expected) != 3:
            raise Unprocessable(
                f"an image dataset needs a (N, C, H, W) model input, the "
                f"model takes {model.input_shape}",
                code="dataset_shape_mismatch",
            )
        return
    if sample != expected:
        raise Unprocessable(
            f"dataset samples have shape {sample}, the model expects "
            f"{expected} (its input without the batch dimension)",
            code="dataset_shape_mismatch",
        )


def _check_capacity(session: Session, tenant: str, cap: int) -> None:
    """429 `too_many_jobs` at the cap. Correct only under `lock_tenant`, held until the
    new job is committed: concurrent submits would otherwise all count the same rows."""
    active = (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant == tenant, Job.status.in_(("queued", "running")))
        )
        or 0
    )
    if active >= cap:
        raise TooManyRequests(
            f"{active} jobs are already queued or running (limit {cap})",
            retry_after_s=TOO_MANY_JOBS_RETRY_S,
            code="too_many_jobs",
        )


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a pruning job",
    responses={
        200: {"model": JobOut, "description": "replay of an Idempotency-Key"},
        **problem_responses(400, 409, 413),
    },
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
        id=ids.new_id(ids.JOB),
        tenant=tenant,
        model_id=model.id,
        dataset_id=body.dataset_id,
        spec=spec.model_dump(mode="json"),
        status="queued",
        progress=0.0,
        attempts=0,
        cancel_requested=False,
        idempotency_key=idempotency_key or None,
        request_hash=request_hash,
        stage_times={},
        created_at=utcnow(),
        name=body.name,
        tags=body.tags or [],
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


# The orders `GET /v1/jobs?sort=` knows: `key` ascending, `-key` descending.
JobSort = Literal[
    "-created_at",
    "created_at",
    "-finished_at",
    "finished_at",
    "name",
    "-name",
    "-macs_reduction",
    "macs_reduction",
    "-params_reduction",
    "params_reduction",
    "-speedup",
    "speedup",
    "-accuracy_change",
    "accuracy_change",
    "size_bytes",
    "-size_bytes",
]
DEFAULT_SORT: JobSort = "-created_at"
SORT_KEYS: tuple[str, ...] = get_args(JobSort)
_SORT_DOC = (
    "The order: `created_at` (when submitted), `finished_at`, `name` (case-insensitive), "
    "or a figure of the result: `macs_reduction`, `params_reduction`, `speedup`, "
    "`accuracy_change` (without labels the agreement minus 1, so 96% agreement ranks as "
    "4 points lost), `size_bytes`; ascending, or descending with a leading `-`. Ties go "
    "by id in the same direction; jobs without the value (unfinished, unnamed, no result) "
    "come last either way. Default `-created_at`, newest first. A `cursor` continues the "
    "order it came from."
)


@router.get("", response_model=Page[JobOut], summary="List jobs, newest first")
async def list_jobs(
    request: Request,
    tenant: Tenant,
    status: JobStatus | None = None,
    model_id: Annotated[
        str | None, Query(max_length=64, description="Only the jobs of this model")
    ] = None,
    dataset_id: Annotated[
        str | None, Query(max_length=64, description="Only the jobs of this dataset")
    ] = None,
    tag: Annotated[
        str | None,
        Query(
            max_length=JOB_TAG_MAX,
            description="Only the jobs with this tag (exact, case-sensitive)",
        ),
    ] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=JOB_NAME_MAX,
            description="Only the jobs whose name contains this text (case-insensitive)",
        ),
    ] = None,
    sort: Annotated[JobSort, Query(description=_SORT_DOC)] = DEFAULT_SORT,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    """Newest first unless `sort` says otherwise; `status`, `model_id`, `dataset_id`,
    `tag` and `q` narrow the list together."""
    state = request.app.state
    filters = JobFilters(
        status=status,
        model_id=model_id,
        dataset_id=dataset_id,
        tag=tag or None,
        q=(q or "").strip() or None,
    )
    body = await run_in(
        state.pools.db, _read_page, state.sessionmaker, tenant, filters, limit, cursor, sort
    )
    return _json(body)


@router.get("/{job_id}", response_model=JobOut, summary="One job")
async def get_job(job_id: str, request: Request, tenant: Tenant) -> Response:
    state = request.app.state
    return _json(await state.status_reader.read(tenant, job_id))


# The hot status reads (clients poll them) are async routes that make one short read, on
# the event loop (one job: app.api.status_reader) or on the `db` pool (a page), which
# opens, uses and closes its own connection: no request session, no thread of Starlette's
# pool, and so no way to hold a connection while waiting for a thread (app.core.pools).
# They leave out the report (megabytes for a large model) and serialize where they read,
# answering the JSON bytes directly (FastAPI would validate them again).
_STATUS_COLUMNS = tuple(column for column in Job.__table__.columns if column.key != "report")
# Built once: building and keying a statement per request cost more than running it.
# Several jobs in one read, for the polls that arrive together (app.api.status_reader);
# `READ_JOBS_ANY` takes one array parameter, for a driver used without SQLAlchemy.
READ_JOBS = select(*_STATUS_COLUMNS).where(Job.id.in_(bindparam("job_ids", expanding=True)))
READ_JOBS_ANY = select(*_STATUS_COLUMNS).where(Job.id == any_(bindparam("job_ids")))
JobKey = tuple[str, str]  # (tenant, job id)


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


def read_job_statuses(engine: Engine, keys: Collection[JobKey]) -> dict[JobKey, bytes]:
    """Each job's status as JSON bytes (`JobOut`, without the report) by (tenant, id), in
    one read; a job the tenant does not have is left out. Answers the polls, through
    app.api.status_reader."""
    with _autocommit(engine).connect() as conn:
        rows = conn.execute(READ_JOBS, {"job_ids": sorted({job for _, job in keys})}).all()
    return statuses_json(rows, keys)


def statuses_json(rows: Iterable[Any], keys: Collection[JobKey]) -> dict[JobKey, bytes]:
    """The rows asked for by (tenant, id), as JSON bytes: a job of another tenant with an
    id that was asked for is not among them."""
    wanted = set(keys)
    return {(r.tenant, r.id): status_json(r) for r in rows if (r.tenant, r.id) in wanted}


def status_json(row: Any) -> bytes:
    """A status row (the columns of `READ_JOBS`, by attribute) as `JobOut`'s JSON bytes."""
    return JobOut.from_row(row).model_dump_json().encode()


@dataclass(frozen=True)
class JobFilters:
    """What a job list is narrowed to (None: any)."""

    status: str | None = None
    model_id: str | None = None
    dataset_id: str | None = None
    tag: str | None = None
    q: str | None = None


def _has_tag(dialect: str, tag: str) -> ColumnElement[bool]:
    """The job's `tags` (a JSON array) hold `tag`: one function per dialect, both giving
    the array's elements as a `value` column."""
    elements = func.json_array_elements_text if dialect == "postgresql" else func.json_each
    values = elements(Job.tags).table_valued("value").alias("job_tag")
    return select(literal(1)).select_from(values).where(values.c.value == tag).exists()


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filtered(stmt: Select[Any], filters: JobFilters, dialect: str) -> Select[Any]:
    if filters.status is not None:
        stmt = stmt.where(Job.status == filters.status)
    if filters.model_id is not None:
        stmt = stmt.where(Job.model_id == filters.model_id)
    if filters.dataset_id is not None:
        stmt = stmt.where(Job.dataset_id == filters.dataset_id)
    if filters.tag is not None:
        stmt = stmt.where(_has_tag(dialect, filters.tag))
    if filters.q is not None:
        stmt = stmt.where(Job.name.ilike(_like(filters.q), escape="\\"))
    return stmt


def _read_page(
    factory: sessionmaker[Session],
    tenant: str,
    filters: JobFilters,
    limit: int,
    cursor: str | None,
    sort: str = DEFAULT_SORT,
) -> bytes:
    stmt = select(Job).options(defer(Job.report, raiseload=True)).where(Job.tenant == tenant)
    with factory() as session:
        stmt = _filtered(stmt, filters, session.get_bind().dialect.name)
        if sort == DEFAULT_SORT:  # the (tenant, created_at) index's own order
            rows, next_cursor = paginate(session, stmt, Job, limit, cursor)
        else:
            rows, next_cursor = _sorted_page(session, stmt, sort, limit, cursor)
        page = Page[JobOut](items=[JobOut.from_row(r) for r in rows], next_cursor=next_cursor)
    return page.model_dump_json().encode()


def _figure(key: str) -> ColumnElement[Any]:
    figure: ColumnElement[Any] = Job.result[key].as_float()
    return figure


# Sort key -> (the value sorted on, whether it is a time, whether it can be missing).
_SORTS: dict[str, tuple[ColumnElement[Any], bool, bool]] = {
    "created_at": (Job.__table__.c.created_at, True, False),
    "finished_at": (Job.__table__.c.finished_at, True, True),
    "name": (func.lower(Job.name), False, True),
    "macs_reduction": (_figure("macs_reduction"), False, True),
    "params_reduction": (_figure("params_reduction"), False, True),
    "speedup": (_figure("speedup"), False, True),
    "accuracy_change": (
        func.coalesce(_figure("accuracy_change"), _figure("agreement") - 1),
        False,
        True,
    ),
    "size_bytes": (_figure("size_bytes"), False, True),
}


def _sorted_page(
    session: Session, stmt: Select[Any], sort: str, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """One page in a `sort` order other than the default: keyset paging over (the sort
    value, id), missing values last, the cursor holding the last row's pair."""
    desc = sort.startswith("-")
    value, is_time, nullable = _SORTS[sort.lstrip("-")]
    if cursor:
        last, last_id = _decode_sort_cursor(cursor, sort, is_time)
        stmt = stmt.where(_after(value, nullable, desc, last, last_id))
    order: list[Any] = [case((value.is_(None), 1), else_=0)] if nullable else []
    order += [value.desc(), Job.id.desc()] if desc else [value.asc(), Job.id.asc()]
    stmt = stmt.add_columns(value.label("sort_value")).order_by(*order).limit(limit + 1)
    rows = session.execute(stmt).all()
    more = len(rows) > limit
    rows = rows[:limit]
    jobs = [row[0] for row in rows]
    if not more:
        return jobs, None
    return jobs, _encode_sort_cursor(sort, rows[-1][1], jobs[-1].id)


def _after(
    value: ColumnElement[Any], nullable: bool, desc: bool, last: Any, last_id: str
) -> ColumnElement[bool]:
    """The rows after (`last`, `last_id`) in the order `_sorted_page` gives."""
    id_after = Job.id < last_id if desc else Job.id > last_id
    if last is None:  # among the missing values, which come last
        return and_(value.is_(None), id_after)
    beyond = value < last if desc else value > last
    after = or_(beyond, and_(value == last, id_after))
    return or_(after, value.is_(None)) if nullable else after


def _encode_sort_cursor(sort: str, value: Any, job_id: str) -> str:
    if isinstance(value, datetime):
        value = as_utc(value).isoformat()
    raw = json.dumps([sort, value, job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_sort_cursor(cursor: str, sort: str, is_time: bool) -> tuple[Any, str]:
    """Inverse of `_encode_sort_cursor`; a tampered cursor, or one of another order, is a
    422 naming `cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, value, job_id = json.loads(raw)
        if not isinstance(job_id, str) or not isinstance(value, str | int | float | None):
            raise ValueError("bad cursor")
        if is_time and value is not None:
            value = as_utc(datetime.fromisoformat(str(value)))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor", "invalid cursor") from exc
    if cursor_sort != sort:
        raise ValidationFailed(
            "cursor",
            f"this cursor continues sort={cursor_sort}, not sort={sort}: start again without it",
        )
    return value, job_id


@router.patch(
    "/{job_id}",
    response_model=JobOut,
    summary="Rename or retag a job",
    responses=problem_responses(400),
)
def update_job(job_id: str, body: JobUpdate, tenant: Tenant, session: DbSession) -> JSONResponse:
    """Changes the fields given (`name`, `tags`), in any status; the others stay as they
    are."""
    job = session.scalar(
        select(Job)
        .options(defer(Job.report, raiseload=True))
        .where(Job.id == job_id, Job.tenant == tenant)
    )
    if job is None:
        raise NotFound(f"job {job_id!r} not found")
    if "name" in body.model_fields_set:
        job.name = body.name
    if "tags" in body.model_fields_set:
        job.tags = body.tags or []
    session.commit()
    return _job_response(job, 200)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Cancel a job",
    responses=problem_responses(409),
)
def cancel_job(job_id: str, tenant: Tenant, session: DbSession) -> JSONResponse:
    """A queued job is cancelled at once; a running one stops at its next check."""
    job = find_job(session, tenant, job_id)
    if job.status in TERMINAL_STATUSES:
        raise Conflict(f"job {job_id!r} has already finished ({job.status})", code="job_finished")
    request_cancel(session, job)
    session.commit()
    return _job_response(job, 202)


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a finished job",
    response_class=Response,
    responses=problem_responses(409),
)
def delete_job(job_id: str, tenant: Tenant, session: DbSession, store: Store) -> Response:
    """The job, its events and its artifacts (files included) go for good. Refused (409
    `job_not_finished`) while it is queued or running: cancel it first."""
    job = find_job(session, tenant, job_id)
    if job.status not in TERMINAL_STATUSES:
        raise Conflict(
            f"job {job_id!r} is {job.status}; cancel it, then delete it once it has stopped",
            code="job_not_finished",
        )
    keys = delete_job_rows(session, job)
    session.commit()
    # After the commit: a failure in between leaves an unreferenced file, never a row
    # pointing at a file that is gone.
    remove_files(store, keys)
    return Response(status_code=204)


@router.get(
    "/{job_id}/report",
    summary="The report of a succeeded job",
    responses={200: {"model": Report}, **problem_responses(409, 410)},
)
def get_report(job_id: str, tenant: Tenant, session: DbSession, store: Store) -> JSONResponse:
    """409 `job_not_succeeded` until the job has succeeded."""
    job = find_job(session, tenant, job_id)
    if job.status != "succeeded":
        raise Conflict(
            f"job {job_id!r} is {job.status}; its report exists once it has succeeded",
            code="job_not_succeeded",
        )
    report = job.report if job.report is not None else _stored_report(session, store, job.id)
    return JSONResponse(report)


def _stored_report(session: Session, store: Any, job_id: str) -> Any:
    artifact = session.get(Artifact, (job_id, REPORT_JSON))
    if artifact is None:
        raise NotFound("the job has no report", code="report_missing")
    if is_expired(artifact):
        raise artifacts_expired(job_id)
    try:
        return json.loads(b"".join(store.open_stream(artifact.storage_key)))
    except KeyNotFound as exc:
        raise NotFound("the job has no report", code="report_missing") from exc
