"""`/v1/models`: upload, list, read, download and delete models."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import DbSession, InspectorDep, MetricsDep, SettingsDep, Store, Tenant
from app.api.downloads import stream_object
from app.api.lookups import find_model
from app.api.openapi import multipart_body, problem_responses
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.api.schemas import ModelOut, Page, PrunabilityOut
from app.api.uploads_common import (
    display_name,
    parse_arch,
    parse_input_shape,
    received_upload,
    same_file_uploads,
)
from app.core.errors import Conflict
from app.core.pools import run_in
from app.prunability import Analyses
from app.uploads import commit_upload_row
from contract.artifacts import MODEL_SUFFIXES
from infra import ids
from infra.db.models import Job, Model, utcnow
from infra.storage import model_key

router = APIRouter(
    prefix="/v1/models", tags=["models"], responses=problem_responses(401, 404, 422, 429)
)


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    summary="Upload a model",
    responses={
        200: {
            "model": ModelOut,
            "description": "the tenant uploaded this file (the "
            "same SHA-256, arch and input_shape) before: that model, stored once",
        },
        **problem_responses(400, 408, 413, 415, 507),
    },
    openapi_extra=multipart_body(
        {
            "arch": "architecture for weight-only uploads, e.g. torchvision:resnet18",
            "input_shape": "e.g. 1,3,224,224; fills dynamic dimensions",
            "name": "display name",
        }
    ),
)
async def upload_model(
    request: Request,
    tenant: Tenant,
    settings: SettingsDep,
    store: Store,
    inspector: InspectorDep,
    metrics: MetricsDep,
) -> ModelOut | JSONResponse:
    """Stream the file to disk, inspect it in a child process, then store it. A file the
    tenant already uploaded (and did not delete) answers that model with 200."""
    model_id = ids.new_id(ids.MODEL)
    tmp = settings.data_dir / "tmp" / f"{model_id}.upload"
    factory = request.app.state.sessionmaker
    pool = request.app.state.pools.uploads
    async with received_upload(
        request,
        tenant,
        settings,
        tmp,
        max_file_bytes=settings.max_model_bytes,
        fields={"arch", "input_shape", "name"},
    ) as saved:
        arch = parse_arch(saved.fields.get("arch"))
        input_shape = parse_input_shape(saved.fields.get("input_shape"))
        earlier = await run_in(pool, same_file_uploads, factory, Model, tenant, saved.sha256)
        if (same := _same_model(earlier, arch, input_shape)) is not None:
            metrics.upload_bytes.labels(kind="model").inc(saved.size_bytes)
            return JSONResponse(ModelOut.from_row(same).model_dump(mode="json"), status_code=200)
        info = await inspector.model(tmp, tenant=tenant, arch=arch, input_shape=input_shape)
        row = Model(
            id=model_id,
            tenant=tenant,
            name=display_name(saved.fields.get("name"), saved.filename, model_id),
            format=info.format,
            arch=info.arch or arch,
            sha256=saved.sha256,
            size_bytes=saved.size_bytes,
            storage_key=model_key(model_id),
            input_shape=list(info.input_shape),
            inputs=[t.model_dump(mode="json") for t in info.inputs],
            outputs=[t.model_dump(mode="json") for t in info.outputs],
            stats=info.stats.model_dump(mode="json"),
            created_at=utcnow(),
        )
        await run_in(pool, store.put_file, row.storage_key, tmp, move=True)
    # The quota again, atomically: concurrent uploads each fitted the room left above.
    await run_in(pool, commit_upload_row, factory, store, row, settings.tenant_storage_quota_bytes)
    metrics.upload_bytes.labels(kind="model").inc(saved.size_bytes)
    return ModelOut.from_row(row)


def _same_model(
    earlier: list[Model], arch: str | None, input_shape: list[int] | None
) -> Model | None:
    """The first earlier upload of the file read the way this one asks: the same file with
    another architecture or input shape is another model."""
    for row in earlier:
        if (arch is None or row.arch == arch) and (
            input_shape is None or row.input_shape == input_shape
        ):
            return row
    return None


@router.get("", response_model=Page[ModelOut], summary="List models, newest first")
def list_models(
    tenant: Tenant,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[ModelOut]:
    stmt = select(Model).where(Model.tenant == tenant, Model.deleted_at.is_(None))
    rows, next_cursor = paginate(session, stmt, Model, limit, cursor)
    return Page[ModelOut](items=[ModelOut.from_row(r) for r in rows], next_cursor=next_cursor)


@router.get("/{model_id}", response_model=ModelOut, summary="One model")
def get_model(model_id: str, tenant: Tenant, session: DbSession) -> ModelOut:
    return ModelOut.from_row(find_model(session, tenant, model_id))


@router.get(
    "/{model_id}/prunability",
    response_model=PrunabilityOut,
    summary="The model's channel groups, which are protected and why, and the largest "
    "reachable MACs reduction",
)
async def get_prunability(
    model_id: str, request: Request, tenant: Tenant, inspector: InspectorDep
) -> PrunabilityOut:
    """The first request starts the analysis in the sandbox and answers `analyzing`;
    poll until `ready` (seconds for most models, at most a few minutes)."""
    pool = request.app.state.pools.uploads
    row = await run_in(pool, _find_model, request.app.state.sessionmaker, tenant, model_id)
    analyses: Analyses = request.app.state.analyses
    return PrunabilityOut.from_row(await analyses.status(row, inspector))


def _find_model(factory: sessionmaker[Session], tenant: str, model_id: str) -> Model:
    with factory(expire_on_commit=False) as session:
        return find_model(session, tenant, model_id)


@router.get(
    "/{model_id}/file",
    summary="Download the uploaded model file",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": 'the file, with `ETag: "<sha256>"`',
        },
        304: {"description": "If-None-Match matched"},
    },
)
def download_model(
    model_id: str, request: Request, tenant: Tenant, session: DbSession, store: Store
) -> Response:
    row = find_model(session, tenant, model_id)
    suffix = MODEL_SUFFIXES.get(row.format, ".bin")
    return stream_object(
        request,
        store,
        row.storage_key,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        media_type="application/octet-stream",
        filename=f"{row.id}{suffix}",
    )


@router.delete(
    "/{model_id}",
    status_code=204,
    summary="Delete a model",
    response_class=Response,
    responses=problem_responses(409),
)
def delete_model(model_id: str, tenant: Tenant, session: DbSession, store: Store) -> Response:
    """Refused (409 `model_in_use`) while a queued or running job uses the model."""
    row = find_model(session, tenant, model_id)
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.model_id == row.id, Job.status.in_(("queued", "running")))
    )
    if active:
        raise Conflict(
            f"model {model_id!r} is used by {active} unfinished job(s)", code="model_in_use"
        )
    row.deleted_at = utcnow()
    session.commit()
    store.delete(row.storage_key)
    return Response(status_code=204)
