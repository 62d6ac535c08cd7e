"""Request and response bodies of the HTTP API (the OpenAPI schema is built from these)."""

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from app.db.models import Artifact, Dataset, Job, Model, ModelAnalysis
from app.webhooks import check_submitted_url
from contract import JobSpec, ModelStats, TensorInfo
from contract.model_info import Prunability
from contract.spec import require_dataset_for_budget


def as_utc(value: datetime) -> datetime:
    """Datetimes read back from SQLite are naive; everything the store writes is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    """`2026-11-27T10:00:00.123456Z`."""
    return as_utc(value).isoformat().replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Id = Annotated[str, Field(min_length=1, max_length=64)]
T = TypeVar("T")


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable snake_case `code`."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, str]] | None = None


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class ModelOut(BaseModel):
    id: str
    name: str
    format: str
    sha256: str
    size_bytes: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    stats: ModelStats
    arch: str | None = None
    input_shape: list[int]
    created_at: Timestamp

    @classmethod
    def from_row(cls, row: Model) -> "ModelOut":
        return cls(
            id=row.id, name=row.name, format=row.format, sha256=row.sha256,
            size_bytes=row.size_bytes, inputs=row.inputs, outputs=row.outputs,
            stats=ModelStats.model_validate(row.stats), arch=row.arch,
            input_shape=row.input_shape,
            created_at=row.created_at,
        )


class DatasetOut(BaseModel):
    id: str
    name: str
    format: Literal["npz", "imagefolder"]
    num_samples: int
    sample_shape: list[int]
    num_classes: int | None = None
    labeled: bool
    sha256: str
    size_bytes: int
    created_at: Timestamp

    @classmethod
    def from_row(cls, row: Dataset) -> "DatasetOut":
        return cls(
            id=row.id, name=row.name, format=row.format,  # type: ignore[arg-type]
            num_samples=row.num_samples, sample_shape=row.sample_shape,
            num_classes=row.num_classes, labeled=row.labeled, sha256=row.sha256,
            size_bytes=row.size_bytes, created_at=row.created_at,
        )


class JobCreate(JobSpec):
    """The body of `POST /v1/jobs`: the ids plus every `JobSpec` field (all defaulted).

    Unknown fields are refused (`extra="forbid"`, inherited from the contract)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model_id": "mdl_0123456789abcdefghij", "dataset_id": "ds_0123456789abcdefghij",
         "prune": {"method": "l2", "target": {"macs_reduction": 0.5}},
         "finetune": {"epochs": 5, "lr": 0.01, "distill": True}},
        {"model_id": "mdl_0123456789abcdefghij", "prune": {"target": {"channel_ratio": 0.3}},
         "finetune": None},
    ]})

    model_id: Id
    dataset_id: Id | None = None

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_reachable(cls, url: str | None) -> str | None:
        # Here, not in JobSpec: only a submission is checked against the address policy
        # (a stored spec is read again as it was accepted; deliveries check once more).
        if url is not None:
            check_submitted_url(url)
        return url

    @model_validator(mode="after")
    def _budget_needs_dataset(self) -> "JobCreate":
        require_dataset_for_budget(self.accuracy_budget, self.dataset_id is not None)
        return self

    def spec(self) -> JobSpec:
        """The job specification alone, fully defaulted."""
        return JobSpec.model_validate(self.model_dump(exclude={"model_id", "dataset_id"}))


class JobErrorOut(BaseModel):
    code: str
    message: str


class PrunabilityOut(BaseModel):
    """`analyzing` until the sandboxed analysis is done; then `ready` with the report, or
    `failed` with the reason (the same codes a job's analysis would give)."""

    model_config = ConfigDict(protected_namespaces=())
    model_id: str
    status: Literal["analyzing", "ready", "failed"]
    prunability: Prunability | None = None
    error: JobErrorOut | None = None

    @classmethod
    def from_row(cls, row: ModelAnalysis) -> "PrunabilityOut":
        error = None
        if row.status == "failed":
            error = JobErrorOut(code=row.error_code or "analysis_failed",
                                message=row.error_message or "the analysis failed")
        return cls(model_id=row.model_id, status=row.status,  # type: ignore[arg-type]
                   prunability=Prunability.model_validate(row.result) if row.result else None,
                   error=error)


class JobOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: JobStatus
    stage: str | None = None
    progress: float
    attempts: int
    model_id: str
    dataset_id: str | None = None
    spec: JobSpec
    error: JobErrorOut | None = None
    cancel_requested: bool = False
    created_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    stage_times: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Job) -> "JobOut":
        error = (
            JobErrorOut(code=row.error_code, message=row.error_message or "")
            if row.error_code else None
        )
        return cls(
            id=row.id, status=row.status, stage=row.stage,  # type: ignore[arg-type]
            progress=row.progress or 0.0, attempts=row.attempts or 0, model_id=row.model_id,
            dataset_id=row.dataset_id, spec=JobSpec.model_validate(row.spec), error=error,
            cancel_requested=bool(row.cancel_requested), created_at=row.created_at,
            started_at=row.started_at, finished_at=row.finished_at,
            stage_times=row.stage_times or {},
        )


class ArtifactOut(BaseModel):
    name: str
    size_bytes: int
    sha256: str
    media_type: str

    @classmethod
    def from_row(cls, row: Artifact) -> "ArtifactOut":
        return cls(name=row.name, size_bytes=row.size_bytes, sha256=row.sha256,
                   media_type=row.media_type)


class Health(BaseModel):
    status: str
