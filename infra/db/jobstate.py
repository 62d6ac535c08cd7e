"""Job state transitions and the event log, shared by the API and the worker.

Every change of a job's status or progress goes through here so that the job row and
its event stream (`GET /v1/jobs/{id}/events`) never disagree.
"""

from typing import Any

from sqlalchemy.orm import Session

from contract import TERMINAL_STATUSES, JobStatus
from infra.db.models import Job, JobEvent, utcnow
from infra.webhooks import record_job_event


def append_event(session: Session, job: Job, kind: str, data: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job.id, kind=kind, data=data))


def status_payload(job: Job) -> dict[str, Any]:
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return {"status": job.status, "stage": job.stage, "progress": job.progress, "error": error}


def set_status(
    session: Session,
    job: Job,
    status: JobStatus,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    """Move `job` to `status` and log a status event. Terminal states are final."""
    if job.status in TERMINAL_STATUSES:
        return
    job.status = status
    now = utcnow()
    if status == "running" and job.started_at is None:
        job.started_at = now
    if status in TERMINAL_STATUSES:
        job.finished_at = now
        if status == "succeeded":
            job.progress = 1.0
        _close_stage(job, now)
    if error_code:
        job.error_code, job.error_message = error_code, error_message
    append_event(session, job, "status", status_payload(job))
    if status in TERMINAL_STATUSES:
        # In this transaction: the end is announced if and only if it is committed.
        record_job_event(session, job)


def set_progress(session: Session, job: Job, stage: str, progress: float) -> None:
    """Record stage and progress (kept monotone) and log a progress event."""
    if job.status in TERMINAL_STATUSES:
        return
    now = utcnow()
    if stage != job.stage:
        _close_stage(job, now)
        times = dict(job.stage_times or {})
        times[stage] = {"started_at": now.isoformat(), "finished_at": None}
        job.stage_times = times
        job.stage = stage
    job.progress = max(job.progress or 0.0, min(1.0, progress))
    append_event(session, job, "progress", {"stage": job.stage, "progress": job.progress})


def request_cancel(session: Session, job: Job) -> None:
    """Ask for cancellation: a queued job is cancelled at once, a running one by its worker."""
    job.cancel_requested = True
    if job.status == "queued":
        set_status(
            session,
            job,
            "cancelled",
            error_code="cancelled",
            error_message="cancelled by the client before it started",
        )


def _close_stage(job: Job, now: Any) -> None:
    if job.stage and job.stage_times and job.stage in job.stage_times:
        times = dict(job.stage_times)
        entry = dict(times[job.stage])
        if entry.get("finished_at") is None:
            entry["finished_at"] = now.isoformat()
            times[job.stage] = entry
            job.stage_times = times
