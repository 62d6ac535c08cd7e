"""Tenant-scoped lookups. Another tenant's id is indistinguishable from an unknown one."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import NotFound
from infra.db.models import Dataset, Job, Model


def find_model(session: Session, tenant: str, model_id: str) -> Model:
    row = session.scalar(
        select(Model).where(
            Model.id == model_id, Model.tenant == tenant, Model.deleted_at.is_(None)
        )
    )
    if row is None:
        raise NotFound(f"model {model_id!r} not found")
    return row


def find_dataset(session: Session, tenant: str, dataset_id: str) -> Dataset:
    row = session.scalar(
        select(Dataset).where(
            Dataset.id == dataset_id, Dataset.tenant == tenant, Dataset.deleted_at.is_(None)
        )
    )
    if row is None:
        raise NotFound(f"dataset {dataset_id!r} not found")
    return row


def find_job(session: Session, tenant: str, job_id: str) -> Job:
    row = session.scalar(select(Job).where(Job.id == job_id, Job.tenant == tenant))
    if row is None:
        raise NotFound(f"job {job_id!r} not found")
    return row
