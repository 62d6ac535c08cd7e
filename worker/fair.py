"""Fair share between tenants: which queued job a worker runs next.

The broker delivers jobs in the order they were submitted, so one tenant's backlog of
long jobs would make every other tenant wait behind all of it. Instead, each delivered
message is a turn to run one queued job, its own by default: when it arrives, the worker
runs the queued job that fair share puts first. Tenants are ordered by how many jobs they
have running (fewest first), then by when they last had a job started (longest ago
first, never before all), and within a tenant the oldest job goes first. A message whose
own job was already run in an earlier turn runs the next job instead, so every queued job
still has exactly one turn waiting for it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from infra.db.models import Job, utcnow
from worker.claim import aware

# Jobs considered per turn: the oldest queued ones (a turn must stay cheap on a long queue).
WINDOW = 500
# How far back "when a tenant last had a job started" looks.
MEMORY = timedelta(days=1)
_NEVER = datetime.min.replace(tzinfo=utcnow().tzinfo)


def queued_in_fair_order(session: Session) -> list[str]:
    """The ids of queued jobs (up to WINDOW, oldest first), in the order to run them."""
    queued = session.execute(
        select(Job.id, Job.tenant, Job.created_at)
        .where(Job.status == "queued", Job.cancel_requested.is_(False))
        .order_by(Job.created_at, Job.id)
        .limit(WINDOW)
    ).all()
    if not queued:
        return []
    running = dict(
        session.execute(
            select(Job.tenant, func.count()).where(Job.status == "running").group_by(Job.tenant)
        ).all()
    )
    last_start = dict(
        session.execute(
            select(Job.tenant, func.max(Job.started_at))
            .where(Job.started_at.is_not(None), Job.started_at > utcnow() - MEMORY)
            .group_by(Job.tenant)
        ).all()
    )
    # Within a tenant the oldest first; a tenant's later jobs queue behind its first, as
    # if it had one more running.
    seen: dict[str, int] = {}
    ranked = []
    for job_id, tenant, created in queued:
        position = seen.get(tenant, 0)
        seen[tenant] = position + 1
        started = aware(last_start.get(tenant)) or _NEVER
        ranked.append(((running.get(tenant, 0) + position, started, aware(created)), job_id))
    ranked.sort(key=lambda item: item[0])
    return [job_id for _, job_id in ranked]
