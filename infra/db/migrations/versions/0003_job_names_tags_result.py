"""Jobs gain a display name, tags, and a result summary (filled in for succeeded jobs from
their reports).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Reports are large: read a few at a time.
_BATCH = 20


def upgrade() -> None:
    op.add_column("jobs", sa.Column("result", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("jobs", sa.Column("name", sa.String(100), nullable=True))
    op.add_column("jobs", sa.Column("tags", sa.JSON(none_as_null=True), nullable=True))
    _fill_results(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("tags")
        batch.drop_column("name")
        batch.drop_column("result")


def _fill_results(bind: sa.Connection) -> None:
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("status", sa.String),
        sa.column("report", sa.JSON),
        sa.column("result", sa.JSON),
    )
    ids = (
        bind.execute(
            sa.select(jobs.c.id).where(jobs.c.status == "succeeded", jobs.c.report.is_not(None))
        )
        .scalars()
        .all()
    )
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start : start + _BATCH]
        rows = bind.execute(sa.select(jobs.c.id, jobs.c.report).where(jobs.c.id.in_(chunk)))
        for job_id, report in rows.all():
            result = _summary(report)
            if result is not None:
                bind.execute(sa.update(jobs).where(jobs.c.id == job_id).values(result=result))


# The summary as infra.db.summary wrote it when this revision was made: frozen here, so
# that a later change there cannot change what this revision does.
def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _reduction(before: Any, after: Any) -> float | None:
    b, a = _number(before), _number(after)
    return None if b is None or a is None or b <= 0 else 1.0 - a / b


def _summary(report: Any) -> dict[str, Any] | None:
    if not isinstance(report, dict):
        return None
    original = report.get("original") or {}
    pruned = report.get("pruned") or {}
    quantization = report.get("quantization") or {}
    acc_before, acc_after = _number(original.get("accuracy")), _number(pruned.get("accuracy"))
    int8_size = _number((quantization.get("size_bytes") or {}).get("int8"))
    int8 = bool(quantization.get("applied")) and int8_size is not None
    size = int8_size if int8 else _number(pruned.get("size_bytes"))
    warnings = report.get("warnings")
    return {
        "macs_reduction": _reduction(original.get("macs"), pruned.get("macs")),
        "params_reduction": _reduction(original.get("params"), pruned.get("params")),
        "speedup": _number((report.get("ratios") or {}).get("latency_speedup")),
        "accuracy_change": (
            acc_after - acc_before if acc_before is not None and acc_after is not None else None
        ),
        "agreement": _number((report.get("fidelity") or {}).get("top1_agreement")),
        "size_bytes": int(size) if size is not None else None,
        "int8": int8,
        "warnings": len(warnings) if isinstance(warnings, list) else 0,
    }
