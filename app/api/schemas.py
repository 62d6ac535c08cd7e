"""Request and response bodies of the HTTP API (the OpenAPI schema is built from these)."""

import re
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

from app.api.webhook_urls import check_submitted_url
from contract import JobSpec, JobStatus, ModelStats, TensorInfo
from contract.model_info import Prunability
from contract.spec import require_dataset_for_budget
from infra.db.models import (
    JOB_NAME_MAX,
    JOB_TAG_MAX,
    JOB_TAGS_MAX,
    Artifact,
    Dataset,
    Job,
    Model,
    ModelAnalysis,
)


def as_utc(value: datetime) -> datetime:
    """Datetimes read back from SQLite are naive; everything the store writes is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    """`2026-11-27T10:00:00.123456Z`."""
    return as_utc(value).isoformat().replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]
Id = Annotated[str, Field(min_length=1, max_length=64)]
T = TypeVar("T")
# A docstring under a field is its description in the OpenAPI document.
_DOCUMENTED = ConfigDict(use_attribute_docstrings=True)


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable snake_case `code`."""

    model_config = _DOCUMENTED

    type: str
    """A URI naming the kind of problem (`https://secateurs.dev/problems/<code>`); match
    on `code` rather than on this."""
    title: str
    """The HTTP status phrase (e.g. `Unprocessable Entity`)."""
    status: int
    """The HTTP status code, the same as the response's."""
    detail: str
    """What went wrong in this request, in words, for a person to read."""
    code: str
    """A stable snake_case code saying what went wrong (the document lists them)."""
    errors: list[dict[str, str]] | None = None
    """`validation_error` only: every invalid field, each as `{"field": "prune.target",
    "message": "..."}` (`field` is the dotted path in the body, query or path)."""


class Page(BaseModel, Generic[T]):
    model_config = _DOCUMENTED

    items: list[T]
    """This page, newest first (at most `limit` items)."""
    next_cursor: str | None = None
    """Pass as `cursor` to get the next page; null on the last page."""


class ModelOut(BaseModel):
    model_config = _DOCUMENTED

    id: str
    """The model's id (`mdl_…`), for `model_id` in a job."""
    name: str
    """Display name: the upload's `name` field, else its file name."""
    format: str
    """How the model is stored: `onnx`, `pt2`, `safetensors` or `state_dict`."""
    sha256: str
    """SHA-256 of the uploaded file, lowercase hex; uploading the same file again answers
    this model."""
    size_bytes: int
    """Size of the uploaded file, bytes."""
    inputs: list[TensorInfo]
    """The model's inputs, in call order."""
    outputs: list[TensorInfo]
    """The model's outputs, in order."""
    stats: ModelStats
    """Parameters and MACs (batch 1) of the model as uploaded."""
    arch: str | None = None
    """The architecture a weights-only upload is rebuilt from (e.g.
    `torchvision:resnet18`); null for ONNX and `.pt2`."""
    input_shape: list[int]
    """The concrete input shape jobs run the model with (batch 1, dynamic dimensions
    filled in)."""
    created_at: Timestamp
    """When it was uploaded (RFC 3339, UTC)."""

    @classmethod
    def from_row(cls, row: Model) -> "ModelOut":
        return cls(
            id=row.id,
            name=row.name,
            format=row.format,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            inputs=row.inputs,
            outputs=row.outputs,
            stats=ModelStats.model_validate(row.stats),
            arch=row.arch,
            input_shape=row.input_shape,
            created_at=row.created_at,
        )


class DatasetOut(BaseModel):
    model_config = _DOCUMENTED

    id: str
    """The dataset's id (`ds_…`), for `dataset_id` in a job."""
    name: str
    """Display name: the upload's `name` field, else its file name."""
    format: Literal["npz", "imagefolder"]
    """`npz` (arrays `x`, optional `y`, `mean`, `std`) or `imagefolder` (a `.zip` of
    `class_name/*.png` folders)."""
    num_samples: int
    """Samples in the upload; a job holds part of them back to measure accuracy."""
    sample_shape: list[int]
    """Shape of one sample, without the batch dimension."""
    num_classes: int | None = None
    """Distinct labels; null without labels."""
    labeled: bool
    """Whether samples carry labels: with them jobs measure accuracy, without them only
    agreement with the original."""
    sha256: str
    """SHA-256 of the uploaded file, lowercase hex; uploading the same file again answers
    this dataset."""
    size_bytes: int
    """Size of the uploaded file, bytes."""
    created_at: Timestamp
    """When it was uploaded (RFC 3339, UTC)."""

    @classmethod
    def from_row(cls, row: Dataset) -> "DatasetOut":
        return cls(
            id=row.id,
            name=row.name,
            format=row.format,  # type: ignore[arg-type]
            num_samples=row.num_samples,
            sample_shape=row.sample_shape,
            num_classes=row.num_classes,
            labeled=row.labeled,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            created_at=row.created_at,
        )


# A tag: letters, digits and `_ . : / = + -`, starting with a letter or digit.
_TAG = re.compile(r"\w[\w.:/=+-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_name(name: str | None) -> str | None:
    """A job name trimmed; blank becomes null. Refuses control characters."""
    if name is None:
        return None
    name = name.strip()
    if _CONTROL.search(name):
        raise ValueError("a job name cannot contain control characters (newlines, tabs)")
    if len(name) > JOB_NAME_MAX:
        raise ValueError(f"a job name has at most {JOB_NAME_MAX} characters, not {len(name)}")
    return name or None


def clean_tags(tags: list[str] | None) -> list[str]:
    """Tags trimmed, each checked, duplicates dropped (first kept); null becomes none."""
    out: list[str] = []
    for raw in tags or []:
        tag = raw.strip()
        if not tag:
            raise ValueError("a tag cannot be empty")
        if len(tag) > JOB_TAG_MAX:
            raise ValueError(f"a tag has at most {JOB_TAG_MAX} characters: {tag[:40]!r}")
        if not _TAG.fullmatch(tag):
            raise ValueError(
                f"tag {tag!r}: letters, digits and _ . : / = + - only, starting "
                "with a letter or digit"
            )
        if tag not in out:
            out.append(tag)
    if len(out) > JOB_TAGS_MAX:
        raise ValueError(f"a job has at most {JOB_TAGS_MAX} tags, not {len(out)}")
    return out


_NAME_DOC = (
    f"A short display name (at most {JOB_NAME_MAX} characters, trimmed; blank means "
    "none). Not unique; `GET /v1/jobs?q=` finds jobs by part of it."
)
_TAGS_DOC = (
    f"Labels to group and find jobs by (`GET /v1/jobs?tag=`): at most {JOB_TAGS_MAX}, "
    f"each 1-{JOB_TAG_MAX} characters of letters, digits and `_ . : / = + -`, "
    "starting with a letter or digit; trimmed, duplicates dropped, case kept."
)


class JobCreate(JobSpec):
    """The body of `POST /v1/jobs`: the ids plus every `JobSpec` field (all defaulted).

    Unknown fields are refused (`extra="forbid"`, inherited from the contract)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_id": "mdl_0123456789abcdefghij",
                    "dataset_id": "ds_0123456789abcdefghij",
                    "prune": {"method": "l2", "target": {"macs_reduction": 0.5}},
                    "finetune": {"epochs": 5, "lr": 0.01, "distill": True},
                },
                {
                    "model_id": "mdl_0123456789abcdefghij",
                    "prune": {"target": {"channel_ratio": 0.3}},
                    "finetune": None,
                },
            ]
        }
    )

    model_id: Id
    """The model to prune (`mdl_…`, from `POST /v1/models`)."""
    dataset_id: Id | None = None
    """Training data (`ds_…`, from `POST /v1/datasets`) for fine-tuning, accuracy and
    budgets; null prunes data-free (agreement measured on synthetic inputs)."""
    name: str | None = Field(default=None, max_length=4 * JOB_NAME_MAX, description=_NAME_DOC)
    tags: list[str] | None = Field(
        default=None, max_length=4 * JOB_TAGS_MAX, description=_TAGS_DOC + " Null or absent: none."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        return clean_name(name)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str] | None) -> list[str]:
        return clean_tags(tags)

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
        return JobSpec.model_validate(
            self.model_dump(exclude={"model_id", "dataset_id", "name", "tags"})
        )


class JobUpdate(BaseModel):
    """The body of `PATCH /v1/jobs/{id}`: the fields to change, the others left as they
    are (`{"name": null}` removes the name, `{"tags": []}` every tag)."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        json_schema_extra={"examples": [{"name": "resnet18, half the MACs", "tags": ["baseline"]}]},
    )

    name: str | None = Field(default=None, max_length=4 * JOB_NAME_MAX, description=_NAME_DOC)
    tags: list[str] | None = Field(
        default=None,
        max_length=4 * JOB_TAGS_MAX,
        description=_TAGS_DOC + " Null removes every tag.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        return clean_name(name)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str] | None) -> list[str]:
        return clean_tags(tags)


class JobResult(BaseModel):
    """A succeeded job's headline figures, taken from its report when it succeeded (the
    report has the rest). A figure the report lacks is null."""

    model_config = _DOCUMENTED

    macs_reduction: float | None = None
    """Share of the original's MACs removed, a fraction 0-1 (0.75 = three quarters)."""
    params_reduction: float | None = None
    """Share of the original's parameters removed, a fraction 0-1."""
    speedup: float | None = None
    """Original p50 ÷ pruned p50 latency at batch 1 (the report's
    `ratios.latency_speedup`); null when batch 1 was not timed."""
    accuracy_change: float | None = None
    """Held-back top-1 accuracy of the pruned model minus the original's, a fraction
    (-0.007 = 0.7 points lost); null without a labeled dataset."""
    agreement: float | None = None
    """Top-1 agreement of the pruned model with the original, a fraction 0-1 (the report's
    `fidelity.top1_agreement`); null when the output is not class scores."""
    size_bytes: int | None = None
    """Size of `model.onnx`, bytes: the INT8 model's when `int8`, else the pruned float
    model's."""
    int8: bool = False
    """Whether `model.onnx` is the INT8 model (quantization asked for and applied)."""
    warnings: int = 0
    """How many warnings the report carries (see its `warnings`); 0 when none."""


class JobErrorOut(BaseModel):
    model_config = _DOCUMENTED

    code: str
    """Stable snake_case reason (e.g. `target_unreachable`, `worker_crashed`,
    `cancelled`)."""
    message: str
    """What happened and what to change, in words."""


class PrunabilityOut(BaseModel):
    """`analyzing` until the sandboxed analysis is done; then `ready` with the report, or
    `failed` with the reason (the same codes a job's analysis would give)."""

    model_config = ConfigDict(protected_namespaces=(), use_attribute_docstrings=True)
    model_id: str
    """The model analysed."""
    status: Literal["analyzing", "ready", "failed"]
    """`analyzing` (ask again later), `ready` (see `prunability`) or `failed` (see
    `error`)."""
    prunability: Prunability | None = None
    """The analysis, once `ready`; else null."""
    error: JobErrorOut | None = None
    """Why the analysis failed, once `failed`; else null."""

    @classmethod
    def from_row(cls, row: ModelAnalysis) -> "PrunabilityOut":
        error = None
        if row.status == "failed":
            error = JobErrorOut(
                code=row.error_code or "analysis_failed",
                message=row.error_message or "the analysis failed",
            )
        return cls(
            model_id=row.model_id,
            status=row.status,  # type: ignore[arg-type]
            prunability=Prunability.model_validate(row.result) if row.result else None,
            error=error,
        )


class JobOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), use_attribute_docstrings=True)

    id: str
    """The job's id (`job_…`)."""
    status: JobStatus
    """`queued`, `running`, then one of `succeeded`, `failed`, `cancelled` (final)."""
    stage: str | None = None
    """The stage running or last run: `loading`, `analyzing`, `regularizing`, `pruning`,
    `finetuning`, `evaluating`, `exporting`, `quantizing`, `benchmarking`; null before
    the job starts. Stages a job does not need are skipped."""
    progress: float
    """Progress of the whole job, a fraction 0-1 that never goes back (stages weighted
    by their usual share of the time, so not a time estimate)."""
    attempts: int
    """Runs started: above 1 when a worker died and the job was run again; it fails with
    `worker_crashed` after the service's limit (`SECATEURS_MAX_ATTEMPTS`, default 3)."""
    model_id: str
    """The model pruned."""
    dataset_id: str | None = None
    """The dataset used; null for a data-free job."""
    spec: JobSpec
    """The job specification as accepted, every default filled in."""
    error: JobErrorOut | None = None
    """Why the job failed or was cancelled; null otherwise."""
    cancel_requested: bool = False
    """A cancellation was asked for; a running job stops at its next check."""
    created_at: Timestamp
    """When the job was submitted (RFC 3339, UTC)."""
    started_at: Timestamp | None = None
    """When a worker first started it; null while queued."""
    finished_at: Timestamp | None = None
    """When it reached a final status; null until then."""
    stage_times: dict[str, Any] = Field(default_factory=dict)
    """Stage name -> `{"started_at", "finished_at"}` (ISO 8601, UTC; `finished_at` null
    while the stage runs), for the stages entered so far."""
    name: str | None = None
    """The job's display name; null when it has none. Set at submission or by `PATCH`."""
    tags: list[str] = Field(default_factory=list)
    """The job's tags, in the order given; empty when none. Set at submission or by
    `PATCH`."""
    result: JobResult | None = None
    """A succeeded job's headline figures from its report; null until it succeeds (and
    for jobs that finished before the service kept them)."""

    @classmethod
    def from_row(cls, row: Job) -> "JobOut":
        error = (
            JobErrorOut(code=row.error_code, message=row.error_message or "")
            if row.error_code
            else None
        )
        return cls(
            id=row.id,
            status=row.status,
            stage=row.stage,  # type: ignore[arg-type]
            progress=row.progress or 0.0,
            attempts=row.attempts or 0,
            model_id=row.model_id,
            dataset_id=row.dataset_id,
            spec=JobSpec.model_validate(row.spec),
            error=error,
            cancel_requested=bool(row.cancel_requested),
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            stage_times=row.stage_times or {},
            name=row.name,
            tags=row.tags or [],
            result=JobResult.model_validate(row.result) if row.result else None,
        )


class ArtifactOut(BaseModel):
    model_config = _DOCUMENTED

    name: str
    """File name, to download at `/v1/jobs/{id}/artifacts/{name}` (e.g. `model.onnx`,
    `report.json`)."""
    size_bytes: int
    """File size, bytes."""
    sha256: str
    """SHA-256 of the file, lowercase hex: check the download against it."""
    media_type: str
    """The Content-Type it is served with."""

    @classmethod
    def from_row(cls, row: Artifact) -> "ArtifactOut":
        return cls(
            name=row.name, size_bytes=row.size_bytes, sha256=row.sha256, media_type=row.media_type
        )


class Health(BaseModel):
    model_config = _DOCUMENTED

    status: str
    """`ok` from `/healthz` (the process answers), `ready` from `/readyz` (job store,
    broker and artifact store reachable, room on the data disk; else a 503 problem)."""
