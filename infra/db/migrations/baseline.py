"""The job store's schema as `create_all` made it before migrations: revision 0001's tables.

A frozen copy, not `infra.db.models`: the models move on with each revision, while this
must stay what databases created before migrations hold, so that such a database can be
recognised (compared with this) and stamped at 0001 instead of created again.
"""

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)


def _at(name: str, nullable: bool = False) -> Column[Any]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def build() -> MetaData:
    """A fresh MetaData holding the 0001 tables (fresh, so that no caller's changes stick)."""
    metadata = MetaData()
    Table(
        "api_keys",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("tenant", String(128), nullable=False, index=True),
        Column("key_hash", String(128), nullable=False, unique=True),
        Column("label", String(256)),
        _at("created_at"),
    )
    Table(
        "models",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("tenant", String(128), nullable=False, index=True),
        Column("name", String(256), nullable=False),
        Column("format", String(32), nullable=False),
        Column("arch", String(256)),
        Column("sha256", String(64), nullable=False),
        Column("size_bytes", BigInteger, nullable=False),
        Column("storage_key", String(512), nullable=False),
        Column("input_shape", JSON, nullable=False),
        Column("inputs", JSON, nullable=False),
        Column("outputs", JSON, nullable=False),
        Column("stats", JSON, nullable=False),
        _at("created_at"),
        _at("deleted_at", nullable=True),
    )
    Table(
        "datasets",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("tenant", String(128), nullable=False, index=True),
        Column("name", String(256), nullable=False),
        Column("format", String(32), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("size_bytes", BigInteger, nullable=False),
        Column("storage_key", String(512), nullable=False),
        Column("num_samples", Integer, nullable=False),
        Column("sample_shape", JSON, nullable=False),
        Column("num_classes", Integer),
        Column("labeled", Boolean, nullable=False),
        _at("created_at"),
        _at("deleted_at", nullable=True),
    )
    Table(
        "jobs",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("tenant", String(128), nullable=False),
        Column("model_id", String(64), ForeignKey("models.id"), nullable=False),
        Column("dataset_id", String(64), ForeignKey("datasets.id")),
        Column("spec", JSON, nullable=False),
        Column("status", String(16), nullable=False),
        Column("stage", String(32)),
        Column("progress", Float, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("cancel_requested", Boolean, nullable=False),
        Column("error_code", String(64)),
        Column("error_message", Text),
        Column("idempotency_key", String(256)),
        Column("request_hash", String(64)),
        Column("worker", String(256)),
        Column("report", JSON),
        Column("stage_times", JSON, nullable=False),
        _at("created_at"),
        _at("started_at", nullable=True),
        _at("finished_at", nullable=True),
        _at("updated_at"),
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idem"),
        Index("ix_jobs_tenant_created", "tenant", "created_at"),
        Index("ix_jobs_status", "status"),
    )
    Table(
        "job_events",
        metadata,
        Column(
            "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        Column("job_id", String(64), ForeignKey("jobs.id"), nullable=False, index=True),
        Column("kind", String(16), nullable=False),
        Column("data", JSON, nullable=False),
        _at("created_at"),
    )
    Table(
        "artifacts",
        metadata,
        Column("job_id", String(64), ForeignKey("jobs.id"), primary_key=True),
        Column("name", String(128), primary_key=True),
        Column("size_bytes", BigInteger, nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("media_type", String(128), nullable=False),
        Column("storage_key", String(512), nullable=False),
    )
    Table(
        "model_analyses",
        metadata,
        Column("model_id", String(64), ForeignKey("models.id"), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("result", JSON),
        Column("error_code", String(64)),
        Column("error_message", String(1024)),
        _at("updated_at"),
    )
    return metadata
