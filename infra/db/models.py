"""The job store: SQLAlchemy models. The job row is the source of truth for a job's state.

Shared by the API (writes uploads and jobs, reads everything) and the worker (writes a
job's stage, progress, events, artifacts and final status). No torch here.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates

from contract import JobStatus
from infra.db.summary import summarize_report

# Longest job name and tag, and most tags on one job (the API validates against these).
JOB_NAME_MAX = 100
JOB_TAG_MAX = 32
JOB_TAGS_MAX = 10


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)  # sha256 hex of the key
    label: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # mdl_…
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(32))
    arch: Mapped[str | None] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(512))
    input_shape: Mapped[list[Any]] = mapped_column(JSON)  # concrete, batch 1
    inputs: Mapped[list[Any]] = mapped_column(JSON)
    outputs: Mapped[list[Any]] = mapped_column(JSON)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Soft delete: finished jobs keep referring to the row (a foreign key), the file goes.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ds_…
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(512))
    num_samples: Mapped[int] = mapped_column(Integer)
    sample_shape: Mapped[list[Any]] = mapped_column(JSON)
    num_classes: Mapped[int | None] = mapped_column(Integer)
    labeled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idem"),
        Index("ix_jobs_tenant_created", "tenant", "created_at"),
        Index("ix_jobs_status", "status"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # job_…
    tenant: Mapped[str] = mapped_column(String(128))
    model_id: Mapped[str] = mapped_column(String(64), ForeignKey("models.id"))
    dataset_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("datasets.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # contract.JobSpec, fully defaulted
    # queued | running | succeeded | failed | cancelled
    status: Mapped[JobStatus] = mapped_column(String(16), default="queued")
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(256))  # hostname of the last runner
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The report's headline figures (infra.db.summary), kept with the report by `_summarize`:
    # lists and status reads show them without loading the report.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # A display name and labels, set at submission and changed by PATCH; not in the spec.
    name: Mapped[str | None] = mapped_column(String(JOB_NAME_MAX))
    tags: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), default=list)
    # stage -> {"started_at": iso, "finished_at": iso | null}, for the dashboard timeline
    stage_times: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    @validates("report")
    def _summarize(self, _key: str, report: dict[str, Any] | None) -> dict[str, Any] | None:
        # Wherever the report is written (the worker's success, a test's row), its summary
        # is written with it, in the same transaction.
        self.result = summarize_report(report)
        return report


class JobEvent(Base):
    """Append-only event log behind `GET /v1/jobs/{id}/events`; `id` is the SSE event id."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # progress | status
    # progress: {"stage", "progress"}; status: {"status", "stage", "progress", "error"}
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)  # model.onnx, report.json…
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(128))
    storage_key: Mapped[str] = mapped_column(String(512))


class ModelAnalysis(Base):
    """A model's prunability report (`GET /v1/models/{id}/prunability`), made on demand by
    a sandboxed analysis; a table of its own, so older databases gain it at start-up."""

    __tablename__ = "model_analyses"
    model_id: Mapped[str] = mapped_column(String(64), ForeignKey("models.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # analyzing | ready | failed
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(1024))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class WebhookSecret(Base):
    """A tenant's webhook signing secret (`whsec_…`). Kept as it is, not hashed: every
    delivery is signed with it."""

    __tablename__ = "webhook_secrets"
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookEvent(Base):
    """One event to deliver to a job's webhook_url, written with the job's terminal status
    (an outbox row). Its id is the `webhook-id` that every attempt sends again, and its
    body is stored as sent, so each retry signs and sends the same bytes."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_due", "status", "next_attempt_at"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # msg_…
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id"), index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))  # job.succeeded | job.failed | job.cancelled
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the next attempt is due; moved ahead while a worker holds the event (a lease).
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    """One attempt at delivering an event: the delivery log of `GET /v1/jobs/{id}/deliveries`."""

    __tablename__ = "webhook_attempts"
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(64), ForeignKey("webhook_events.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(512))
    # The start of the receiver's answer, for debugging; never more.
    response_prefix: Mapped[str | None] = mapped_column(String(256))
