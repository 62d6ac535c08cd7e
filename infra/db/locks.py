"""A per-tenant write lock for the checks that count rows before inserting one.

"Count the tenant's active jobs, then insert one" (the concurrent-job cap) and "sum the
tenant's stored bytes, then insert an upload" (the storage quota) are only correct when
no other request of that tenant runs the same pair in between; with plain transactions,
concurrent submits all counted the same rows and all inserted.
"""

import hashlib

from sqlalchemy import text
from sqlalchemy.orm import Session


def _lock_id(tenant: str) -> int:
    digest = hashlib.sha256(b"secateurs-tenant:" + tenant.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)  # PostgreSQL's bigint


def lock_tenant(session: Session, tenant: str) -> None:
    """Hold the tenant's write lock until `session`'s transaction ends (commit/rollback).

    PostgreSQL: a transaction-scoped advisory lock on a hash of the tenant, so other
    tenants never wait. SQLite: `BEGIN IMMEDIATE`, its one database-wide write lock,
    held for the few milliseconds of a count and an insert, across processes; it must
    open the transaction, so call this before the session's first write."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _lock_id(tenant)})
    elif dialect == "sqlite":
        connection = session.connection()
        if connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
            raise RuntimeError("lock_tenant must come before the transaction's first write")
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        raise NotImplementedError(f"no tenant lock for {dialect}")
