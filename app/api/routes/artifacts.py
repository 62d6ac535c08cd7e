"""`/v1/jobs/{id}/artifacts`: the files a job produced (model.onnx, report.json, …)."""

from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from app.api.deps import DbSession, Store, Tenant
from app.api.downloads import stream_object
from app.api.lookups import find_job
from app.api.openapi import problem_responses
from app.api.schemas import ArtifactOut
from app.core.errors import ApiError, NotFound
from infra.db.models import Artifact
from infra.storage.lifecycle import is_expired

router = APIRouter(
    prefix="/v1/jobs", tags=["artifacts"], responses=problem_responses(401, 404, 422, 429)
)


def artifacts_expired(job_id: str) -> ApiError:
    """410 for a file the retention period removed (SECATEURS_ARTIFACT_RETENTION_DAYS)."""
    return ApiError(
        f"the artifacts of job {job_id!r} have expired and were removed",
        code="artifacts_expired",
        status=410,
    )


@router.get(
    "/{job_id}/artifacts", response_model=list[ArtifactOut], summary="List a job's artifacts"
)
def list_artifacts(job_id: str, tenant: Tenant, session: DbSession) -> list[ArtifactOut]:
    job = find_job(session, tenant, job_id)
    rows = session.scalars(
        select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.name)
    )
    return [ArtifactOut.from_row(r) for r in rows]


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download one artifact",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": 'the file, with `ETag: "<sha256>"`',
        },
        304: {"description": "If-None-Match matched"},
        **problem_responses(410),
    },
)
def download_artifact(
    job_id: str, name: str, request: Request, tenant: Tenant, session: DbSession, store: Store
) -> Response:
    """Streamed from the artifact store; 304 when If-None-Match names its ETag."""
    job = find_job(session, tenant, job_id)
    row = session.get(Artifact, (job.id, name))
    if row is None:
        raise NotFound(f"job {job_id!r} has no artifact {name!r}")
    if is_expired(row):
        raise artifacts_expired(job_id)
    return stream_object(
        request,
        store,
        row.storage_key,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        media_type=row.media_type,
        filename=row.name,
    )
