"""Re-enqueue jobs the broker has lost: on worker start-up and then periodically.

A job can sit in the store without a message in the broker: the API died between writing
the row and publishing, the embedded broker lost an unacknowledged message with its
worker, or a worker was killed at the hard time limit. The sweeper, a thread in the
worker's main process (which never imports torch), publishes them again. Duplicates are
harmless: the task claims a job atomically and skips any it cannot claim.
"""

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from infra.config import Settings
from infra.db.models import Job, utcnow
from infra.db.session import init_db, make_engine, make_sessionmaker
from infra.queue_names import QUEUE, TASK_NAME
from worker import claim
from worker.background import run_while_worker_runs

log = logging.getLogger(__name__)


def lost_jobs(
    session: Session, *, queued_age_s: float, lease_s: float
) -> tuple[list[str], list[str]]:
    """(queued jobs older than `queued_age_s`, running jobs whose run is dead)."""
    cutoff = utcnow() - timedelta(seconds=queued_age_s)
    queued = [
        job.id
        for job in session.scalars(select(Job).where(Job.status == "queued"))
        if (claim.aware(job.updated_at) or cutoff) <= cutoff
    ]
    running = session.scalars(select(Job).where(Job.status == "running"))
    dead = [job.id for job in running if claim.run_is_dead(job, lease_s=lease_s)]
    return queued, dead


def _job_id_of(message: dict[str, Any]) -> str | None:
    """The job id carried by a Celery protocol-2 message, or None for anything else."""
    headers = message.get("headers") or {}
    if headers.get("task") != TASK_NAME:
        return None
    body = message.get("body", "")
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return str(args[0]) if args else None


def _ids(payloads: Iterable[str | bytes]) -> set[str]:
    found: set[str] = set()
    for payload in payloads:
        try:
            job_id = _job_id_of(json.loads(payload))
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        if job_id:
            found.add(job_id)
    return found


def _redis_ids(app: Celery, fresh_s: float) -> set[str]:
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        waiting = client.lrange(QUEUE, 0, -1)
        # Reserved by a worker but not yet acknowledged: [message, exchange, routing_key].
        # Only recent deliveries count: a worker killed between receiving a message and
        # claiming its job leaves it here, and Redis hands it out again only after the
        # visibility timeout (hours); its job must be published again meanwhile.
        recent = client.zrangebyscore("unacked_index", time.time() - fresh_s, "+inf")
        held = client.hmget("unacked", recent) if recent else []
        unacked = [json.dumps(json.loads(v)[0]) for v in held if v]
    return _ids([*waiting, *unacked])


def _sql_ids(broker_url: str) -> set[str]:
    engine = create_engine(broker_url.split("+", 1)[1], poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = (
                conn.execute(
                    text(
                        "SELECT m.payload FROM kombu_message m"
                        " JOIN kombu_queue q ON m.queue_id = q.id"
                        " WHERE q.name = :queue AND m.visible"
                    ),
                    {"queue": QUEUE},
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    return _ids(rows)


def broker_job_ids(app: Celery, broker_url: str, *, fresh_s: float = 30.0) -> set[str] | None:
    """Ids of jobs with a message waiting in the broker, or delivered to a worker less than
    `fresh_s` ago; None when the broker cannot be read."""
    try:
        if broker_url.startswith(("redis://", "rediss://")):
            return _redis_ids(app, fresh_s)
        if broker_url.startswith(("sqla+", "sqlalchemy+")):
            return _sql_ids(broker_url)
    except Exception as exc:  # noqa: BLE001 - an unreadable broker only means more duplicates
        log.warning("sweeper: cannot list the broker's queue: %s", exc)
    return None


class Sweeper:
    """Finds lost jobs and publishes them again, at most once per `republish_after_s` each."""

    def __init__(
        self,
        app: Celery,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        queued_age_s: float = 3.0,
        lease_s: float = 30.0,
        republish_after_s: float = 60.0,
    ) -> None:
        self.app, self.settings, self.sessions = app, settings, sessions
        self.queued_age_s, self.lease_s = queued_age_s, lease_s
        self.republish_after_s = republish_after_s
        self._published: dict[str, float] = {}

    def sweep_once(self) -> list[str]:
        """One pass; returns the ids published."""
        with self.sessions() as session:
            queued, dead = lost_jobs(session, queued_age_s=self.queued_age_s, lease_s=self.lease_s)
        if not queued and not dead:
            return []
        known = (
            broker_job_ids(self.app, self.settings.resolved_broker_url, fresh_s=self.lease_s)
            or set()
        )
        now = time.monotonic()
        self._forget_older_than(now - self.republish_after_s)
        chosen = [j for j in queued if j not in known] + dead
        chosen = [j for j in chosen if j not in self._published]
        for job_id in chosen:
            self.app.send_task(TASK_NAME, args=[job_id], queue=QUEUE)
            self._published[job_id] = now
            log.info("sweeper: published job %s again", job_id)
        return chosen

    def _forget_older_than(self, moment: float) -> None:
        for job_id in [j for j, t in self._published.items() if t < moment]:
            del self._published[job_id]


class SweeperThread(threading.Thread):
    """Runs `Sweeper.sweep_once`, and each of `chores` (periodic upkeep that throttles
    itself), now and then every `interval_s` until stopped."""

    def __init__(
        self, sweeper: Sweeper, interval_s: float, chores: Iterable[Callable[[], object]] = ()
    ) -> None:
        super().__init__(name="job-sweeper", daemon=True)
        self.sweeper, self.interval_s = sweeper, interval_s
        self.chores = [sweeper.sweep_once, *chores]
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            for chore in self.chores:
                try:
                    chore()
                except Exception as exc:  # noqa: BLE001 - keep sweeping after a store outage
                    log.warning("sweeper: pass failed: %s", exc)
            if self.stopped.wait(self.interval_s):
                return


def ensure_tables(engine: Engine) -> None:
    """Create the job store's tables if missing: the worker may start before the API.
    When the API creates them at the same moment, the loser's CREATE fails; try again."""
    for attempt in range(3):
        try:
            init_db(engine)
            return
        except Exception:  # noqa: BLE001 - a concurrent CREATE TABLE; the tables now exist
            if attempt == 2:
                raise
            time.sleep(0.5)


def _parent_engine(settings: Settings) -> Engine:
    engine = make_engine(settings.resolved_database_url)
    ensure_tables(engine)
    # Pool children are forked from this process; they must not reuse its connections.
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    return engine


def _retention_chores(
    settings: Settings, sessions: sessionmaker[Session]
) -> list[Callable[[], object]]:
    """Removing expired artifacts, when SECATEURS_ARTIFACT_RETENTION_DAYS sets a period."""
    if not settings.artifact_retention_days:
        return []
    from infra.storage import make_store
    from infra.storage.lifecycle import ArtifactRetention

    retention = ArtifactRetention(sessions, make_store(settings), settings.artifact_retention_days)
    return [retention.run_if_due]


def install(app: Celery, settings: Settings, *, interval_s: float = 5.0) -> None:
    """Run a sweeper beside the worker."""

    def make_thread() -> SweeperThread:
        sessions = make_sessionmaker(_parent_engine(settings))
        return SweeperThread(
            Sweeper(app, settings, sessions), interval_s, _retention_chores(settings, sessions)
        )

    run_while_worker_runs(make_thread)
