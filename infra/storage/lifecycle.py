"""The end of a job's files: deleting a finished job with everything it left, and removing
the artifacts of jobs finished longer ago than the retention period.

An expired artifact keeps its row (name, size, SHA-256: what the job produced) with an
empty storage key; that empty key is the note that its file was removed, so downloads
answer 410 `artifacts_expired` instead of pretending the job never made it.
"""

import logging
import time
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from contract import TERMINAL_STATUSES
from infra.db.models import Artifact, Job, JobEvent, WebhookAttempt, WebhookEvent, utcnow
from infra.storage.base import ArtifactStore, StoreError

log = logging.getLogger(__name__)

# The storage key of an artifact whose file the retention sweep removed.
EXPIRED_KEY = ""
# Jobs whose artifacts one pass expires: a pass stays short, the next one goes on.
EXPIRE_BATCH = 100


def is_expired(artifact: Artifact) -> bool:
    return artifact.storage_key == EXPIRED_KEY


def delete_job_rows(session: Session, job: Job) -> list[str]:
    """Delete a finished job's rows (its artifacts, events, webhook deliveries and the job)
    in `session`, uncommitted; the storage keys of its files, to remove once committed."""
    assert job.status in TERMINAL_STATUSES
    keys = [
        key
        for key in session.scalars(select(Artifact.storage_key).where(Artifact.job_id == job.id))
        if key != EXPIRED_KEY
    ]
    webhook_events = select(WebhookEvent.id).where(WebhookEvent.job_id == job.id)
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.event_id.in_(webhook_events)))
    for table in (WebhookEvent, JobEvent, Artifact):
        session.execute(delete(table).where(table.job_id == job.id))
    session.delete(job)
    return keys


def remove_files(store: ArtifactStore, keys: list[str]) -> None:
    """Remove stored objects, best effort: their rows are already gone, and a file left
    behind by an unreachable store is only wasted space."""
    for key in keys:
        try:
            store.delete(key)
        except StoreError as exc:
            log.warning("could not remove %s from the artifact store: %s", key, exc)


def expire_artifacts(
    sessions: sessionmaker[Session], store: ArtifactStore, older_than: timedelta
) -> list[str]:
    """Remove the files of jobs finished before `older_than` ago; their rows stay, with
    the expired key. Returns the ids of the jobs whose artifacts expired in this pass."""
    cutoff = utcnow() - older_than
    with sessions() as session:
        job_ids = list(
            session.scalars(
                select(Artifact.job_id)
                .join(Job, Job.id == Artifact.job_id)
                .where(
                    Job.status.in_(TERMINAL_STATUSES),
                    Job.finished_at < cutoff,
                    Artifact.storage_key != EXPIRED_KEY,
                )
                .distinct()
                .limit(EXPIRE_BATCH)
            )
        )
    for job_id in job_ids:
        _expire_job(sessions, store, job_id)
    return job_ids


def _expire_job(sessions: sessionmaker[Session], store: ArtifactStore, job_id: str) -> None:
    # Each file goes first, then its row is marked: a failed removal is tried again next
    # pass, and no row ever claims a file that is gone without saying so.
    with sessions() as session:
        for artifact in session.scalars(select(Artifact).where(Artifact.job_id == job_id)):
            if is_expired(artifact):
                continue
            try:
                store.delete(artifact.storage_key)
            except StoreError as exc:
                log.warning("retention: could not remove %s: %s", artifact.storage_key, exc)
                continue
            artifact.storage_key = EXPIRED_KEY
        session.commit()
    log.info("retention: the artifacts of job %s expired", job_id)


class ArtifactRetention:
    """`expire_artifacts` at most once every `every_s`, for a periodic sweeper to call on
    each of its (much more frequent) passes."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        days: float,
        *,
        every_s: float = 600.0,
    ) -> None:
        self.sessions, self.store = sessions, store
        self.older_than = timedelta(days=days)
        self.every_s = every_s
        self._next_at = 0.0

    def run_if_due(self) -> list[str]:
        now = time.monotonic()
        if now < self._next_at:
            return []
        self._next_at = now + self.every_s
        return expire_artifacts(self.sessions, self.store, self.older_than)
