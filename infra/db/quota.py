"""Per-tenant storage: the bytes of a tenant's live models and datasets.

Job artifacts are not counted: a tenant cannot delete them (there is no route for it), so
counting them would fill a quota for good.
"""

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from infra.db.locks import lock_tenant
from infra.db.models import Dataset, Model


def storage_used(session: Session, tenant: str) -> int:
    """Bytes of the tenant's models and datasets that are not deleted."""
    total = 0
    for table in (Model, Dataset):
        total += int(
            session.scalar(
                select(func.coalesce(func.sum(table.size_bytes), 0)).where(
                    table.tenant == tenant, table.deleted_at.is_(None)
                )
            )
            or 0
        )
    return total


def quota_left(factory: sessionmaker[Session], tenant: str, quota_bytes: int) -> int | None:
    """Bytes the tenant may still store (at least 0); None when `quota_bytes` is 0
    (unlimited)."""
    if quota_bytes <= 0:
        return None
    with factory() as session:
        return max(0, quota_bytes - storage_used(session, tenant))


def insert_if_fits(
    factory: sessionmaker[Session], row: Model | Dataset, quota_bytes: int
) -> int | None:
    """Commit `row` unless it takes its tenant past `quota_bytes` (0 = unlimited).

    Returns None once committed, else the bytes that were left. The sum and the insert run
    under the tenant's lock, so concurrent uploads cannot each fit alone and overshoot
    together."""
    with factory() as session:
        if quota_bytes > 0:
            lock_tenant(session, row.tenant)
            left = quota_bytes - storage_used(session, row.tenant)
            if row.size_bytes > left:
                return max(0, left)
        session.add(row)
        session.commit()
    return None
