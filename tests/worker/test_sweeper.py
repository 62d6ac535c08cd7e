"""The sweeper finds lost jobs and reads the embedded broker's queue."""

from datetime import timedelta

from celery import Celery

from infra.config import Settings
from infra.db.models import utcnow
from infra.queue_names import QUEUE, TASK_NAME
from tests.worker.conftest import add_job
from worker.celery_app import celery_config
from worker.sweeper import Sweeper, broker_job_ids, lost_jobs


class RecordingApp:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], str]] = []

    def send_task(self, name: str, args: list[str], queue: str) -> None:
        self.sent.append((name, args, queue))


def _old(minutes: int = 5):
    return utcnow() - timedelta(minutes=minutes)


def _fixture_jobs(sessions) -> None:
    add_job(sessions, "job_fresh")  # queued just now: the API is publishing it
    add_job(sessions, "job_lost", updated_at=_old())
    add_job(
        sessions,
        "job_dead",
        status="running",
        attempts=1,
        worker="gone:1",
        updated_at=_old(),
        started_at=_old(),
    )
    add_job(
        sessions,
        "job_live",
        status="running",
        attempts=1,
        worker="busy:1",
        updated_at=utcnow(),
        started_at=_old(),
    )
    add_job(sessions, "job_done", status="succeeded", updated_at=_old())


def test_lost_jobs_are_old_queued_ones_and_dead_runs(sessions):
    _fixture_jobs(sessions)
    with sessions() as s:
        queued, dead = lost_jobs(s, queued_age_s=5, lease_s=30)
    assert (queued, dead) == (["job_lost"], ["job_dead"])


def test_sweep_publishes_each_lost_job_once_per_window(sessions):
    _fixture_jobs(sessions)
    app = RecordingApp()
    settings = Settings(broker_url="memory://")
    sweeper = Sweeper(
        app,
        settings,
        sessions,
        queued_age_s=5,
        lease_s=30,  # type: ignore[arg-type]
        republish_after_s=3600,
    )
    assert sorted(sweeper.sweep_once()) == ["job_dead", "job_lost"]
    assert {tuple(a) for _, a, _ in app.sent} == {("job_dead",), ("job_lost",)}
    assert all(n == TASK_NAME and q == QUEUE for n, _, q in app.sent)
    assert sweeper.sweep_once() == [] and len(app.sent) == 2


def test_embedded_broker_queue_is_read_and_known_jobs_are_not_republished(sessions, tmp_path):
    settings = Settings(data_dir=tmp_path / "b", broker_url="")
    settings.data_dir.mkdir()
    app = Celery("t")
    app.conf.update(celery_config(settings))
    app.send_task(TASK_NAME, args=["job_lost"], queue=QUEUE)
    app.send_task("other.task", args=["job_x"], queue=QUEUE)
    assert broker_job_ids(app, settings.resolved_broker_url) == {"job_lost"}

    add_job(sessions, "job_lost", updated_at=_old())
    add_job(sessions, "job_gone", updated_at=_old())
    recorder = RecordingApp()
    sweeper = Sweeper(recorder, settings, sessions)  # type: ignore[arg-type]
    assert sweeper.sweep_once() == ["job_gone"]


def test_redis_queue_is_read(redis_url: str) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()  # earlier tests share this database
    settings = Settings(broker_url=redis_url)
    app = Celery("t")
    app.conf.update(celery_config(settings))
    app.send_task(TASK_NAME, args=["job_waiting"], queue=QUEUE)
    app.send_task("other.task", args=["job_other"], queue=QUEUE)
    try:
        assert broker_job_ids(app, redis_url) == {"job_waiting"}
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.client.delete(QUEUE)
