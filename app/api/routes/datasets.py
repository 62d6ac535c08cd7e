"""`/v1/datasets`: upload, list, read and delete datasets."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from app.api.deps import DbSession, InspectorDep, MetricsDep, SettingsDep, Store, Tenant
from app.api.lookups import find_dataset
from app.api.openapi import multipart_body, problem_responses
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.api.schemas import DatasetOut, Page
from app.api.uploads_common import display_name, received_upload, same_file_uploads
from app.core.errors import Conflict
from app.core.pools import run_in
from app.uploads import commit_upload_row
from infra import ids
from infra.db.models import Dataset, Job, utcnow
from infra.storage import dataset_key

router = APIRouter(
    prefix="/v1/datasets", tags=["datasets"], responses=problem_responses(401, 404, 422, 429)
)


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload a dataset (.npz or a zipped image folder)",
    responses={
        200: {
            "model": DatasetOut,
            "description": "the tenant uploaded this file (the "
            "same SHA-256) before: that dataset, stored once",
        },
        **problem_responses(400, 408, 413, 415, 507),
    },
    openapi_extra=multipart_body({"name": "display name"}),
)
async def upload_dataset(
    request: Request,
    tenant: Tenant,
    settings: SettingsDep,
    store: Store,
    inspector: InspectorDep,
    metrics: MetricsDep,
) -> DatasetOut | JSONResponse:
    """Stream the file to disk, check it in a child process, then store it. A file the
    tenant already uploaded (and did not delete) answers that dataset with 200."""
    dataset_id = ids.new_id(ids.DATASET)
    tmp = settings.data_dir / "tmp" / f"{dataset_id}.upload"
    factory = request.app.state.sessionmaker
    pool = request.app.state.pools.uploads
    async with received_upload(
        request, tenant, settings, tmp, max_file_bytes=settings.max_dataset_bytes, fields={"name"}
    ) as saved:
        earlier = await run_in(pool, same_file_uploads, factory, Dataset, tenant, saved.sha256)
        if earlier:
            metrics.upload_bytes.labels(kind="dataset").inc(saved.size_bytes)
            return JSONResponse(
                DatasetOut.from_row(earlier[0]).model_dump(mode="json"), status_code=200
            )
        info = await inspector.dataset(tmp, tenant=tenant)
        row = Dataset(
            id=dataset_id,
            tenant=tenant,
            name=display_name(saved.fields.get("name"), saved.filename, dataset_id),
            format=info.format,
            sha256=saved.sha256,
            size_bytes=saved.size_bytes,
            storage_key=dataset_key(dataset_id),
            num_samples=info.num_samples,
            sample_shape=list(info.sample_shape),
            num_classes=info.num_classes,
            labeled=info.labeled,
            created_at=utcnow(),
        )
        await run_in(pool, store.put_file, row.storage_key, tmp, move=True)
    # The quota again, atomically: concurrent uploads each fitted the room left above.
    await run_in(pool, commit_upload_row, factory, store, row, settings.tenant_storage_quota_bytes)
    metrics.upload_bytes.labels(kind="dataset").inc(saved.size_bytes)
    return DatasetOut.from_row(row)


@router.get("", response_model=Page[DatasetOut], summary="List datasets, newest first")
def list_datasets(
    tenant: Tenant,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[DatasetOut]:
    stmt = select(Dataset).where(Dataset.tenant == tenant, Dataset.deleted_at.is_(None))
    rows, next_cursor = paginate(session, stmt, Dataset, limit, cursor)
    return Page[DatasetOut](items=[DatasetOut.from_row(r) for r in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetOut, summary="One dataset")
def get_dataset(dataset_id: str, tenant: Tenant, session: DbSession) -> DatasetOut:
    return DatasetOut.from_row(find_dataset(session, tenant, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Delete a dataset",
    response_class=Response,
    responses=problem_responses(409),
)
def delete_dataset(dataset_id: str, tenant: Tenant, session: DbSession, store: Store) -> Response:
    """Refused (409 `dataset_in_use`) while a queued or running job uses the dataset."""
    row = find_dataset(session, tenant, dataset_id)
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.dataset_id == row.id, Job.status.in_(("queued", "running")))
    )
    if active:
        raise Conflict(
            f"dataset {dataset_id!r} is used by {active} unfinished job(s)", code="dataset_in_use"
        )
    row.deleted_at = utcnow()
    session.commit()
    store.delete(row.storage_key)
    return Response(status_code=204)
