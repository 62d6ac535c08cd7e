"""The engine's callbacks bound to the job row: throttled progress, polled cancel, heartbeat.

The engine calls `on_progress` and `should_cancel` between batches, possibly thousands of
times a second on tiny models; each would otherwise be a database round trip.
"""

import threading
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.db import jobstate
from infra.db.models import Job
from infra.db.session import session_scope
from worker import claim

Clock = Callable[[], float]


class ProgressWriter:
    """`on_progress(stage, overall)` that writes at most every `min_interval_s`, but always
    on a change of stage (so the stage timeline is exact)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        *,
        min_interval_s: float = 0.25,
        clock: Clock = time.monotonic,
    ) -> None:
        self._sessions, self._job_id = sessions, job_id
        self._min_interval_s, self._clock = min_interval_s, clock
        self._stage: str | None = None
        self._last_write = float("-inf")
        self.writes = 0

    def __call__(self, stage: str, overall: float) -> None:
        now = self._clock()
        if stage == self._stage and now - self._last_write < self._min_interval_s:
            return
        self._stage, self._last_write = stage, now
        with session_scope(self._sessions) as session:
            job = session.get(Job, self._job_id)
            if job is not None:
                jobstate.set_progress(session, job, stage, overall)
        self.writes += 1


class CancelCheck:
    """`should_cancel()` that reads the job row at most every `min_interval_s`.

    It also answers True when the run lost ownership of the job (another delivery took
    it over after this one was presumed dead), so the stale run stops early.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        *,
        worker: str,
        attempts: int,
        min_interval_s: float = 0.5,
        clock: Clock = time.monotonic,
    ) -> None:
        self._sessions, self._job_id = sessions, job_id
        self._worker, self._attempts = worker, attempts
        self._min_interval_s, self._clock = min_interval_s, clock
        self._last_read = float("-inf")
        self._answer = False
        self.reads = 0

    def __call__(self) -> bool:
        now = self._clock()
        if self._answer or now - self._last_read < self._min_interval_s:
            return self._answer
        self._last_read = now
        with session_scope(self._sessions) as session:
            row = session.execute(
                select(Job.cancel_requested, Job.status, Job.worker, Job.attempts).where(
                    Job.id == self._job_id
                )
            ).one_or_none()
        self.reads += 1
        if row is None:
            self._answer = True
        else:
            cancel, status, worker, attempts = row
            lost = status != "running" or worker != self._worker or attempts != self._attempts
            self._answer = bool(cancel) or lost
        return self._answer


class Heartbeat:
    """A daemon thread that refreshes the run's lease every `interval_s` while it runs."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        *,
        worker: str,
        attempts: int,
        interval_s: float,
    ) -> None:
        self._sessions, self._job_id = sessions, job_id
        self._worker, self._attempts = worker, attempts
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                with session_scope(self._sessions) as session:
                    owned = claim.heartbeat(session, self._job_id, self._worker, self._attempts)
            except Exception:  # noqa: BLE001 - a missed beat is retried on the next tick
                continue
            if not owned:
                return
