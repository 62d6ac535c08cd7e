"""Claiming a job for one run, atomically, and telling a live run from a dead one.

A job may be delivered more than once (broker redelivery after a crash, the sweeper's
re-enqueue, a duplicate publish). Exactly one delivery wins: the claim is a single
`UPDATE … WHERE status = … AND attempts = …`, and `attempts` doubles as the version of
the row. A delivery that finds the job running elsewhere leaves it alone unless that
run is dead: its process is gone (same host) or its heartbeat is older than the lease.
"""

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from contract import TERMINAL_STATUSES
from infra.db import jobstate
from infra.db.models import Job, utcnow

LOST_RACE = "claimed by another delivery"


@dataclass(frozen=True)
class Claim:
    """The result of trying to claim a job."""

    outcome: str  # claimed | skip | busy | exhausted | timed_out | missing
    attempts: int = 0
    reason: str = ""


def this_worker() -> str:
    """Identity of the current process, stored in the job row while it runs the job."""
    return f"{socket.gethostname()}:{os.getpid()}"


def aware(moment: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes; the store only ever writes UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_is_dead(job: Job, *, lease_s: float, now: datetime | None = None) -> bool:
    """True when the run recorded in `job` can no longer be making progress."""
    now = now or utcnow()
    owner = job.worker or ""
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid():
        if not _pid_alive(int(pid)):
            return True
    seen = aware(job.updated_at) or aware(job.started_at)
    return seen is None or now - seen > timedelta(seconds=lease_s)


def _ran_for(job: Job) -> float:
    started = aware(job.started_at)
    return 0.0 if started is None else (utcnow() - started).total_seconds()


def claim_job(
    session: Session,
    job_id: str,
    *,
    worker: str,
    max_attempts: int,
    lease_s: float,
    time_limit_s: float,
) -> Claim:
    """Take `job_id` for a run by `worker`, or say why not. Commits nothing itself.

    A dead run that had already used up the time limit is not started again: the worker
    that killed it at the hard limit would only kill the next run too.
    """
    job = session.get(Job, job_id)
    if job is None:
        return Claim("missing", reason="no such job")
    if job.status in TERMINAL_STATUSES:
        return Claim("skip", job.attempts, f"already {job.status}")
    if job.status == "running" and not run_is_dead(job, lease_s=lease_s):
        return Claim("busy", job.attempts, f"running on {job.worker}")
    if job.status not in ("queued", "running"):
        return Claim("skip", job.attempts, f"unexpected status {job.status}")
    if job.status == "running" and _ran_for(job) > time_limit_s:
        return Claim("timed_out", job.attempts, "the dead run had reached the time limit")
    if job.attempts >= max_attempts:
        return Claim("exhausted", job.attempts, f"{job.attempts} runs did not finish")
    return _take(session, job, worker=worker)


def _take(session: Session, job: Job, *, worker: str) -> Claim:
    previous_status, previous_attempts = job.status, job.attempts
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == previous_status, Job.attempts == previous_attempts)
        .values(status="running", attempts=previous_attempts + 1, worker=worker, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return Claim("skip", previous_attempts, LOST_RACE)
    session.refresh(job)
    if job.started_at is None:
        job.started_at = now
    jobstate.append_event(session, job, "status", jobstate.status_payload(job))
    return Claim("claimed", job.attempts)


def still_owner(session: Session, job_id: str, worker: str, attempts: int) -> bool:
    """True while this run still owns the job (no other delivery took it over)."""
    job = session.get(Job, job_id)
    return (
        job is not None
        and job.status == "running"
        and job.worker == worker
        and job.attempts == attempts
    )


def heartbeat(session: Session, job_id: str, worker: str, attempts: int) -> bool:
    """Refresh the run's lease; False when the run no longer owns the job."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == "running",
            Job.worker == worker,
            Job.attempts == attempts,
        )
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]
